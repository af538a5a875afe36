#!/usr/bin/env python
"""Probe a real `swiftreg serve` the way issue 14's figures were taken: authorization, hostile input, faults, load.

    python scripts/probe_server.py [--database sqlite|postgres|both] [--quick] [--load-seconds 60]
                                   [--clients 16] [--json OUT] [--only auth,hostile,faults,load]
                                   [--faults kill,corrupt,outage,disk] [--keep]

It prints one table (stdout; progress on stderr) and exits 1 when any client input was answered 5xx or
any authorization check failed. --quick is a smoke run (fewer callers and values, 10 s of load, no
random kills: 3-5 minutes on a busy 2-core machine); the full run takes 15-20 minutes there.

Everything runs against `swiftreg serve` subprocesses on 127.0.0.1 (free ports, temporary homes), spoken
to with raw sockets, httpx, the swiftreg CLI and client, and the unmodified huggingface_hub client:

1. authorization: every route of the app (listed from `create_app(...).routes`, so a new route is
   never missed) x callers (no token, bad, revoked, read/write/admin, global and limited to `alpha`)
   x target namespace (`alpha`, `beta`) x with and without --anonymous-read, judged against the scope
   rules (read < write < admin; namespace limits; a token never reads less than no token under
   --anonymous-read; a namespace-limited admin gets per-namespace stats and no global gc); plus
   authentication before the body (no token + a malformed body is 401), listings that must not show
   another namespace, and state two namespaces must not share (partial uploads, job idempotency keys);
2. hostile inputs: a catalogue of bad values in every parameter position (path, query, header, JSON
   body) plus protocol oddities and stalled clients, on SQLite and PostgreSQL; every 5xx listed with a
   curl repro and what happened to the keep-alive connection after it;
3. faults: kill -9 mid-push and mid-download, random kills, a corrupt / truncated / missing blob
   fetched by huggingface_hub and swiftreg, a PostgreSQL outage (a private cluster on a free port),
   a full disk (a 64 MiB tmpfs, when this machine lets us mount one);
4. load: N clients for T seconds pushing, pulling and listing; revisions gap-free, every one pulled
   back bit-identical.

Why a script and not a test: it measures (counts, statuses, rates) rather than asserting, so it can
be run on any tree, before and after a fix, and its table is what an issue's note quotes. The
PostgreSQL half uses SWIFTREG_TEST_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
for fresh databases; the outage uses a private cluster (initdb/pg_ctl of /usr/lib/postgresql/15/bin),
never that shared server.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.helpers.checkpoints import write_peft_lora  # noqa: E402
from tests.helpers.server import free_port, registry_env  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SHARED_PG = os.environ.get("SWIFTREG_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
API = "/api/v1"
MiB = 1 << 20


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces (blobs of tens of MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    """path -> sha256 of every file under `folder`: what "bit-identical" compares."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- databases --------------------------------------------------------------------------------------------

def _admin_engine(url: str) -> Any:
    """An autocommit engine on the shared server (CREATE/DROP DATABASE cannot run in a transaction)."""
    from sqlalchemy import create_engine

    from registry.db.engine import normalise_url

    return create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")


def new_database(kind: str, home: Path) -> str:
    """A fresh database: SQLite in `home`, or a new database on the shared PostgreSQL."""
    if kind == "sqlite":
        home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'registry.db'}"
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"swiftreg_probe_{uuid.uuid4().hex[:10]}"
    engine = _admin_engine(SHARED_PG)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    from registry.db.engine import normalise_url

    return make_url(normalise_url(SHARED_PG)).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop a database `new_database` made (SQLite files go with the work folder)."""
    if not url.startswith("postgres"):
        return
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    engine = _admin_engine(SHARED_PG)
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    engine.dispose()


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb as the postgres user) that the probe may stop and start."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self.port = free_port()
        self.logfile = root / "pg.log"

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        done = self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-500:]}")
        self.start()

    def start(self) -> None:
        done = self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w",
                                 "-o", f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1", "start")
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr[-500:]}{done.stdout[-500:]}")

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


# ----- servers ----------------------------------------------------------------------------------------------

class Server:
    """One `swiftreg serve` subprocess; restartable on the same port (kill -9 and restart are probes)."""

    def __init__(self, home: Path, database_url: str, *, anonymous_read: bool = False,
                 extra: tuple[str, ...] = (), port: int | None = None) -> None:
        self.home, self.database_url, self.anonymous_read, self.extra = home, database_url, anonymous_read, extra
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home.parent / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 90) -> None:
        """Start and wait for /healthz; a port taken meanwhile (by another process on a busy machine, after a
        kill -9) moves the server to a fresh one, any other failure raises with the log's last lines."""
        for _ in range(3):
            mark = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._start(wait)
                return
            except RuntimeError:
                tail = self.log_path.read_bytes()[mark:].decode(errors="replace") if self.log_path.exists() else ""
                if "address already in use" not in tail.lower():
                    raise RuntimeError(f"swiftreg serve did not start: {tail.strip()[-600:]}") from None
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError("swiftreg serve found no free port in three tries")

    def _start(self, wait: float) -> None:
        args = [sys.executable, "-m", "registry.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "info", *self.extra]
        if self.anonymous_read:
            args.append("--anonymous-read")
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(args, env=registry_env(self.home, self.database_url), stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"swiftreg serve exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"swiftreg serve did not answer /healthz within {wait} s")

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []


def open_registry(home: Path, database_url: str) -> Any:
    """The embedded Registry on a server's home and database: seeding in-process is seconds faster than the CLI."""
    from registry.service import Registry

    return Registry(home=home, database_url=database_url)


def make_token(home: Path, database_url: str, scope: str, namespaces: list[str] | None = None,
               revoked: bool = False) -> str:
    """A token on the registry (`revoked`: then revoked): for servers seeded outside `seed`."""
    from registry import tokens

    reg = open_registry(home, database_url)
    try:
        secret, info = tokens.create(reg, scope, "probe", namespaces)
        if revoked:
            tokens.revoke(reg, info.id)
    finally:
        reg.close()
    return secret


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, str, float]:
    """Run `swiftreg ARGS` (rc, combined output, seconds); a timeout is rc -9."""
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "registry.cli", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)
        return done.returncode, done.stdout + done.stderr, time.monotonic() - started
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
        return -9, text, time.monotonic() - started


def remote_env(server: Server, token: str, home: Path) -> dict[str, str]:
    """The environment of a `swiftreg` client of `server`: no SWIFTREG_* of ours leaks in, its own cache home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
    env.update(SWIFTREG_URL=server.url, SWIFTREG_TOKEN=token, SWIFTREG_HOME=str(home))
    return env


def big_adapter(folder: Path, mib: int, seed: int) -> Path:
    """A valid PEFT LoRA folder of about `mib` MiB, its weights in one safetensors blob (random: no dedup)."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    r, width = 16, 4096
    layers = max(1, (mib * MiB) // (2 * r * width * 4) // 2)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for module in ("q_proj", "v_proj"):
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((r, width), dtype=np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((width, r), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj", "v_proj"],
              "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": None}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


# ----- raw HTTP ---------------------------------------------------------------------------------------------

@dataclass
class Answer:
    """One raw HTTP answer, or none (status 0) with why."""

    status: int                     # 0: the connection closed (or timed out) with no status line
    headers: dict[str, str]
    body: bytes
    note: str = ""


def raw(url: str, request: bytes, timeout: float = 30) -> Answer:
    """Send `request` exactly as written on a fresh connection and read until the server closes."""
    parts = urllib.parse.urlsplit(url)
    received = b""
    note = ""
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock:
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                note = "reset while sending"
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    note = "reset"
                    break
                except TimeoutError:
                    note = "timeout"
                    break
                if not chunk:
                    break
                received += chunk
    except OSError as exc:
        return Answer(0, {}, b"", f"{type(exc).__name__}: {exc}")
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return Answer(0, {}, received, note or "no status line")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return Answer(status, headers, body, note)


def build(method: str, target: str, host: str, headers: dict[str, str | bytes] | None = None,
          body: bytes = b"", close: bool = True) -> bytes:
    """A request as bytes; header values given as bytes go out unchanged (non-ASCII, NUL ...)."""
    fields: dict[str, str | bytes] = {"Host": host}
    if close:
        fields["Connection"] = "close"
    fields.update(headers or {})
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in fields):
        fields["Content-Length"] = str(len(body))
    out = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
    for k, v in fields.items():
        out += k.encode("latin-1") + b": " + (v if isinstance(v, bytes) else v.encode("latin-1")) + b"\r\n"
    return out + b"\r\n" + body


def curl(method: str, target: str, headers: dict[str, str | bytes], body: bytes) -> str:
    """A one-line repro (the token as $TOKEN, the server as $URL)."""
    parts = ["curl -s -o /dev/null -w '%{http_code}\\n' --path-as-is", f"-X {method}" if method != "GET" else ""]
    for k, v in headers.items():
        value = v.decode("latin-1") if isinstance(v, bytes) else v
        if k.lower() == "authorization" and value.startswith("Bearer srg_"):
            value = "Bearer $TOKEN"
        parts.append(f"-H {json.dumps(f'{k}: {value}')}")
    if body:
        shown = body[:300].decode("utf-8", "backslashreplace")
        parts.append(f"--data-binary {json.dumps(shown)}" + (" (truncated)" if len(body) > 300 else ""))
    parts.append(f"\"$URL{target}\"")
    return " ".join(p for p in parts if p)


# ----- seeded registry ----------------------------------------------------------------------------------------

@dataclass
class Seed:
    """What the probes rely on: alpha/a and beta/a (distinct content), alpha/hostile, jobs, tokens."""

    home: Path
    database_url: str
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)   # ns -> manifest of {ns}/a@v1
    blobs: dict[str, str] = field(default_factory=dict)                  # ns -> digest of its README.md
    folders: dict[str, Path] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)                   # ns -> a queued job
    cancel_jobs: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)                 # caller name -> secret


def seed(work: Path, database_url: str) -> Seed:
    """Push the repositories, queue the jobs and make the tokens every probe relies on (see Seed)."""
    from registry import tokens
    from registry.jobs.api import queue_of

    home = work / "home"
    s = Seed(home, database_url)
    reg = open_registry(home, database_url)
    try:
        for i, ns in enumerate(("alpha", "beta")):
            folder = write_peft_lora(work / f"src-{ns}", seed=11 + i)
            (folder / "docs").mkdir(exist_ok=True)
            (folder / "docs" / "notes.md").write_text(f"notes of {ns}\n")
            info = reg.push(folder, f"{ns}/a", tag="v1").revision
            s.folders[ns] = folder
            s.manifests[ns] = info.manifest
            readme = next(f for f in info.manifest["files"] if f["path"] == "README.md")
            s.blobs[ns] = readme["sha256"]
            queue = queue_of(reg)
            s.jobs[ns] = queue.submit("validate", {"revisions": [f"{ns}/a@1"]}, namespace=ns)[0].id
            s.cancel_jobs[ns] = queue.submit("validate", {"revisions": [f"{ns}/a@1"], "checks": ["config"]},
                                             namespace=ns)[0].id
        reg.push(write_peft_lora(work / "src-hostile", seed=99), "alpha/hostile", tag="v1")
        for scope in ("read", "write", "admin"):
            s.tokens[scope] = tokens.create(reg, scope, "probe")[0]
            s.tokens[f"{scope}@alpha"] = tokens.create(reg, scope, "probe", ["alpha"])[0]
        s.tokens["write@beta"] = tokens.create(reg, "write", "probe", ["beta"])[0]
        secret, info = tokens.create(reg, "admin", "probe")
        tokens.revoke(reg, info.id)
        s.tokens["revoked"] = secret
    finally:
        reg.close()
    return s


# ----- 1. authorization ------------------------------------------------------------------------------------------

RANK = {"read": 0, "write": 1, "admin": 2}


@dataclass(frozen=True)
class Rule:
    """What a route needs: `scope` and where it applies.

    where: "ns" (the target namespace), "blob" (the namespace holding the target blob; refusal may be a
    404 or a 'missing'/'incomplete' answer, which do not leak existence), "any" (no namespace: limited
    tokens pass), "global" (a token without namespace limits), "public" (everyone).
    """

    scope: str
    where: str


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): Rule("read", "public"),
    ("GET", "/api/v1/repos"): Rule("read", "ns"),
    ("GET", "/api/v1/repos/{ns}/{name}/revisions"): Rule("read", "ns"),
    ("GET", "/api/v1/repos/{ns}/{name}/refs/{ref}"): Rule("read", "ns"),
    ("GET", "/api/v1/blobs/{digest}"): Rule("read", "blob"),
    ("POST", "/api/v1/blobs/missing"): Rule("write", "blob"),
    ("HEAD", "/api/v1/uploads/{digest}"): Rule("write", "blob"),
    ("PATCH", "/api/v1/uploads/{digest}"): Rule("write", "any"),
    ("POST", "/api/v1/repos/{ns}/{name}/revisions"): Rule("write", "ns"),
    ("PUT", "/api/v1/repos/{ns}/{name}/tags/{tag}"): Rule("write", "ns"),
    ("DELETE", "/api/v1/repos/{ns}/{name}/tags/{tag}"): Rule("write", "ns"),
    ("DELETE", "/api/v1/repos/{ns}/{name}/refs/{ref}"): Rule("write", "ns"),
    ("PUT", "/api/v1/repos/{ns}/{name}/branches/{branch}"): Rule("write", "ns"),
    ("DELETE", "/api/v1/repos/{ns}/{name}/revisions/{ref}"): Rule("admin", "ns"),  # probed on a number not there
    ("POST", "/api/v1/repos/{ns}/{name}/refs/{ref}/checks/vllm"): Rule("write", "ns"),
    ("GET", "/api/v1/repos/{ns}/{name}/retention"): Rule("read", "ns"),
    ("PUT", "/api/v1/repos/{ns}/{name}/retention"): Rule("admin", "ns"),
    ("POST", "/api/v1/retention/apply"): Rule("admin", "ns"),        # probed with {"repo": "<ns>/a", "dry_run"}
    ("POST", "/api/v1/scrub"): Rule("admin", "global"),
    ("POST", "/api/v1/gc"): Rule("admin", "global"),
    ("GET", "/api/v1/stats"): Rule("admin", "any"),     # a limited admin: its namespaces' stats (issue 14, item 4)
    ("POST", "/api/v1/jobs"): Rule("write", "ns"),
    ("GET", "/api/v1/jobs"): Rule("read", "any"),
    ("GET", "/api/v1/jobs/{job_id}"): Rule("read", "ns"),
    ("POST", "/api/v1/jobs/{job_id}/cancel"): Rule("write", "ns"),
    ("GET", "/api/v1/repos/{ns}/{name}/refs/{ref}/validations"): Rule("read", "ns"),
}
PUBLIC_PREFIXES = ("/api/v1/openapi.json", "/api/v1/docs", "/docs/oauth2-redirect", "/healthz")

CALLERS: list[tuple[str, str | None, str | None, list[str] | None]] = [
    # name, token key in Seed.tokens, scope, namespaces
    ("no token", None, None, None), ("bad token", "bad", None, None), ("revoked admin", "revoked", None, None),
    ("read", "read", "read", None), ("write", "write", "write", None), ("admin", "admin", "admin", None),
    ("read@alpha", "read@alpha", "read", ["alpha"]), ("write@alpha", "write@alpha", "write", ["alpha"]),
    ("admin@alpha", "admin@alpha", "admin", ["alpha"]),
]


QUICK_CALLERS = {"no token", "bad token", "read@alpha", "write@alpha", "admin@alpha", "admin"}


def app_routes(work: Path) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves, read from the app itself."""
    from registry.server.app import create_app

    reg = open_registry(work / "routes-home", f"sqlite:///{work / 'routes.db'}")
    try:
        out: list[tuple[str, str]] = []
        _walk(create_app(reg).routes, "", out)
        return sorted(set(out), key=lambda mp: (mp[1], mp[0]))
    finally:
        reg.close()


def _walk(routes: Any, prefix: str, out: list[tuple[str, str]]) -> None:
    """Routes, descending into included routers (FastAPI >= 0.165 keeps them as `_IncludedRouter`s)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            _walk(included.routes, prefix + (getattr(context, "prefix", "") or ""), out)
            continue
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if path and methods:
            out += [(m, prefix + path) for m in sorted(methods)]


def rule_for(method: str, path: str) -> tuple[Rule, bool]:
    """The route's rule and whether it is known (an unknown one gets a conservative guess and is reported)."""
    if path.startswith(PUBLIC_PREFIXES):
        return Rule("read", "public"), True
    key = (method, path)
    if key in RULES:
        return RULES[key], True
    if method == "HEAD" and ("GET", path) in RULES:
        return RULES[("GET", path)], True
    if path.startswith(("/api/models/", "/{namespace}/", "/api/v1/models/")) and method in ("GET", "HEAD"):
        return Rule("read", "ns"), True
    namespaced = any(p in path for p in ("{ns}", "{namespace}", "{owner}"))
    return Rule("read" if method in ("GET", "HEAD") else "write", "ns" if namespaced else "any"), False


def expected_allowed(rule: Rule, scope: str | None, namespaces: list[str] | None, valid: bool, target: str | None,
                     anonymous: bool) -> bool | None:
    """The scope rules of issue 14 (read < write < admin; namespace limits; --anonymous-read); None: either."""
    if rule.where == "public":
        return True
    if scope is None:  # no token, or a bad / revoked one
        return valid and rule.scope == "read" and anonymous
    if rule.scope == "read" and anonymous:
        return True  # a token never makes a reader worse off than no token
    if rule.where == "blob" and anonymous and RANK[scope] >= RANK[rule.scope] and namespaces is not None \
            and target not in namespaces:
        return None  # every blob is readable anonymously: hiding it from a writer or not are both sound
    if RANK[scope] < RANK[rule.scope]:
        return False
    if namespaces is None or rule.where == "any":
        return True
    if rule.where == "global":
        return False
    return target in namespaces


def _fill(path: str, s: Seed, ns: str) -> str:
    """A route template with its parameters filled for namespace `ns`: existing things, so allowed means 2xx."""
    values = {"ns": ns, "namespace": ns, "owner": ns, "name": "a", "ref": "v1", "rev": "v1", "tag": "probe-t",
              "branch": "probe-b", "path": "README.md", "digest": s.blobs[ns], "job_id": str(s.jobs[ns])}
    if path.endswith("/tree/{rev}/{path}"):
        values["path"] = "docs"
    if path.endswith("/cancel"):
        values["job_id"] = str(s.cancel_jobs[ns])
    if path.endswith("/revisions/{ref}"):
        values["ref"] = "999"  # allowed: 404, refused: 401/403; nothing is deleted
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values.get(m.group(1), "x"), path)


def _request_for(method: str, path: str, s: Seed, ns: str, counter: list[int]) -> tuple[str, dict[str, str], Any]:
    """(url path with query, extra headers, JSON body or bytes) that succeeds when the caller is allowed."""
    url = _fill(path, s, ns)
    headers: dict[str, str] = {}
    body: Any = None
    if path == "/api/v1/repos":
        url += f"?namespace={ns}"
    elif path.endswith("/repo/files"):
        url += "?Revision=v1&Recursive=True"
    elif path.endswith("/{name}/repo"):
        url += "?Revision=v1&FilePath=README.md"
    elif method == "DELETE" and path.endswith("/refs/{ref}"):
        url = url.rsplit("/", 1)[0] + "/probe-r"
    if method == "POST" and path == "/api/v1/blobs/missing":
        body = {"digests": [s.blobs[ns]]}
    elif method == "PATCH":
        counter[0] += 1
        data = f"probe upload {uuid.uuid4().hex} {counter[0]}".encode()
        url = f"{API}/uploads/sha256:{hashlib.sha256(data).hexdigest()}"
        headers = {"Upload-Offset": "0", "Upload-Length": str(len(data))}
        body = data
    elif method == "POST" and path.endswith("/revisions"):
        body = {"manifest": s.manifests[ns]}
    elif method == "PUT" and "/tags/" in path:
        body = {"ref": "v1", "force": True}
    elif method == "PUT" and "/branches/" in path:
        body = {"ref": "v1"}
    elif path.endswith("/checks/vllm"):
        body = {}
    elif method == "PUT" and path.endswith("/retention"):
        body = {"keep_last": None}
    elif path == "/api/v1/retention/apply":
        body = {"repo": f"{ns}/a", "dry_run": True}
    elif path == "/api/v1/gc":
        body = {"grace_seconds": 10 ** 7, "dry_run": True}
    elif method == "POST" and path == "/api/v1/jobs":
        body = {"kind": "validate", "params": {"revisions": [f"{ns}/a@1"]}, "idempotency_key": f"probe-auth-{ns}"}
    return url, headers, body


def _outcome(rule: Rule, method: str, path: str, r: httpx.Response, s: Seed, ns: str) -> str:
    """allowed | refused | 5xx, from the answer (a hidden blob reads as absent: refused)."""
    if r.status_code >= 500:
        return "5xx"
    if r.status_code in (401, 403):
        return "refused"
    if rule.where == "blob":
        if r.status_code == 404:
            return "refused"
        if path == "/api/v1/blobs/missing":
            return "refused" if s.blobs[ns] in r.json().get("missing", []) else "allowed"
        if method == "HEAD":
            return "allowed" if r.headers.get("upload-complete") == "true" else "refused"
    return "allowed"


def _shared_state_checks(url: str, s: Seed) -> list[str]:
    """State two namespaces must not share: partial uploads and job idempotency keys (3 checks).

    write@alpha sends the first half of a blob; write@beta must not see that offset, nor complete the
    upload with the tail alone; a job key used in alpha must not answer beta with alpha's job (or a 409
    naming it).
    """
    found: list[str] = []
    alpha = {"Authorization": f"Bearer {s.tokens['write@alpha']}"}
    beta = {"Authorization": f"Bearer {s.tokens['write@beta']}"}
    data = f"shared upload {uuid.uuid4().hex}".encode() * 64
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    half = len(data) // 2
    target = f"{url}{API}/uploads/{digest}"
    httpx.patch(target, content=data[:half], timeout=60,
                headers={**alpha, "Upload-Offset": "0", "Upload-Length": str(len(data))})
    seen = httpx.head(target, headers=beta, timeout=60).headers.get("upload-offset")
    if seen == str(half):
        found.append(f"write@beta HEAD {API}/uploads/{{digest}} sees write@alpha's partial upload (offset {seen})")
    r = httpx.patch(target, content=data[half:], timeout=60,
                    headers={**beta, "Upload-Offset": str(half), "Upload-Length": str(len(data))})
    if r.status_code == 201:
        found.append("write@beta completed write@alpha's partial upload with the tail bytes only (201)")
    key = f"probe-key-{uuid.uuid4().hex[:8]}"
    ra = httpx.post(f"{url}{API}/jobs", headers=alpha, timeout=60, json={
        "kind": "validate", "params": {"revisions": ["alpha/a@1"]}, "idempotency_key": key})
    rb = httpx.post(f"{url}{API}/jobs", headers=beta, timeout=60, json={
        "kind": "validate", "params": {"revisions": ["beta/a@1"]}, "idempotency_key": key})
    if ra.status_code == 201 and rb.status_code != 201:
        found.append(f"job idempotency key reused across namespaces: beta's POST {API}/jobs -> {rb.status_code} "
                     f"{rb.text[:120]}")
    elif rb.status_code == 201 and rb.json().get("id") == ra.json().get("id"):
        found.append("job idempotency key reused across namespaces: beta got alpha's job")
    return found


def probe_authorization(work: Path, database_url: str, quick: bool) -> dict[str, Any]:
    """Every route x caller x target x --anonymous-read, against the scope rules."""
    s = seed(work, database_url)
    s.tokens["bad"] = "srg_" + "x" * 43
    routes = app_routes(work)
    checks = mismatches = cross = errors = 0
    found: list[str] = []
    unknown = sorted({f"{m} {p}" for m, p in routes if not rule_for(m, p)[1]})
    others: Counter[str] = Counter()
    counter = [0]
    callers = [c for c in CALLERS if not quick or c[0] in QUICK_CALLERS]
    for anonymous in (False, True):
        server = Server(s.home, database_url, anonymous_read=anonymous)
        server.start()
        try:
            admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {s.tokens['admin']}"},
                                 timeout=60)
            for method, path in routes:
                rule, known = rule_for(method, path)
                targets = ["alpha", "beta"] if rule.where in ("ns", "blob") else ["alpha"]
                for ns in targets:
                    for name, key, scope, namespaces in callers:
                        if method == "DELETE":  # recreate what the check deletes
                            ref = "probe-r" if path.endswith("/refs/{ref}") else "probe-t"
                            admin.put(f"{API}/repos/{ns}/a/tags/{ref}", json={"ref": "v1", "force": True})
                        url, headers, body = _request_for(method, path, s, ns, counter)
                        if key is not None:
                            headers["Authorization"] = f"Bearer {s.tokens[key]}"
                        kwargs: dict[str, Any] = {"headers": headers}
                        if isinstance(body, bytes):
                            kwargs["content"] = body
                        elif body is not None:
                            kwargs["json"] = body
                        try:
                            r = httpx.request(method, server.url + url, timeout=120, **kwargs)
                        except httpx.HTTPError as exc:
                            errors += 1
                            found.append(f"{method} {url} as {name}: {type(exc).__name__}")
                            continue
                        checks += 1
                        got = _outcome(rule, method, path, r, s, ns)
                        valid = key not in ("bad", "revoked")
                        want = expected_allowed(rule, scope, namespaces, valid, ns, anonymous)
                        if not known and scope is not None:
                            want = None  # a route without a rule: only the callers every route refuses are judged
                        if got == "allowed" and r.status_code >= 400:
                            others[f"{method} {path} -> {r.status_code}"] += 1
                        if got == "5xx":
                            errors += 1
                        if got == "5xx" or (want is not None and (got == "allowed") != want):
                            mismatches += 1
                            leak = (got == "allowed" and namespaces is not None and ns not in namespaces
                                    and rule.scope == "read" and not anonymous)
                            cross += leak
                            found.append(f"{'anon-read ' if anonymous else ''}{name} {method} {url} -> "
                                         f"{r.status_code} (expected {'allowed' if want else 'refused'})"
                                         f"{' CROSS-NAMESPACE READ' if leak else ''}")
            # authentication before the body: no token and a malformed body must be 401, not 400/413/422
            for method, path in routes:
                rule, _ = rule_for(method, path)
                if method in ("GET", "HEAD") or rule.where == "public":
                    continue
                url = _request_for(method, path, s, "alpha", counter)[0]
                for label, junk in (("malformed", b'{"x": '), ("wrong types", b'{"manifest": 1, "ref": [], '
                                                                               b'"kind": 7, "digests": "x"}')):
                    checks += 1
                    r = httpx.request(method, server.url + url, content=junk, timeout=60,
                                      headers={"Content-Type": "application/json", "Upload-Offset": "x"})
                    if r.status_code != 401:
                        mismatches += 1
                        errors += r.status_code >= 500
                        found.append(f"{'anon-read ' if anonymous else ''}no token {method} {url} with a {label} "
                                     f"body -> {r.status_code} (expected 401 before the body is judged)")
            if not anonymous:
                found_here = _shared_state_checks(server.url, s)
                checks += 3
                mismatches += len(found_here)
                found += found_here
            # listings must not show another namespace's repositories or jobs to a limited token (with
            # --anonymous-read everyone may list everything)
            for key in ("read@alpha", "write@alpha", "admin@alpha") if not anonymous else ():
                for url, pick in ((f"{API}/repos", lambda x: x.get("repo", "")),
                                  (f"{API}/jobs?limit=1000", lambda x: (x.get("namespace") or "") + "/")):
                    checks += 1
                    r = httpx.get(server.url + url, headers={"Authorization": f"Bearer {s.tokens[key]}"},
                                  timeout=60)
                    shown = [pick(x) for x in r.json()] if r.status_code == 200 else []
                    if any(not str(x).startswith("alpha/") for x in shown if x != "/"):
                        mismatches += 1
                        cross += not anonymous
                        found.append(f"{'anon-read ' if anonymous else ''}{key} GET {url} lists "
                                     f"{sorted({str(x) for x in shown if not str(x).startswith('alpha/')})[:4]}")
            admin.close()
        finally:
            server.stop()
    return {"routes": len(routes), "checks": checks, "mismatches": mismatches, "cross_namespace_reads": cross,
            "5xx_or_errors": errors, "unclassified_routes": unknown, "mismatch_list": found,
            "allowed_with_4xx": dict(others)}


# ----- 2. hostile inputs ----------------------------------------------------------------------------------------

#: (label, as it goes in a URL (already encoded), as a JSON string value)
VALUES: list[tuple[str, str, Any]] = [
    ("dotdot", "..", ".."), ("traversal", "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd"),
    ("encoded traversal", "%2e%2e%2f%2e%2e", "%2e%2e%2f%2e%2e"), ("inner traversal", "a%2F..%2Fb", "a/../b"),
    ("absolute", "%2Fetc%2Fpasswd", "/etc/passwd"), ("backslash", "..%5C..%5Cx", "..\\..\\x"),
    ("NUL", "a%00b", "a\x00b"), ("lone NUL", "%00", "\x00"), ("lone surrogate", "%ED%A0%80", "\ud800"),
    ("surrogate in name", "ab%ED%B0%80cd", "ab\udc00cd"), ("invalid UTF-8", "%FF%FE", "\ufffd"),
    ("overlong UTF-8", "%C0%AE%C0%AE", "\u00c0\u00ae"), ("superscript two", "%C2%B2", "\u00b2"),
    ("arabic three", "%D9%A3", "\u0663"), ("digit + superscript", "1%C2%B2", "1\u00b2"),
    ("fullwidth one", "%EF%BC%91", "\uff11"), ("2^31", "2147483648", "2147483648"),
    ("2^63", "9223372036854775808", "9223372036854775808"), ("2^64", "18446744073709551616",
                                                             "18446744073709551616"),
    ("10^100", "1" + "0" * 100, "1" + "0" * 100), ("negative", "-1", "-1"), ("zero", "0", "0"),
    ("leading zero", "007", "007"), ("exponent", "1e3", "1e3"), ("hex", "0x10", "0x10"),
    ("spaces", "%201%20", " 1 "), ("long name 300", "n" * 300, "n" * 300),
    ("long utf-8 256 bytes", "%C3%A9" * 128, "\u00e9" * 128), ("long 8k", "x" * 8192, "x" * 8192),
    ("bad digest", "sha256:zz", "sha256:zz"), ("upper digest", "sha256:" + "A" * 64, "sha256:" + "A" * 64),
    ("unknown digest", "sha256:" + "ab" * 32, "sha256:" + "ab" * 32), ("md5 digest", "md5:" + "a" * 32,
                                                                       "md5:" + "a" * 32),
    ("percent alone", "%25", "%"), ("CRLF injection", "a%0D%0AX-Injected:%201", "a\r\nX-Injected: 1"),
    ("html", "%3Cscript%3E", "<script>"), ("sql quote", "'%3B%20DROP%20TABLE%20x%3B--", "'; DROP TABLE x;--"),
    ("emoji", "%F0%9F%98%80", "\U0001f600"), ("empty", "", ""), ("null word", "null", "null"),
]
QUICK_VALUES = {"dotdot", "NUL", "lone surrogate", "superscript two", "2^31", "2^63", "10^100",
                "long utf-8 256 bytes", "bad digest", "empty"}

#: (position label, method, URL template with {V}, extra headers, JSON body template or None)
POSITIONS: list[tuple[str, str, str, dict[str, str], Any]] = [
    ("v1 repos ?namespace", "GET", "/api/v1/repos?namespace={V}", {}, None),
    ("v1 revisions ns", "GET", "/api/v1/repos/{V}/a/revisions", {}, None),
    ("v1 revisions name", "GET", "/api/v1/repos/alpha/{V}/revisions", {}, None),
    ("v1 ref", "GET", "/api/v1/repos/alpha/a/refs/{V}", {}, None),
    ("v1 ref ?format", "GET", "/api/v1/repos/alpha/a/refs/v1?format={V}", {}, None),
    ("v1 blob digest", "GET", "/api/v1/blobs/{V}", {}, None),
    ("v1 upload HEAD digest", "HEAD", "/api/v1/uploads/{V}", {}, None),
    ("v1 upload PATCH digest", "PATCH", "/api/v1/uploads/{V}", {"Upload-Offset": "0", "Upload-Length": "1"}, b"x"),
    ("v1 tag PUT", "PUT", "/api/v1/repos/alpha/hostile/tags/{V}", {}, {"ref": "v1", "force": True}),
    ("v1 tag DELETE", "DELETE", "/api/v1/repos/alpha/hostile/tags/{V}", {}, None),
    ("v1 ref DELETE", "DELETE", "/api/v1/repos/alpha/hostile/refs/{V}", {}, None),
    ("v1 vllm check ref", "POST", "/api/v1/repos/alpha/hostile/refs/{V}/checks/vllm", {}, {}),
    ("v1 job id", "GET", "/api/v1/jobs/{V}", {}, None),
    ("v1 job cancel id", "POST", "/api/v1/jobs/{V}/cancel", {}, None),
    ("v1 jobs ?status", "GET", "/api/v1/jobs?status={V}", {}, None),
    ("v1 jobs ?kind", "GET", "/api/v1/jobs?kind={V}", {}, None),
    ("v1 jobs ?limit", "GET", "/api/v1/jobs?limit={V}", {}, None),
    ("v1 validations ref", "GET", "/api/v1/repos/alpha/a/refs/{V}/validations", {}, None),
    ("v1 validations ?check", "GET", "/api/v1/repos/alpha/a/refs/v1/validations?check={V}", {}, None),
    ("v1 validations ?limit", "GET", "/api/v1/repos/alpha/a/refs/v1/validations?limit={V}", {}, None),
    ("hf model ns", "GET", "/api/models/{V}/a", {}, None),
    ("hf model name", "GET", "/api/models/alpha/{V}", {}, None),
    ("hf revision", "GET", "/api/models/alpha/a/revision/{V}", {}, None),
    ("hf ?blobs", "GET", "/api/models/alpha/a?blobs={V}", {}, None),
    ("hf tree rev", "GET", "/api/models/alpha/a/tree/{V}", {}, None),
    ("hf tree path", "GET", "/api/models/alpha/a/tree/main/{V}", {}, None),
    ("hf tree ?cursor", "GET", "/api/models/alpha/a/tree/main?cursor={V}", {}, None),
    ("hf tree ?limit", "GET", "/api/models/alpha/a/tree/main?limit={V}", {}, None),
    ("hf tree ?recursive", "GET", "/api/models/alpha/a/tree/main?recursive={V}", {}, None),
    ("hf resolve rev", "GET", "/alpha/a/resolve/{V}/README.md", {}, None),
    ("hf resolve path", "GET", "/alpha/a/resolve/main/{V}", {}, None),
    ("hf resolve HEAD rev", "HEAD", "/alpha/a/resolve/{V}/README.md", {}, None),
    ("ms model ?Revision", "GET", "/api/v1/models/alpha/a?Revision={V}", {}, None),
    ("ms model owner", "GET", "/api/v1/models/{V}/a", {}, None),
    ("ms revisions name", "GET", "/api/v1/models/alpha/{V}/revisions", {}, None),
    ("ms files ?Revision", "GET", "/api/v1/models/alpha/a/repo/files?Revision={V}&Recursive=True", {}, None),
    ("ms files ?Root", "GET", "/api/v1/models/alpha/a/repo/files?Root={V}&Recursive=True", {}, None),
    ("ms files ?Recursive", "GET", "/api/v1/models/alpha/a/repo/files?Recursive={V}", {}, None),
    ("ms file ?FilePath", "GET", "/api/v1/models/alpha/a/repo?FilePath={V}", {}, None),
    ("ms file ?Revision", "GET", "/api/v1/models/alpha/a/repo?Revision={V}&FilePath=README.md", {}, None),
]

#: headers whose values are hostile: (label, method, target, header name, other headers, body)
HEADER_POSITIONS: list[tuple[str, str, str, str, dict[str, str], bytes]] = [
    ("Upload-Offset", "PATCH", "/api/v1/uploads/{D}", "Upload-Offset", {"Upload-Length": "5"}, b"hello"),
    ("Upload-Length", "PATCH", "/api/v1/uploads/{D}", "Upload-Length", {"Upload-Offset": "0"}, b"hello"),
    ("Range on blob", "GET", "/api/v1/blobs/{B}", "Range", {}, b""),
    ("Range on resolve", "GET", "/alpha/a/resolve/main/README.md", "Range", {}, b""),
    ("Range on ms file", "GET", "/api/v1/models/alpha/a/repo?FilePath=README.md", "Range", {}, b""),
    ("Authorization", "GET", "/api/v1/repos", "Authorization", {}, b""),
    ("m_session_id cookie", "GET", "/api/v1/models/alpha/a", "Cookie", {}, b""),
    ("X-Request-Id", "GET", "/healthz", "X-Request-Id", {}, b""),
]
HEADER_VALUES: list[tuple[str, bytes]] = [
    ("2^31", b"2147483648"), ("2^63", b"9223372036854775808"), ("10^100", b"1" + b"0" * 100),
    ("negative", b"-1"), ("superscript two", "\u00b2".encode()), ("arabic three", "\u0663".encode()),
    ("digit+superscript", "1\u00b2".encode()), ("empty", b""), ("spaces", b" 5 "), ("plus", b"+5"),
    ("hex", b"0x5"), ("float", b"1.5"), ("latin-1 byte", b"\xe9"), ("invalid utf-8", b"\xff\xfe"),
    ("bytes=0-0", b"bytes=0-0"), ("bytes=-1", b"bytes=-1"), ("bytes=5-1", b"bytes=5-1"),
    ("multi range", b"bytes=0-1,3-4"), ("huge range", b"bytes=99999999999999999999-"),
    ("range superscript", "bytes=\u00b2-".encode()), ("items unit", b"items=0-1"), ("bytes=-0", b"bytes=-0"),
    ("Bearer long", b"Bearer srg_" + b"x" * 5000), ("Bearer NUL-free odd", b"Bearer srg_\xc3\xa9"),
    ("m_session_id", b"m_session_id=srg_" + b"y" * 40), ("cookie junk", b"m_session_id=\xff;;;=="),
]

#: JSON routes: (label, method, target, a valid body) — fields are replaced one by one with wrong types
JSON_ROUTES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("blobs/missing", "POST", "/api/v1/blobs/missing", {"digests": ["sha256:" + "ab" * 32]}),
    ("push", "POST", "/api/v1/repos/alpha/hostile/revisions", {"manifest": None, "message": "m", "tag": None}),
    ("tag", "PUT", "/api/v1/repos/alpha/hostile/tags/t1", {"ref": "v1", "force": True}),
    ("gc", "POST", "/api/v1/gc", {"grace_seconds": 10 ** 7, "dry_run": True}),
    ("job", "POST", "/api/v1/jobs", {"kind": "validate", "params": {"revisions": ["alpha/hostile@1"]},
                                     "idempotency_key": None}),
    ("vllm check", "POST", "/api/v1/repos/alpha/hostile/refs/v1/checks/vllm", {"max_lora_rank": 16}),
]
WRONG_TYPES: list[tuple[str, Any]] = [
    ("null", None), ("true", True), ("list", []), ("object", {}), ("float", 1.5), ("string", "x"),
    ("negative", -1), ("2^63", 2 ** 63), ("10^100", 10 ** 100), ("nested list", [[[[]]]]),
]


def _json(value: Any) -> bytes:
    """JSON with \\u escapes, so lone surrogates and NUL reach the server as the JSON text a client would send."""
    return json.dumps(value, ensure_ascii=True).encode()


def hostile_catalogue(s: Seed, quick: bool) -> list[tuple[str, str, str, str, dict[str, str | bytes], bytes]]:
    """(position, value label, method, target, headers, body) for every hostile input."""
    values = [v for v in VALUES if not quick or v[0] in QUICK_VALUES]
    out: list[tuple[str, str, str, str, dict[str, str | bytes], bytes]] = []
    for position, method, template, headers, body in POSITIONS:
        for label, encoded, _ in values:
            payload = body if isinstance(body, bytes) else (_json(body) if body is not None else b"")
            hdrs: dict[str, str | bytes] = dict(headers)
            if payload and not isinstance(body, bytes):
                hdrs["Content-Type"] = "application/json"
            out.append((position, label, method, template.replace("{V}", encoded), hdrs, payload))
    data = b"hello"
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    for position, method, target, name, others, body in HEADER_POSITIONS:
        for label, value in HEADER_VALUES if not quick else HEADER_VALUES[::3]:
            hdrs = {**others, name: value}
            out.append((f"header {position}", label, method, target.replace("{D}", d).replace("{B}", s.blobs["alpha"]),
                        hdrs, body))
    # JSON values in the bodies: manifests, parents, tags, job parameters
    readme = next(f for f in s.manifests["alpha"]["files"] if f["path"] == "README.md")
    for label, _, text in values:
        files = [{"path": text, "size": readme["size"], "sha256": readme["sha256"]}]
        bodies: list[tuple[str, str, str, dict[str, Any]]] = [
            ("push manifest path", "POST", "/api/v1/repos/alpha/hostile/revisions", {"manifest": {"files": files}}),
            ("push manifest size", "POST", "/api/v1/repos/alpha/hostile/revisions",
             {"manifest": {"files": [{**readme, "size": text}]}}),
            ("push manifest sha256", "POST", "/api/v1/repos/alpha/hostile/revisions",
             {"manifest": {"files": [{**readme, "sha256": text}]}}),
            ("push tag", "POST", "/api/v1/repos/alpha/hostile/revisions",
             {"manifest": {"files": [readme]}, "tag": text}),
            ("push message", "POST", "/api/v1/repos/alpha/hostile/revisions",
             {"manifest": {"files": [readme]}, "message": text}),
            ("push base_model", "POST", "/api/v1/repos/alpha/hostile/revisions",
             {"manifest": {"files": [readme]}, "base_model": text}),
            ("push parents key", "POST", "/api/v1/repos/alpha/hostile/revisions",
             {"manifest": {"files": [readme]}, "parents": [{text: 1, "id": "alpha/a@1"}]}),
            ("tag body ref", "PUT", "/api/v1/repos/alpha/hostile/tags/t2", {"ref": text, "force": True}),
            ("missing digests", "POST", "/api/v1/blobs/missing", {"digests": [text]}),
            ("job params revision", "POST", "/api/v1/jobs", {"kind": "validate", "params": {"revisions": [text]}}),
            ("job params key", "POST", "/api/v1/jobs", {"kind": "validate", "params": {"revisions": ["alpha/a@1"],
                                                                                      text: 1}}),
            ("job idempotency_key", "POST", "/api/v1/jobs",
             {"kind": "validate", "params": {"revisions": ["alpha/a@1"]}, "idempotency_key": text}),
            ("job kind", "POST", "/api/v1/jobs", {"kind": text, "params": {}}),
            ("vllm check base_model", "POST", "/api/v1/repos/alpha/hostile/refs/v1/checks/vllm",
             {"base_model": text}),
        ]
        for position, method, target, body in bodies:
            out.append((position, label, method, target, {"Content-Type": "application/json"}, _json(body)))
    for label, big in (("2^31", 2 ** 31), ("2^63", 2 ** 63), ("10^100", 10 ** 100), ("negative", -1)):
        for position, method, target, body in (
                ("gc grace_seconds", "POST", "/api/v1/gc", {"grace_seconds": big, "dry_run": True}),
                ("vllm max_lora_rank", "POST", "/api/v1/repos/alpha/hostile/refs/v1/checks/vllm",
                 {"max_lora_rank": big}),
                ("push manifest size number", "POST", "/api/v1/repos/alpha/hostile/revisions",
                 {"manifest": {"files": [{**readme, "size": big}]}})):
            out.append((position, label, method, target, {"Content-Type": "application/json"}, _json(body)))
    # wrong JSON types, field by field, and malformed bodies
    for route, method, target, valid in JSON_ROUTES:
        if route == "push":
            valid = {**valid, "manifest": {"files": [readme]}}
        for key in valid:
            for label, value in WRONG_TYPES if not quick else WRONG_TYPES[::2]:
                out.append((f"json {route}.{key}", label, method, target, {"Content-Type": "application/json"},
                            _json({**valid, key: value})))
        malformed: list[tuple[str, bytes]] = [
            ("empty body", b""), ("truncated", b'{"a": '), ("not json", b"hello"), ("top-level list", b"[]"),
            ("top-level string", b'"x"'), ("NaN", b'{"x": NaN}'), ("Infinity", b'{"grace_seconds": Infinity}'),
            ("1e400", b'{"grace_seconds": 1e400}'), ("deep nesting", b"[" * 100000 + b"]" * 100000),
            ("invalid utf-8", b'{"x": "\xff\xfe"}'), ("BOM", b"\xef\xbb\xbf{}"), ("duplicate keys",
                                                                                  b'{"a": 1, "a": 2}'),
            ("NUL escape", b'{"x": "\\u0000"}'), ("lone surrogate escape", b'{"x": "\\ud800"}'),
        ]
        for label, body in malformed if not quick else malformed[::2]:
            out.append((f"json {route} body", label, method, target, {"Content-Type": "application/json"}, body))
    return out


def oddities(host: str, token: str, blob: str) -> list[tuple[str, bytes]]:
    """Protocol oddities as raw requests (about seventy)."""
    auth = f"Authorization: Bearer {token}\r\n"
    repos = "/api/v1/repos"
    upload = "/api/v1/uploads/sha256:" + hashlib.sha256(b"hello").hexdigest()
    out: list[tuple[str, bytes]] = [
        ("HTTP/1.0", b"GET /healthz HTTP/1.0\r\n\r\n"),
        ("HTTP/1.0 with Host", f"GET {repos} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n".encode()),
        ("HTTP/0.9", b"GET /healthz\r\n\r\n"),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("HTTP/1.2", f"GET /healthz HTTP/1.2\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("HTTP/9.9", f"GET /healthz HTTP/9.9\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("missing Host", f"GET {repos} HTTP/1.1\r\n{auth}Connection: close\r\n\r\n".encode()),
        ("two Host headers", f"GET {repos} HTTP/1.1\r\nHost: {host}\r\nHost: evil\r\n{auth}Connection: close\r\n\r\n"
         .encode()),
        ("Host evil", f"GET /api/models/alpha/a/tree/main?limit=1 HTTP/1.1\r\nHost: evil.example\r\n{auth}"
         "Connection: close\r\n\r\n".encode()),
        ("absolute-form target", f"GET http://{host}{repos} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n"
         "\r\n".encode()),
        ("absolute-form other host", f"GET http://evil.example{repos} HTTP/1.1\r\nHost: {host}\r\n{auth}"
         "Connection: close\r\n\r\n".encode()),
        ("authority-form", f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("asterisk OPTIONS", f"OPTIONS * HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("asterisk GET", f"GET * HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("unknown method", f"FOO /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("lowercase method", f"get /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("TRACE", f"TRACE {repos} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("OPTIONS route", f"OPTIONS {repos} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("DELETE on GET route", f"DELETE {repos} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
         .encode()),
        ("empty target", f"GET  HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("space in target", f"GET /api/v1/repos/al pha/a/revisions HTTP/1.1\r\nHost: {host}\r\nConnection: close"
         "\r\n\r\n".encode()),
        ("tab separators", f"GET\t/healthz\tHTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("bare LF", f"GET /healthz HTTP/1.1\nHost: {host}\nConnection: close\n\n".encode()),
        ("raw non-ASCII target", f"GET /api/models/alpha/a/revision/\u00b2 HTTP/1.1\r\nHost: {host}\r\n{auth}"
         "Connection: close\r\n\r\n".encode()),
        ("raw NUL in target", f"GET /api/models/alpha/a\x00 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
         .encode()),
        ("fragment in target", f"GET /healthz#x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()),
        ("double slash", f"GET //api/v1//repos HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
         .encode()),
        ("dot segments", f"GET /api/v1/repos/alpha/../beta/a/revisions HTTP/1.1\r\nHost: {host}\r\n"
         "Authorization: Bearer {T@alpha}\r\nConnection: close\r\n\r\n".encode()),
        ("encoded slash in name", f"GET /api/v1/repos/alpha%2Fa/x/revisions HTTP/1.1\r\nHost: {host}\r\n{auth}"
         "Connection: close\r\n\r\n".encode()),
        ("query 100k", f"GET {repos}?namespace={'a' * 100000} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close"
         "\r\n\r\n".encode()),
        ("path 100k", f"GET /api/models/alpha/{'a' * 100000} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close"
         "\r\n\r\n".encode()),
        ("header 20k", f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Big: {'a' * 20000}\r\nConnection: close\r\n\r\n"
         .encode()),
        ("header 200k", f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Big: {'a' * 200000}\r\nConnection: close\r\n"
         "\r\n".encode()),
        ("1000 headers", (f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(1000))
                          + "Connection: close\r\n\r\n").encode()),
        ("header without colon", f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nBroken header\r\nConnection: close"
         "\r\n\r\n".encode()),
        ("header NUL", f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-A: a\x00b\r\nConnection: close\r\n\r\n"
         .encode()),
        ("obs-fold", f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n".encode()),
        ("space before colon", f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-A : a\r\nConnection: close\r\n\r\n"
         .encode()),
        ("CL and TE", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json"
         "\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
         "e\r\n{\"digests\": []}\r\n0\r\n\r\n".encode()),
        ("two different CL", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 15\r\n"
         "Content-Length: 2\r\nConnection: close\r\n\r\n{\"digests\": []}".encode()),
        ("negative CL", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: -1\r\n"
         "Connection: close\r\n\r\n".encode()),
        ("CL 2^64", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: "
         "18446744073709551616\r\nConnection: close\r\n\r\n".encode()),
        ("CL not a number", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: abc\r\n"
         "Connection: close\r\n\r\n".encode()),
        ("CL superscript", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: \u00b2\r\n"
         "Connection: close\r\n\r\n".encode()),
        ("TE gzip", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: gzip\r\n"
         "Connection: close\r\n\r\n{}".encode()),
        ("TE chunked bad size", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: "
         "chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".encode()),
        ("TE chunked huge size", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Transfer-Encoding: "
         "chunked\r\nConnection: close\r\n\r\nffffffffffffffffffff\r\n{}\r\n0\r\n\r\n".encode()),
        ("chunked PATCH", f"PATCH {upload} HTTP/1.1\r\nHost: {host}\r\n{auth}Upload-Offset: 0\r\nUpload-Length: 5\r\n"
         "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()),
        ("PATCH body past length", f"PATCH {upload} HTTP/1.1\r\nHost: {host}\r\n{auth}Upload-Offset: 0\r\n"
         "Upload-Length: 2\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".encode()),
        ("PATCH no Upload headers", f"PATCH {upload} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 5\r\n"
         "Connection: close\r\n\r\nhello".encode()),
        ("Expect 100-continue", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Expect: 100-continue"
         "\r\nContent-Type: application/json\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"digests\": []}"
         .encode()),
        ("Expect unknown", f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nExpect: 200-ok\r\nConnection: close\r\n\r\n"
         .encode()),
        ("body on GET", f"GET {repos} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 5\r\nConnection: close\r\n"
         "\r\nhello".encode()),
        ("body on HEAD", f"HEAD /alpha/a/resolve/main/README.md HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 5"
         "\r\nConnection: close\r\n\r\nhello".encode()),
        ("json body 5 MB", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: "
         f"application/json\r\nContent-Length: {5 * MiB}\r\nConnection: close\r\n\r\n".encode()
         + b" " * (5 * MiB)),
        ("manifest 6 MB", f"POST /api/v1/repos/alpha/hostile/revisions HTTP/1.1\r\nHost: {host}\r\n{auth}"
         f"Content-Type: application/json\r\nContent-Length: {6 * MiB}\r\nConnection: close\r\n\r\n".encode()
         + b" " * (6 * MiB)),
        ("declared 10 GB json", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: "
         "application/json\r\nContent-Length: 10000000000\r\nConnection: close\r\n\r\n{}".encode()),
        ("Upload-Length 1 PB", f"PATCH {upload} HTTP/1.1\r\nHost: {host}\r\n{auth}Upload-Offset: 0\r\n"
         "Upload-Length: 1000000000000000\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".encode()),
        ("wrong content-type json", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: "
         "text/plain\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"digests\": []}".encode()),
        ("content-type charset latin1", f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}"
         "Content-Type: application/json; charset=latin-1\r\nContent-Length: 15\r\nConnection: close\r\n\r\n"
         "{\"digests\": []}".encode()),
        ("Authorization Basic", f"GET {repos} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic YTpi\r\n"
         "Connection: close\r\n\r\n".encode()),
        ("Authorization bare Bearer", f"GET {repos} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer\r\n"
         "Connection: close\r\n\r\n".encode()),
        ("two Authorization", f"GET {repos} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer srg_bad\r\n{auth}"
         "Connection: close\r\n\r\n".encode()),
        ("two Range headers", f"GET /api/v1/blobs/{blob} HTTP/1.1\r\nHost: {host}\r\n{auth}Range: bytes=0-1\r\n"
         "Range: bytes=2-3\r\nConnection: close\r\n\r\n".encode()),
        ("If-None-Match", f"GET /alpha/a/resolve/main/README.md HTTP/1.1\r\nHost: {host}\r\n{auth}If-None-Match: *"
         "\r\nConnection: close\r\n\r\n".encode()),
        ("If-Range garbage", f"GET /api/v1/blobs/{blob} HTTP/1.1\r\nHost: {host}\r\n{auth}Range: bytes=1-\r\n"
         "If-Range: \u00b2\r\nConnection: close\r\n\r\n".encode()),
        ("Accept-Encoding odd", f"GET {repos} HTTP/1.1\r\nHost: {host}\r\n{auth}Accept-Encoding: gzip;q=NaN, *;q=-1"
         "\r\nConnection: close\r\n\r\n".encode()),
    ]
    pipelined = "".join(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n" for _ in range(3))
    out.append(("pipelining 3", (pipelined + f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .encode()))
    out.append(("pipelining with body", (f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\n{auth}"
                "Content-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"digests\": []}"
                f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").encode()))
    return out


def slow_clients(url: str, token: str, cap: float) -> dict[str, str]:
    """How long the server keeps a connection that stalls: mid-headers, mid-body, idle after a request.

    Run side by side (each may take up to `cap` seconds); "held >= cap" means no timeout within the cap.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc
    cases = {
        "partial headers": f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode(),
        "partial body": (f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}"
                         "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"di").encode(),
        "partial unauthenticated body": (f"POST /api/v1/blobs/missing HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                                         "application/json\r\nContent-Length: 100\r\n\r\n{\"di").encode(),
        "idle keep-alive": f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
    }
    out: dict[str, str] = {}

    def one(name: str, request: bytes) -> None:
        started = time.monotonic()
        try:
            with socket.create_connection((parts.hostname, parts.port or 80), timeout=cap) as sock:
                sock.sendall(request)
                received = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                status = received.split(b"\r\n", 1)[0].decode("latin-1", "replace")
                out[name] = f"closed after {time.monotonic() - started:.1f} s ({status or 'no answer'})"
        except TimeoutError:
            out[name] = f"held >= {cap:.0f} s"
        except OSError as exc:
            out[name] = f"{type(exc).__name__} after {time.monotonic() - started:.1f} s"

    threads = [threading.Thread(target=one, args=item) for item in cases.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def keepalive_after(url: str, request: bytes) -> str:
    """Send `request` keep-alive, then GET /healthz on the same connection: what happened to the second."""
    parts = urllib.parse.urlsplit(url)
    request = request.replace(b"Connection: close\r\n", b"")
    follow = f"GET /healthz HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=20) as sock:
            sock.sendall(request)
            first = sock.recv(65536)
            closes = b"connection: close" in first.split(b"\r\n\r\n")[0].lower()
            try:
                sock.sendall(follow)
                rest = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
            except OSError:
                rest = b""
            answered = b"HTTP/1.1 200" in rest
            return "Connection: close sent" if closes else ("next request answered" if answered else
                                                              "dropped without Connection: close")
    except OSError as exc:
        return f"error {type(exc).__name__}"


def _upload(http: httpx.Client, data: bytes) -> dict[str, Any]:
    """Upload `data` in one PATCH; its manifest entry (path left to the caller)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    http.patch(f"{API}/uploads/{digest}", content=data,
               headers={"Upload-Offset": "0", "Upload-Length": str(len(data))})
    return {"size": len(data), "sha256": digest}


def probe_small_items(work: Path, server: Server, s: Seed) -> dict[str, str]:
    """Issue 14's small items seen from outside: files served as data (item 7), pickles and zero-tensor
    adapters committed over HTTP (item 9), a 240-character file name committed then pulled (M7)."""
    out: dict[str, str] = {}
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {s.tokens['admin']}"}, timeout=120)
    try:
        for path in ("index.html", "pic.svg", "README.md"):
            for route, url in (("hf", f"/alpha/content/resolve/v1/{path}"),
                               ("ms", f"/api/v1/models/alpha/content/repo?Revision=v1&FilePath={path}")):
                r = http.get(url)
                h = r.headers
                inert = ("nosniff" in h.get("x-content-type-options", "")
                         and ("sandbox" in h.get("content-security-policy", "")
                              or "attachment" in h.get("content-disposition", ""))
                         and not h.get("content-type", "").startswith(("text/html", "image/svg")))
                out[f"served {path} ({route})"] = (f"{r.status_code} {h.get('content-type', '-')}; nosniff "
                                                   f"{'yes' if 'x-content-type-options' in h else 'NO'}; CSP "
                                                   f"{h.get('content-security-policy', 'NONE')[:30]}; disposition "
                                                   f"{h.get('content-disposition', 'none')[:30]} -> "
                                                   f"{'inert' if inert else 'RENDERABLE'}")
        files = [dict(f) for f in s.manifests["alpha"]["files"]]
        pickle = _upload(http, b"\x80\x04\x95pickle " + uuid.uuid4().bytes)
        for name in ("optimizer.PT", "training_args.BIN", "state.joblib", "arr.npy", "model.ckpt"):
            r = http.post(f"{API}/repos/alpha/pickles/revisions",
                          json={"manifest": {"files": files + [{"path": name, **pickle}]}})
            revision = r.json().get("revision", {}) if r.status_code < 300 else {}
            stored = {f["path"] for f in (revision.get("manifest") or {}).get("files", [])}
            out[f"commit with {name}"] = f"{r.status_code}" + (" STORED" if name in stored else
                                                                " (left out)" if stored else "")
        from safetensors.numpy import save_file

        empty = work / "zero.safetensors"
        save_file({}, str(empty))
        config = next(f for f in files if f["path"] == "adapter_config.json")
        zero = [config, {"path": "adapter_model.safetensors", **_upload(http, empty.read_bytes())}]
        r = http.post(f"{API}/repos/alpha/zero/revisions", json={"manifest": {"files": zero}})
        out["commit of a zero-tensor adapter"] = f"{r.status_code}{' ACCEPTED' if r.status_code < 300 else ''}"
        readme = next(f for f in files if f["path"] == "README.md")
        long_name = "n" * 237 + ".md"
        r = http.post(f"{API}/repos/alpha/longname/revisions",
                      json={"manifest": {"files": files + [{**readme, "path": long_name}]}})
        verdict = f"commit {r.status_code}"
        if r.status_code < 300:
            rc, text, _ = cli(remote_env(server, s.tokens["read"], work / "longname-client"), "pull",
                              f"alpha/longname@{r.json()['revision']['number']}", "-o", str(work / "longname"),
                              timeout=120)
            verdict += f", swiftreg pull rc {rc}" + ("" if rc == 0 else f" ({text.strip()[-120:]})")
            hf = http.get(f"/alpha/longname/resolve/main/{long_name}")
            verdict += f", hf resolve {hf.status_code}"
            reg = open_registry(s.home, s.database_url)
            try:  # the registry's own snapshot (what the server materialises for conversions and remote stores)
                reg.resolve(f"alpha/longname@{r.json()['revision']['number']}")
                verdict += ", registry snapshot ok"
            except Exception as exc:  # noqa: BLE001 - reported
                verdict += f", registry snapshot FAILS ({type(exc).__name__}: {str(exc)[:100]})"
            finally:
                reg.close()
        out["240-character file name"] = verdict
    finally:
        http.close()
    return out


def probe_hostile(work: Path, database_url: str, quick: bool) -> dict[str, Any]:
    """The catalogue of hostile inputs and protocol oddities against one database: answers by class, 5xx listed."""
    s = seed(work, database_url)
    content = write_peft_lora(work / "src-content", seed=5)
    (content / "index.html").write_text("<script>alert(document.cookie)</script>")
    (content / "pic.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    reg = open_registry(s.home, database_url)
    try:
        reg.push(content, "alpha/content", tag="v1")
    finally:
        reg.close()
    catalogue = hostile_catalogue(s, quick)
    leaks: list[str] = []
    secrets_paths = [str(s.home), str(work), str(ROOT)]
    classes: Counter[str] = Counter()
    fives: list[dict[str, str]] = []
    server = Server(s.home, database_url)
    server.start()
    host = f"127.0.0.1:{server.port}"
    token = s.tokens["admin"]
    try:
        for position, label, method, target, headers, body in catalogue:
            hdrs = {"Authorization": f"Bearer {token}", **headers} if "Authorization" not in headers else headers
            answer = raw(server.url, build(method, target, host, hdrs, body))
            cls = f"{answer.status // 100}xx" if answer.status else "closed"
            classes[cls] += 1
            shown = answer.body.decode("utf-8", "replace") + json.dumps(answer.headers)
            if any(p in shown for p in secrets_paths):
                leaks.append(f"{position} = {label}: {curl(method, target, hdrs, body)[:200]}")
            if answer.status >= 500 or answer.status == 0:
                fives.append({"input": f"{position} = {label}", "status": str(answer.status or answer.note),
                              "repro": curl(method, target, hdrs, body),
                              "keepalive": keepalive_after(server.url, build(method, target, host, hdrs, body))
                              if answer.status >= 500 else ""})
            if server.process is not None and server.process.poll() is not None:
                fives.append({"input": f"{position} = {label}", "status": "server died", "repro": "", "keepalive": ""})
                server.start()
        odd_classes: Counter[str] = Counter()
        odd_fives: list[dict[str, str]] = []
        odd = oddities(host, token, s.blobs["alpha"])
        odd = [(label, req.replace(b"{T@alpha}", s.tokens["read@alpha"].encode())) for label, req in odd]
        odd_notes: dict[str, str] = {}
        for label, request in odd:
            answer = raw(server.url, request, timeout=10)
            cls = f"{answer.status // 100}xx" if answer.status else "closed"
            odd_classes[cls] += 1
            odd_notes[label] = str(answer.status or answer.note or "closed")
            if answer.status >= 500:
                odd_fives.append({"input": label, "status": str(answer.status),
                                  "repro": request[:200].decode("latin-1").replace("\r\n", "\\r\\n")})
            if label == "dot segments" and answer.status == 200:
                odd_fives.append({"input": label, "status": "200 CROSS-NAMESPACE", "repro": "read@alpha token"})
            if label == "Host evil" and b"evil.example" in answer.body + json.dumps(answer.headers).encode():
                odd_notes[label] += " (Host echoed)"
        small = probe_small_items(work, server, s)
        log("slow clients")
        slow = slow_clients(server.url, token, 20 if quick else 90)
        alive = httpx.get(server.url + "/healthz", timeout=10).status_code
    finally:
        server.stop()
    answered_5xx = [f for f in fives if f["status"].startswith("5")]
    return {"inputs": len(catalogue), "by_class": dict(classes), "5xx": len(answered_5xx),
            "5xx_list": fives, "oddities": len(odd), "oddities_by_class": dict(odd_classes),
            "oddities_5xx": odd_fives, "oddity_answers": odd_notes, "slow_clients": slow, "healthz_after": alive,
            "server_paths_in_answers": len(leaks), "server_path_list": leaks[:20], "small_items": small}


# ----- 3. faults --------------------------------------------------------------------------------------------------

def _store_path(home: Path, digest: str) -> Path:
    """Where the local blob store keeps `digest` (blobs/sha256/ab/cdef...): the probe damages it there."""
    hexd = digest.removeprefix("sha256:")
    return home / "blobs" / "sha256" / hexd[:2] / hexd[2:]


def _stats(server: Server, token: str) -> dict[str, Any]:
    """GET /api/v1/stats (requests, bytes_received: counts what a client re-sent); {} when unavailable."""
    try:
        r = httpx.get(server.url + f"{API}/stats", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        return r.json() if r.status_code == 200 else {}
    except httpx.HTTPError:
        return {}


def fault_kill_push(work: Path, server: Server, s: Seed, mib: int) -> dict[str, Any]:
    """kill -9 mid-PATCH, restart, then the real `swiftreg push` resumes: only the missing bytes, nothing lost."""
    folder = big_adapter(work / "kill-push", mib, seed=5)
    blob = folder / "adapter_model.safetensors"
    data = blob.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    token = s.tokens["admin"]
    sent = [0]
    half = len(data) // 2

    def body() -> Iterator[bytes]:
        step = 256 << 10
        for i in range(0, len(data), step):
            if i >= half:
                time.sleep(0.5)
                server.kill9()  # mid-body: the server dies with part of the blob received
                time.sleep(0.5)
            sent[0] = i + step
            yield data[i:i + step]

    try:
        httpx.patch(server.url + f"{API}/uploads/{digest}", content=body(), timeout=30,
                    headers={"Authorization": f"Bearer {token}", "Upload-Offset": "0",
                             "Upload-Length": str(len(data))})
    except httpx.HTTPError:
        pass
    server.kill9()
    server.start()
    held = int(httpx.head(server.url + f"{API}/uploads/{digest}", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}).headers.get("upload-offset", "0"))
    before = _stats(server, token).get("bytes_received", 0)
    env = remote_env(server, token, work / "kill-push-client")
    rc, out, secs = cli(env, "push", str(folder), "alpha/big", "--tag", "k1", timeout=300)
    after = _stats(server, token).get("bytes_received", 0)
    pulled = work / "kill-push-pulled"
    prc, pout, _ = cli(env, "pull", "alpha/big@k1", "-o", str(pulled), "--format", "peft", timeout=300)
    same = prc == 0 and folder_digests(pulled) == folder_digests(folder)
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"blob_bytes": len(data), "held_after_kill": held, "push_rc": rc, "push_s": round(secs, 1),
            "resent_bytes": after - before, "only_missing_sent": rc == 0 and (after - before) <= total - held,
            "pulled_identical": same, **({"push_said": _said(out)} if rc else {}),
            **({"pull_said": _said(pout)} if prc else {})}


def _said(output: str) -> str:
    """The CLI's verdict line ("pushed ..." / "error: ..."), else its last line."""
    lines = output.strip().splitlines()
    verdicts = [x for x in lines if x.startswith(("pushed", "error", "pulled", "Error"))]
    return (verdicts or lines or [""])[-1][:240]


def fault_kill_download(work: Path, server: Server, s: Seed) -> dict[str, Any]:
    """kill -9 mid-GET of a blob, restart, Range-resume the rest; then a fresh `swiftreg pull` and
    huggingface_hub download: bit-identical."""
    folder = work / "kill-push"
    blob = folder / "adapter_model.safetensors"
    want = sha256_file(blob)
    digest = "sha256:" + want
    token = s.tokens["read"]
    got = bytearray()
    try:
        with httpx.stream("GET", server.url + f"{API}/blobs/{digest}", timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as r:
            for chunk in r.iter_bytes(64 << 10):
                got += chunk
                if len(got) >= blob.stat().st_size // 3:
                    server.kill9()
    except httpx.HTTPError:
        pass
    server.kill9()
    server.start()
    kept = len(got)
    r = httpx.get(server.url + f"{API}/blobs/{digest}", timeout=60,
                  headers={"Authorization": f"Bearer {token}", "Range": f"bytes={kept}-"})
    resumed = r.status_code == 206 and hashlib.sha256(bytes(got) + r.content).hexdigest() == want
    env = remote_env(server, token, work / "kill-dl-client")
    out = work / "kill-dl-pulled"
    rc, text, _ = cli(env, "pull", "alpha/big@k1", "-o", str(out), timeout=300)
    pulled = rc == 0 and sha256_file(out / "adapter_model.safetensors") == want
    hf = _hf_download(server, token, "alpha/big", "k1", "adapter_model.safetensors", work / "kill-dl-hf")
    return {"bytes_before_kill": kept, "range_status": r.status_code, "range_resume_identical": resumed,
            "swiftreg_pull_identical": pulled, "hf_identical": hf.get("sha256") == want}


def _hf_download(server: Server, token: str | None, repo: str, rev: str, filename: str, cache: Path,
                 timeout: float = 120) -> dict[str, Any]:
    """hf_hub_download in a subprocess (its retries are its own; a timeout bounds them): path, sha256, error."""
    code = ("import json,sys,hashlib\nfrom huggingface_hub import hf_hub_download\n"
            "a=json.loads(sys.argv[1])\n"
            "try:\n p=hf_hub_download(a['repo'],a['file'],revision=a['rev'],endpoint=a['url'],token=a['token'],"
            "cache_dir=a['cache'])\n"
            " print(json.dumps({'path':p,'sha256':hashlib.sha256(open(p,'rb').read()).hexdigest()}))\n"
            "except Exception as e:\n print(json.dumps({'error':type(e).__name__+': '+str(e)[:200]}))\n")
    args = json.dumps({"repo": repo, "file": filename, "rev": rev, "url": server.url, "token": token or False,
                       "cache": str(cache)})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SWIFTREG_"))}
    env.update(HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="30",
               HF_HUB_DOWNLOAD_TIMEOUT="30")
    try:
        done = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, timeout=timeout,
                              env=env)
        line = (done.stdout.strip().splitlines() or ["{}"])[-1]
        return json.loads(line)
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        return {"error": f"{type(exc).__name__}"}


def _cache_corrupt(cache: Path, want: str) -> list[str]:
    """Files in a huggingface_hub cache whose bytes are not `want` (sha256 hex) although named after it."""
    bad = []
    for p in cache.rglob("*"):
        if p.is_file() and not p.name.endswith((".lock", ".incomplete")) and "blobs" in p.parts:
            if sha256_file(p) != want and p.stat().st_size > 200:
                bad.append(p.name[:16])
    for p in cache.rglob("snapshots/*/*"):
        if p.is_file() and p.name.endswith(".safetensors") and sha256_file(p) != want:
            bad.append(str(p.name))
    return bad


def _damage(path: Path, damage: str) -> None:
    """Flip one byte in the middle, cut the blob in half, or delete it (blobs are stored read-only: chmod first)."""
    os.chmod(path, 0o644)
    if damage == "flipped byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:
        path.unlink()


def fault_corrupt(work: Path, server: Server, s: Seed, quick: bool) -> dict[str, Any]:
    """A flipped byte, a truncated and a missing blob, each met first by one route or client.

    Every (damage, reader) pair gets its own freshly pushed blob, so each reader meets the damage
    before anything else has noticed it (a server that quarantines on first sight would otherwise
    answer the later readers 404 and hide what they would have done).
    """
    out: dict[str, Any] = {}
    token = s.tokens["read"]
    auth = {"Authorization": f"Bearer {token}"}
    reg = open_registry(s.home, s.database_url)
    readers = ("hf resolve", "ms file", "v1 blob", "huggingface_hub", "swiftreg pull")
    n = 0
    try:
        for damage in ("flipped byte", "truncated", "missing"):
            row: dict[str, Any] = {}
            for reader in readers:
                n += 1
                repo = f"alpha/damaged{n}"
                # large enough that a server streaming while it hashes must abort mid-response
                folder = big_adapter(work / f"corrupt-{n}", 8 if quick else 16, seed=300 + n)
                reg.push(folder, repo, tag="v1")
                want = sha256_file(folder / "adapter_model.safetensors")
                _damage(_store_path(s.home, want), damage)
                url = {"hf resolve": f"/{repo}/resolve/v1/adapter_model.safetensors",
                       "ms file": f"/api/v1/models/{repo}/repo?Revision=v1&FilePath=adapter_model.safetensors",
                       "v1 blob": f"{API}/blobs/sha256:{want}"}.get(reader)
                if url is not None:
                    try:
                        r = httpx.get(server.url + url, headers=auth, timeout=60)
                        bad = r.status_code in (200, 206) and hashlib.sha256(r.content).hexdigest() != want
                        row[reader] = f"{r.status_code}{' BAD BYTES SERVED' if bad else ''}"
                    except httpx.HTTPError as exc:
                        row[reader] = f"aborted ({type(exc).__name__})"
                elif reader == "huggingface_hub":
                    cache = work / f"corrupt-hf-{n}"
                    hf = _hf_download(server, token, repo, "v1", "adapter_model.safetensors", cache,
                                      timeout=60 if quick else 120)
                    row[reader] = ("error " + hf["error"].split(":")[0]) if "error" in hf else (
                        "ok" if hf.get("sha256") == want else "CORRUPT FILE RETURNED")
                    row["hf cache corrupt files"] = len(_cache_corrupt(cache, want))
                else:
                    before = _stats(server, s.tokens["admin"]).get("requests", 0)
                    prc, ptext, secs = cli(remote_env(server, token, work / f"corrupt-pull-{n}"), "pull",
                                           f"{repo}@v1", "-o", str(work / f"corrupt-pulled-{n}"),
                                           timeout=45 if quick else 120)
                    after = _stats(server, s.tokens["admin"]).get("requests", 0)
                    row[reader] = (("gave up (timeout)" if prc == -9 else f"rc {prc}") + f" after {secs:.0f} s, "
                                   f"{max(0, after - before - 1)} requests")
                    row["swiftreg_pull_message"] = _said(ptext)
            out[damage] = row
    finally:
        reg.close()
    return out


def fault_random_kills(work: Path, server: Server, s: Seed, rounds: int) -> dict[str, Any]:
    """`swiftreg push` while the server is killed at a random moment, restarted, and the push rerun.

    `interrupted` counts the rounds where the kill landed before the first push finished (its exit
    status was not 0); the others only show that a kill after a push loses nothing.
    """
    rng = random.Random(1)
    lost = completed = interrupted = 0
    for k in range(rounds):
        folder = big_adapter(work / f"rk-{k}", 48, seed=900 + k)
        env = remote_env(server, s.tokens["write"], work / f"rk-client-{k}")
        proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "push", str(folder), "alpha/rk", "--tag",
                                 f"r{k}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill at a random point while the weights are in flight: after the server holds some of them
        digest = "sha256:" + sha256_file(folder / "adapter_model.safetensors")
        wanted = rng.uniform(0.05, 0.9) * (folder / "adapter_model.safetensors").stat().st_size
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.head(server.url + f"{API}/uploads/{digest}", timeout=5,
                               headers={"Authorization": f"Bearer {s.tokens['admin']}"})
                if r.headers.get("upload-complete") == "true" or int(r.headers.get("upload-offset", 0)) >= wanted:
                    break
            time.sleep(0.01)
        server.kill9()
        try:
            interrupted += proc.wait(timeout=120) != 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            interrupted += 1
        server.start()
        rc, _, _ = cli(env, "push", str(folder), "alpha/rk", "--tag", f"r{k}", timeout=300)
        out = work / f"rk-pulled-{k}"
        prc, _, _ = cli(env, "pull", f"alpha/rk@r{k}", "-o", str(out), "--format", "peft", timeout=300)
        if rc == 0 and prc == 0 and folder_digests(out) == folder_digests(folder):
            completed += 1
        else:
            lost += 1
    return {"rounds": rounds, "interrupted": interrupted, "completed_identical": completed, "failed": lost}


def fault_postgres_outage(work: Path, quick: bool) -> dict[str, Any]:
    """A private PostgreSQL stopped under load and started again: statuses, log lines per second, recovery."""
    if not (PG_BIN / "initdb").exists():
        return {"skipped": f"{PG_BIN}/initdb not found"}
    # its own folder under /tmp: the postgres user must traverse it (the probe's work folder is 0700)
    pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="swiftreg-probe-pg-")))
    os.chmod(pg.root, 0o755)
    try:
        pg.init()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return {"skipped": f"private cluster: {exc}"}
    result: dict[str, Any] = {}
    server: Server | None = None
    try:
        s = seed(work / "pg", pg.url)
        server = Server(s.home, pg.url)
        server.start()
        auth = {"Authorization": f"Bearer {s.tokens['admin']}"}
        statuses: Counter[str] = Counter()
        retry_after: Counter[str] = Counter()
        phase = ["before"]
        stop = threading.Event()
        first_ok_after: list[float] = []
        lock = threading.Lock()

        def worker(k: int) -> None:
            with httpx.Client(base_url=server.url, headers=auth, timeout=30) as http:
                n = 0
                while not stop.is_set():
                    n += 1
                    url = (f"{API}/repos/alpha/a/refs/v1", "/api/models/alpha/a/revision/v1",
                           "/api/v1/models/alpha/a/repo/files?Revision=v1", f"{API}/repos/alpha/a/revisions")[n % 4]
                    try:
                        r = http.get(url)
                        code = str(r.status_code)
                        if r.status_code >= 500:
                            retry_after["with Retry-After" if "retry-after" in r.headers else "without"] += 1
                    except httpx.HTTPError as exc:
                        code = type(exc).__name__
                    with lock:
                        statuses[f"{phase[0]} {code}"] += 1
                        if phase[0] == "recovering" and code.startswith("2") and not first_ok_after:
                            first_ok_after.append(time.monotonic())
                    time.sleep(0.02)

        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        pre_lines = len(server.log_lines())
        phase[0] = "outage"
        outage_started = time.monotonic()
        pg.stop()
        healthz = httpx.get(server.url + "/healthz", timeout=10)
        result["healthz_during"] = f"{healthz.status_code} {healthz.text[:160]}"
        # a push during the outage (retried after it), and `serve` started with the database down, side by side
        folder = write_peft_lora(work / "pg-push", seed=77)
        env = remote_env(server, s.tokens["write"], work / "pg-client")

        def push_during() -> None:
            rc, text, secs = cli(env, "push", str(folder), "alpha/outage", "--tag", "v1", timeout=60)
            result["push_during"] = f"rc {rc} after {secs:.0f} s: {_said(text)}"

        def serve_down() -> None:
            down = Server(work / "pg-down-home", pg.url)
            args = [sys.executable, "-m", "registry.cli", "serve", "--port", str(down.port)]
            try:
                done = subprocess.run(args, env=registry_env(down.home, pg.url), capture_output=True, text=True,
                                      timeout=25)
                lines = (done.stdout + done.stderr).strip().splitlines()
                result["serve_with_db_down"] = {"rc": done.returncode, "lines": len(lines),
                                                "traceback": any("Traceback" in x for x in lines),
                                                "first": lines[0][:200] if lines else ""}
            except subprocess.TimeoutExpired:
                result["serve_with_db_down"] = {"rc": None, "note": "still running after 25 s (waits?)"}

        side = [threading.Thread(target=push_during), threading.Thread(target=serve_down)]
        for t in side:
            t.start()
        for t in side:
            t.join()
        remaining = (5 if quick else 10) - (time.monotonic() - outage_started)
        if remaining > 0:
            time.sleep(remaining)
        outage_s = time.monotonic() - outage_started
        out_lines = server.log_lines()[pre_lines:]
        non_access = [x for x in out_lines if '"level"' in x or not x.startswith("{")]
        result["outage_s"] = round(outage_s, 1)
        result["log_lines_per_s"] = round(len(non_access) / outage_s, 1)
        result["access_lines_per_s"] = round((len(out_lines) - len(non_access)) / outage_s, 1)
        result["tracebacks"] = sum(x.count("Traceback") for x in out_lines)
        phase[0] = "recovering"
        restarted = time.monotonic()
        pg.start()
        deadline = time.monotonic() + 60
        while not first_ok_after and time.monotonic() < deadline:
            time.sleep(0.05)
        result["recovery_s"] = round(first_ok_after[0] - restarted, 2) if first_ok_after else None
        time.sleep(1)
        phase[0] = "after"
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
        rc, text, _ = cli(env, "push", str(folder), "alpha/outage", "--tag", "v1", timeout=120)
        out = work / "pg-pulled"
        prc, _, _ = cli(env, "pull", "alpha/outage@v1", "-o", str(out), timeout=120)
        result["push_retried_after"] = rc == 0 and prc == 0 and folder_digests(out) == folder_digests(folder)
        result["statuses"] = dict(sorted(statuses.items()))
        result["5xx_retry_after"] = dict(retry_after)
        healthz = httpx.get(server.url + "/healthz", timeout=10)
        result["healthz_after"] = healthz.status_code
        server.stop()
    except Exception as exc:  # noqa: BLE001 - a probe reports what broke and goes on
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if server is not None:
            server.stop()
        pg.stop()
        shutil.rmtree(pg.root, ignore_errors=True)
    return result


def fault_full_disk(work: Path, quick: bool) -> dict[str, Any]:
    """A 64 MiB tmpfs as the registry home: a 40 MiB blob (fits once, not twice), then a second one."""
    mount = work / "small-disk"
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs here: {done.stderr.strip()[:160]}"}
    result: dict[str, Any] = {}
    server: Server | None = None
    try:
        db = f"sqlite:///{mount / 'registry.db'}"
        home = mount / "home"
        token = make_token(home, db, "admin")
        writers = (make_token(home, db, "write", ["alpha"]), make_token(home, db, "write", ["beta"]))  # made early:
        server = Server(home, db)                                                       # SQLite lives on the small disk
        server.log_path = work / "full-disk-server.log"
        server.start()
        for k, mib in enumerate((40, 40)):
            folder = big_adapter(work / f"disk-{k}", mib, seed=500 + k)
            before = _stats(server, token)
            env = remote_env(server, token, work / f"disk-client-{k}")
            rc, text, secs = cli(env, "push", str(folder), f"alpha/disk{k}", timeout=60 if quick else 150)
            after = _stats(server, token)
            statuses = Counter(json.loads(x).get("status") for x in server.log_lines()
                               if x.startswith("{") and '"status"' in x and "/uploads/" in x)
            result[f"push {mib} MiB #{k + 1}"] = {
                "rc": "timeout (still retrying)" if rc == -9 else rc, "seconds": round(secs, 1),
                "requests": after.get("requests", 0) - before.get("requests", 0),
                "bytes_received_MiB": round((after.get("bytes_received", 0) - before.get("bytes_received", 0)) / MiB,
                                            1),
                "message": _said(text),
                "upload_statuses_so_far": {str(k2): v for k2, v in statuses.items()}}
        r = httpx.get(server.url + "/healthz", timeout=10)
        result["healthz_when_full"] = f"{r.status_code} {r.text[:120]}"
        # one writer's unfinished upload filling the disk: does it block another namespace's push? Then the
        # same with a partial-upload limit (--max-partial-bytes 8 MiB), when the server has that option.
        for extra in ((), ("--max-partial-bytes", str(8 * MiB))):
            if extra:  # gc (grace 0) removes the first filler, then the server restarts with the limit
                httpx.post(server.url + f"{API}/gc", json={"grace_seconds": 0}, timeout=120,
                           headers={"Authorization": f"Bearer {token}"})
                server.stop()
                server.extra = extra
                server.start()
            result[f"unfinished upload filling the disk{' (8 MiB limit)' if extra else ''}"] = \
                _filler(work, server, writers, mount)
    except Exception as exc:  # noqa: BLE001 - reported
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return result


def _filler(work: Path, server: Server, writers: tuple[str, str], mount: Path) -> str:
    """write@alpha sends all but 4 KiB of the free space as an unfinished upload; then write@beta pushes."""
    filler_token, victim_token = writers
    free = shutil.disk_usage(mount).free
    size = max(1, free - (4 << 10))
    data = os.urandom(size)
    digest = "sha256:" + hashlib.sha256(data + b"never finished").hexdigest()
    try:
        r = httpx.patch(server.url + f"{API}/uploads/{digest}", content=data, timeout=120,
                        headers={"Authorization": f"Bearer {filler_token}", "Upload-Offset": "0",
                                 "Upload-Length": str(size + 14)})
        filled = f"{r.status_code} {r.headers.get('upload-offset', '')}".strip()
    except httpx.HTTPError as exc:
        filled = type(exc).__name__
    folder = write_peft_lora(work / f"filler-victim-{uuid.uuid4().hex[:6]}", seed=random.randrange(1 << 30))
    env = remote_env(server, victim_token, work / "filler-client")
    rc, text, secs = cli(env, "push", str(folder), "beta/victim", timeout=60)
    return (f"{size / MiB:.0f} MiB partial -> {filled}; then write@beta push rc {rc} in {secs:.0f} s: "
            f"{_said(text)[:140]}")


def _guard(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A fault probe's figures, or what broke it (the server's restart after a kill, ...): the others still run."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - reported
        log(f"fault probe failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {str(exc)[-600:]}"}


def probe_faults(work: Path, quick: bool, parts: set[str]) -> dict[str, Any]:
    """The fault probes named in `parts` (kill, corrupt, outage, disk); kill and corrupt share one server."""
    out: dict[str, Any] = {}
    if parts & {"kill", "corrupt"}:
        s = seed(work / "faults", f"sqlite:///{work / 'faults' / 'home' / 'registry.db'}")
        server = Server(s.home, s.database_url)
        server.start()
        try:
            if "kill" in parts:
                log("faults: kill -9 mid-push")
                out["kill9_mid_push"] = _guard(lambda: fault_kill_push(work / "faults", server, s, 16 if quick else 48))
                log("faults: kill -9 mid-download")
                out["kill9_mid_download"] = _guard(lambda: fault_kill_download(work / "faults", server, s))
                log("faults: random kills")
                if not quick:
                    out["random_kills"] = _guard(lambda: fault_random_kills(work / "faults", server, s, 4))
            if server.process is None or server.process.poll() is not None:
                server.start()  # a kill probe that failed part-way may have left it down
            if "corrupt" in parts:
                log("faults: corrupt, truncated, missing blobs")
                out["damaged_blobs"] = _guard(lambda: fault_corrupt(work / "faults", server, s, quick))
            text = "\n".join(server.log_lines())
            out["server_log"] = {"tracebacks": text.count("Traceback"),
                                 "secrets": sum(secret in text for secret in s.tokens.values())}
        finally:
            server.stop()
    if "outage" in parts:
        log("faults: PostgreSQL outage")
        out["postgres_outage"] = _guard(lambda: fault_postgres_outage(work / "faults", quick))
    if "disk" in parts:
        log("faults: full disk")
        out["full_disk"] = _guard(lambda: fault_full_disk(work / "faults", quick))
    return out


# ----- 4. load ------------------------------------------------------------------------------------------------------

def probe_load(work: Path, database_url: str, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` threads for `seconds`: a quarter push to one repository, the rest pull and list."""
    from registry.client import RemoteRegistry

    s = seed(work, database_url)
    pushers = max(1, clients // 4)
    errors: list[str] = []
    pushed: list[tuple[int, Path]] = []
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    server = Server(s.home, database_url)
    server.start()
    start_line = len(server.log_lines())
    try:
        deadline = time.monotonic() + seconds

        def pusher(k: int) -> None:
            client = RemoteRegistry(server.url, s.tokens["write"], work / f"load-p{k}")
            n = 0
            try:
                while time.monotonic() < deadline:
                    folder = write_peft_lora(work / f"load-src-{k}-{n}", seed=10_000 + 1000 * k + n)
                    n += 1
                    result = client.push(folder, "load/busy")
                    with lock:
                        counts["pushes"] += 1
                        pushed.append((result.revision.number, folder))
            except Exception as exc:  # noqa: BLE001 - collected and reported
                errors.append(f"pusher {k}: {type(exc).__name__}: {str(exc)[:160]}")
            finally:
                client.close()

        def reader(k: int) -> None:
            rng = random.Random(k)
            home = 0
            try:
                while time.monotonic() < deadline:
                    client = RemoteRegistry(server.url, s.tokens["read"], work / f"load-r{k}-{home}")
                    for _ in range(4):
                        what = rng.random()
                        if what < 0.5:
                            client.resolve(f"{rng.choice(['alpha', 'beta'])}/a@v1",
                                           format=rng.choice([None, "swift"]))
                            key = "pulls"
                        elif what < 0.75:
                            client.list()
                            key = "listings"
                        else:
                            with lock:
                                numbers = [n for n, _ in pushed]
                            if numbers:
                                client.resolve(f"load/busy@{rng.choice(numbers)}")
                            key = "pulls"
                        with lock:
                            counts[key] += 1
                    client.close()
                    home += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(f"reader {k}: {type(exc).__name__}: {str(exc)[:160]}")

        threads = [threading.Thread(target=pusher, args=(k,)) for k in range(pushers)]
        threads += [threading.Thread(target=reader, args=(k,)) for k in range(clients - pushers)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        lines = [x for x in server.log_lines()[start_line:] if x.startswith("{") and '"status"' in x]
        statuses = Counter(str(json.loads(x)["status"]) for x in lines)
        # gap-free and bit-identical
        check = RemoteRegistry(server.url, s.tokens["read"], work / "load-check")
        numbers = sorted(r.number for r in check.log("load/busy")) if pushed else []
        gap_free = numbers == list(range(1, len(numbers) + 1)) and len(numbers) == len(pushed)
        identical = 0
        for number, folder in pushed:
            got = check.pull(f"load/busy@{number}", work / f"load-back-{number}", format="peft")
            identical += folder_digests(Path(got)) == folder_digests(folder)
        check.close()
    finally:
        server.stop()
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": len(lines),
            "requests_per_s": round(len(lines) / elapsed, 1), "statuses": dict(sorted(statuses.items())),
            "5xx": sum(v for k, v in statuses.items() if k.startswith("5")), "operations": dict(counts),
            "revisions": len(numbers), "gap_free": gap_free, "pulled_back_identical": identical,
            "client_errors": errors[:20], "client_error_count": len(errors)}


# ----- the table ----------------------------------------------------------------------------------------------------

def five_hundreds(results: dict[str, Any]) -> int:
    """5xx answers to client input: authorization checks, hostile inputs and oddities, load (faults excluded:
    a dependency that is down is answered 503 by design)."""
    total = results.get("authorization", {}).get("5xx_or_errors", 0)
    for h in results.get("hostile", {}).values():
        total += h.get("5xx", 0) + len([f for f in h.get("oddities_5xx", []) if f["status"].startswith("5")])
    for ld in results.get("load", {}).values():
        total += ld.get("5xx", 0)
    return int(total)


def table(results: dict[str, Any]) -> str:
    """The compact table the issue's note quotes, then every 5xx and every mismatch."""
    rows: list[tuple[str, str, str]] = []
    lines: list[str] = []
    auth = results.get("authorization")
    broken = [(name, part) for name, part in (("authorization", auth), *[(f"hostile {d}", h) for d, h in
              results.get("hostile", {}).items()], *[(f"load {d}", x) for d, x in results.get("load", {}).items()])
              if isinstance(part, dict) and "error" in part]
    rows += [(name, "SECTION FAILED", part["error"]) for name, part in broken]
    if auth and "error" not in auth:
        rows += [("authorization", "routes (from the app)", str(auth["routes"])),
                 ("authorization", "checks", str(auth["checks"])),
                 ("authorization", "mismatches", str(auth["mismatches"])),
                 ("authorization", "cross-namespace reads", str(auth["cross_namespace_reads"])),
                 ("authorization", "5xx / transport errors", str(auth["5xx_or_errors"]))]
        if auth["unclassified_routes"]:
            rows.append(("authorization", "routes without a rule (guessed)", ", ".join(auth["unclassified_routes"])))
        lines += ["", "authorization mismatches:"] + ([f"  {m}" for m in auth["mismatch_list"]] or ["  none"])
    for db, h in results.get("hostile", {}).items():
        if "error" in h:
            continue
        rows += [(f"hostile {db}", "inputs", str(h["inputs"])),
                 (f"hostile {db}", "answers by class", ", ".join(f"{k} {v}" for k, v in sorted(h["by_class"].items()))),
                 (f"hostile {db}", "5xx", str(h["5xx"])),
                 (f"hostile {db}", "protocol oddities", str(h["oddities"])),
                 (f"hostile {db}", "oddity answers by class",
                  ", ".join(f"{k} {v}" for k, v in sorted(h["oddities_by_class"].items()))),
                 (f"hostile {db}", "oddity 5xx or cross-namespace answers", str(len(h["oddities_5xx"]))),
                 (f"hostile {db}", "/healthz after", str(h["healthz_after"]))]
        rows += [(f"hostile {db}", f"slow client: {k}", v) for k, v in h["slow_clients"].items()]
        rows.append((f"hostile {db}", "answers naming a server path", str(h["server_paths_in_answers"])))
        rows += [(f"small items {db}", k, v) for k, v in h["small_items"].items()]
        if h["server_path_list"]:
            lines += ["", f"answers naming a server path on {db}:"] + [f"  {x}" for x in h["server_path_list"]]
        grouped: dict[str, list[str]] = {}
        for k, v in h["oddity_answers"].items():
            grouped.setdefault(v, []).append(k)
        lines += ["", f"protocol oddities on {db}, by answer:"] + [f"  {v}: {', '.join(ks)}"
                                                                  for v, ks in sorted(grouped.items())]
        if h["5xx_list"] or h["oddities_5xx"]:
            lines += ["", f"hostile inputs answered 5xx on {db}:"]
            for f in h["5xx_list"]:
                lines.append(f"  {f['status']}  {f['input']}  [{f['keepalive']}]\n      {f['repro']}")
            for f in h["oddities_5xx"]:
                lines.append(f"  {f['status']}  oddity {f['input']}: {f['repro']}")
    faults = dict(results.get("faults") or {})  # a copy: the JSON keeps every field
    if faults:
        for damage, row in faults.pop("damaged_blobs", {}).items():
            summary = "; ".join(f"{k} {v}" for k, v in row.items() if k != "swiftreg_pull_message")
            rows.append(("faults damaged blob", damage, summary))
        for name, value in faults.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    rows.append((f"faults {name}", k, json.dumps(v) if not isinstance(v, str) else v))
            else:
                rows.append(("faults", name, str(value)))
    for db, ld in results.get("load", {}).items():
        if "error" in ld:
            continue
        for k in ("clients", "seconds", "requests", "requests_per_s", "statuses", "5xx", "operations", "revisions",
                  "gap_free", "pulled_back_identical", "client_error_count"):
            v = ld[k]
            rows.append((f"load {db}", k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)))
        if ld["client_errors"]:
            lines += ["", f"load client errors on {db}:"] + [f"  {e}" for e in ld["client_errors"]]
    fives = five_hundreds(results)
    rows.insert(0, ("summary", "5xx answers to client input", str(fives)))
    width = max((len(r[0]) for r in rows), default=10)
    second = max((len(r[1]) for r in rows), default=10)
    body = [f"{a:<{width}}  {b:<{second}}  {c}" for a, b, c in rows]
    return "\n".join(body + lines)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print the table, write the JSON; 1 when client input got a 5xx or a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both",
                        help="databases for hostile inputs and load (authorization runs on the first; the outage "
                             "always on a private PostgreSQL cluster)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: fewer callers and values, 10 s load, no random kills (about 3 minutes)")
    parser.add_argument("--load-seconds", type=float, default=None, help="load duration (60; 10 with --quick)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent load clients")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON here")
    parser.add_argument("--only", default="auth,hostile,faults,load",
                        help="sections to run, comma separated (auth,hostile,faults,load)")
    parser.add_argument("--faults", default="kill,corrupt,outage,disk",
                        help="fault probes to run (kill,corrupt,outage,disk)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server logs)")
    args = parser.parse_args(argv)
    # every swiftreg subprocess runs this checkout's code (also when the script is copied into another tree)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    seconds = args.load_seconds if args.load_seconds is not None else (10 if args.quick else 60)
    databases = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    sections = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="swiftreg-probe-"))
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                               "quick": args.quick, "databases": databases}
    created: list[str] = []

    def database(kind: str, name: str) -> str:
        url = new_database(kind, work / name / "home")
        created.append(url)
        return url

    started = time.monotonic()

    def guarded(run: Callable[[], Any]) -> Any:
        """One section's figures, or what broke it: a probe that fails part-way still reports the rest."""
        try:
            return run()
        except Exception as exc:  # noqa: BLE001 - reported in the table and the JSON
            log(f"section failed: {type(exc).__name__}: {exc}")
            return {"error": f"{type(exc).__name__}: {str(exc)[-600:]}"}

    try:
        if "auth" in sections:
            log("authorization matrix")
            results["authorization"] = guarded(lambda: probe_authorization(
                work / "auth", database(databases[0], "auth"), args.quick))
        if "hostile" in sections:
            results["hostile"] = {}
            for db in databases:
                log(f"hostile inputs on {db}")
                results["hostile"][db] = guarded(functools.partial(
                    probe_hostile, work / f"hostile-{db}", database(db, f"hostile-{db}"), args.quick))
        if "faults" in sections:
            results["faults"] = guarded(lambda: probe_faults(work, args.quick, set(args.faults.split(","))))
        if "load" in sections:
            results["load"] = {}
            for db in databases:
                log(f"load on {db}: {args.clients} clients for {seconds:.0f} s")
                results["load"][db] = guarded(functools.partial(
                    probe_load, work / f"load-{db}", database(db, f"load-{db}"), args.clients, seconds))
    finally:
        for url in created:
            with contextlib.suppress(Exception):
                drop_database(url)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    results["seconds"] = round(time.monotonic() - started, 1)
    print(table(results))
    print(f"\n(probe started {results['started']}, took {results['seconds']} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    failed = any("SECTION FAILED" in line for line in table(results).splitlines())
    return 1 if failed or five_hundreds(results) or results.get("authorization", {}).get("mismatches") else 0


if __name__ == "__main__":
    sys.exit(main())
