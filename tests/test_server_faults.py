"""Dependencies down -> 503, never 500 (issue 14 item 2, M6): a real `swiftreg serve` whose PostgreSQL,
blob store or disk fails under it.

- A private PostgreSQL cluster (tests/helpers/pg_cluster.py: its own initdb, port and pg_ctl, so
  stopping it disturbs no other test) stopped for a few seconds under load (pushes through the
  swiftreg client, reads of the three dialects through httpx, /healthz polled): every failing request
  is 503 with Retry-After, /healthz reports the database down then up, the server logs fewer than 10
  lines a second meanwhile and no traceback, every push that failed succeeds when retried after, and
  every pushed revision pulls back bit-identical.
- `serve` with the database down at start: one line naming the URL (without its password), exit 1;
  with --wait-for-db it waits, then serves.
- The store's folder moved away, or remounted read-only: 503 with Retry-After (not 404 or 500), and
  /healthz names the store; all well again once it is back.
- A full disk (a tiny tmpfs as the store): 507 insufficient_storage, never 500.

The mount-based cases need root (mount); they are skipped elsewhere.
"""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from registry.errors import InsufficientStorageError, RegistryError, UnavailableError
from tests.helpers.api_v1 import API, assert_error, client, sha256, upload
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.filesystems import cannot_mount
from tests.helpers.pg_cluster import private_postgres
from tests.helpers.server import Server, free_port, registry_env, running_server

pytestmark = [pytest.mark.server]

PUSHERS = 2
READERS = 3
OUTAGE = 5.0
REPO = "faults/busy"
SEED = "faults/seed"


def _log_path(server: Server) -> Path:
    return server.home.parent / f"server-{server.url.rsplit(':', 1)[1]}.log"


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def _reads(server: Server) -> list[str]:
    """One route of each kind in the three dialects, on the seeded adapter."""
    with client(server, server.read_token) as http:
        files = http.get(f"{API}/repos/{SEED}/refs/v1").json()["files"]
    digest = next(f["sha256"] for f in files if f["path"] == "adapter_config.json")
    return [f"{API}/repos/{SEED}/revisions", f"{API}/repos/{SEED}/refs/v1", f"{API}/blobs/{digest}",
            f"/api/models/{SEED}", f"/api/models/{SEED}/tree/v1", f"/{SEED}/resolve/v1/adapter_config.json",
            f"/api/v1/models/{SEED}/repo/files?Revision=v1",
            f"/api/v1/models/{SEED}/repo?Revision=v1&FilePath=adapter_config.json"]


def _same_files(got: Path, want: Path) -> bool:
    def digests(folder: Path) -> dict[str, str]:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in folder.rglob("*") if p.is_file()}

    return digests(got) == digests(want)


# ----- the outage under load --------------------------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.slow
def test_a_postgres_outage_under_load_answers_503_and_loses_nothing(tmp_path: Path) -> None:
    from registry.client import RemoteRegistry
    from registry.service import Registry

    with private_postgres() as pg:
        seeded = Registry(home=tmp_path / "home", database_url=pg.url)
        # r=8: no file in common with the pushes (r=4), whose blobs/missing calls touch the blobs they name
        seeded.push(write_peft_lora(tmp_path / "seed", seed=1, r=8), SEED, tag="v1")
        seeded.close()
        folders = [[write_peft_lora(tmp_path / f"push{k}-{n}", seed=100 + 50 * k + n) for n in range(40)]
                   for k in range(PUSHERS)]
        with running_server(tmp_path / "home", pg.url, extra_args=("--log-format", "text")) as server:
            reads = _reads(server)
            stop = threading.Event()
            lock = threading.Lock()
            answers: list[tuple[float, int, str | None]] = []  # (time, status, Retry-After)
            health: list[tuple[float, int, bool | None]] = []  # (time, status, database ok)
            pushed: dict[int, Path] = {}  # revision number -> the folder pushed
            failed: list[tuple[Path, BaseException]] = []
            crashes: list[str] = []

            def reader(k: int) -> None:
                with client(server, server.read_token) as http:
                    i = k
                    while not stop.is_set():
                        path = reads[i % len(reads)]
                        i += 1
                        try:
                            r = http.get(path)
                        except httpx.HTTPError as exc:  # a dropped keep-alive connection is a failure too
                            crashes.append(f"reader {k}: {path}: {type(exc).__name__}: {exc}")
                            continue
                        with lock:
                            answers.append((time.monotonic(), r.status_code, r.headers.get("Retry-After")))
                        time.sleep(0.01)

            def pusher(k: int) -> None:
                remote = RemoteRegistry(server.url, server.write_token, tmp_path / f"p{k}", retries=0)
                try:
                    for folder in folders[k]:
                        if stop.is_set():
                            break
                        try:
                            result = remote.push(folder, REPO)
                        except RegistryError as exc:
                            if getattr(exc, "status", None) != 503:  # the server said 503, whatever the class
                                raise
                            with lock:
                                failed.append((folder, exc))
                            time.sleep(0.2)
                            continue
                        with lock:
                            pushed[result.revision.number] = folder
                except Exception as exc:  # noqa: BLE001 - every other failure is a finding
                    crashes.append(f"pusher {k}: {type(exc).__name__}: {exc}")
                finally:
                    remote.close()

            def prober() -> None:
                with httpx.Client(base_url=server.url, timeout=30) as http:
                    while not stop.is_set():
                        r = http.get("/healthz")
                        database = r.json().get("database", {}).get("ok") if r.status_code in (200, 503) else None
                        with lock:
                            health.append((time.monotonic(), r.status_code, database))
                        time.sleep(0.2)

            threads = [threading.Thread(target=reader, args=(k,)) for k in range(READERS)]
            threads += [threading.Thread(target=pusher, args=(k,)) for k in range(PUSHERS)]
            threads.append(threading.Thread(target=prober))
            for t in threads:
                t.start()
            try:
                _until(lambda: len(pushed) >= 2, 120, "two pushes before the outage")
                log = _log_path(server)
                lines_before, down = _lines(log), time.monotonic()
                pg.stop("fast")
                time.sleep(OUTAGE)
                outage_log, up = _lines(log)[len(lines_before):], time.monotonic()
                pg.start()
                _until(lambda: any(t > up and s == 200 and ok for t, s, ok in health)
                       and any(t > up and s == 200 for t, s, _ in answers), 60, "recovery")
                pushed_before = len(pushed)
                _until(lambda: len(pushed) > pushed_before, 60, "a push after recovery")
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=120)
            assert not any(t.is_alive() for t in threads), "a client hung"
            assert crashes == [], "\n".join(crashes[:5])

            # every push that failed during the outage succeeds when retried after it
            remote = RemoteRegistry(server.url, server.write_token, tmp_path / "retry", retries=0)
            for folder, _ in failed:
                result = remote.push(folder, REPO)
                pushed[result.revision.number] = folder
            numbers = sorted(r.number for r in remote.log(REPO))
            assert numbers == sorted(pushed) == list(range(1, len(numbers) + 1)), "a push was lost or numbered twice"
            for number, folder in pushed.items():  # nothing lost: every revision pulls back bit-identical
                assert _same_files(remote.resolve(f"{REPO}@{number}"), folder), f"{REPO}@{number} differs"
            remote.close()
            text = log.read_text()

    during = [(t, s, ra) for t, s, ra in answers if down <= t <= up]
    statuses = sorted({s for _, s, _ in answers})
    assert all(s < 500 or s == 503 for s in statuses), f"statuses seen: {statuses}"
    assert any(s == 503 for _, s, _ in during), "no request saw the outage"
    assert all(ra is not None for _, s, ra in answers if s == 503), "a 503 without Retry-After"
    # a bodiless 503 (a HEAD) is a RemoteError of status 503 to the client: it cannot read the code
    assert all(isinstance(exc, UnavailableError) or exc.status == 503 for _, exc in failed), failed[:3]
    assert any(s == 503 and ok is False for t, s, ok in health if down < t <= up), "/healthz never said down"
    assert health[-1][1:] == (200, True), f"/healthz at the end: {health[-1]}"
    assert "Traceback" not in text, text[:3000]
    rate = len(outage_log) / (up - down)
    assert rate < 10, f"{len(outage_log)} log lines in {up - down:.1f} s of outage:\n{text[-3000:]}"
    recovered = min(t for t, s, _ in answers if t > up and s == 200) - up
    print(f"\noutage {up - down:.1f} s: {len(during)} reads during it ({sum(s == 503 for _, s, _ in during)} x 503, "
          f"statuses {sorted({s for _, s, _ in during})}); all reads {len(answers)}, statuses {statuses}; "
          f"{len(failed)} pushes failed with 503 and succeeded when retried; {len(pushed)} revisions pulled back "
          f"identical; log {len(outage_log)} lines ({rate:.2f}/s) during the outage; first 200 {recovered:.2f} s "
          "after PostgreSQL was started again; the log meanwhile:\n" + "\n".join(outage_log))


def _until(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# ----- serve with the database down at start ---------------------------------------------------------------

def _serve(home: Path, database_url: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    args = [sys.executable, "-m", "registry.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--log-format", "text", *extra]
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(args, env=registry_env(home, database_url), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    return process, f"http://127.0.0.1:{port}"


def test_serve_with_the_database_down_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://swiftreg:s3cret@127.0.0.1:{free_port()}/registry"  # nothing listens there
    process, _ = _serve(tmp_path / "home", url)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "does not answer" in lines[0] and "--wait-for-db" in lines[0], lines[0]
    assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in lines[0] and "s3cret" not in lines[0], lines[0]


def test_any_command_with_the_database_down_says_so_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://swiftreg:s3cret@127.0.0.1:{free_port()}/registry"
    done = subprocess.run([sys.executable, "-m", "registry.cli", "ls"], env=registry_env(tmp_path / "home", url),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "does not answer" in done.stderr and "s3cret" not in done.stderr, done.stderr


@pytest.mark.postgres
def test_serve_wait_for_db_waits_then_serves(tmp_path: Path) -> None:
    with private_postgres() as pg:
        pg.stop("fast")
        process, url = _serve(tmp_path / "home", pg.url, "--wait-for-db", "120")
        try:
            time.sleep(3)
            assert process.poll() is None, process.communicate()[0]
            pg.start()
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, process.communicate()[0]
                try:
                    r = httpx.get(url + "/healthz", timeout=2)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "serve --wait-for-db never served"
                time.sleep(0.2)
            assert r.json()["database"]["ok"] is True
        finally:
            process.terminate()
            out = process.communicate(timeout=60)[0]
    assert "waiting for the database" in out and "Traceback" not in out, out


# ----- a bug: 500, logged once, and the connection closed cleanly --------------------------------------------

def test_an_unexpected_error_is_one_500_with_connection_close_logged_once(tmp_path: Path) -> None:
    """A table dropped under the server (a bug's stand-in: a statement that fails for no reason a client or an
    outage explains): 500 with `Connection: close`, one log record, and the same keep-alive client goes on."""
    import sqlite3

    from registry.service import Registry

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = Registry(home=tmp_path / "home", database_url=url)
    registry.push(write_peft_lora(tmp_path / "seed", seed=5), SEED, tag="v1")
    registry.close()
    with running_server(tmp_path / "home", url, extra_args=("--log-format", "text")) as server:
        with sqlite3.connect(tmp_path / "registry.db") as db:
            db.execute("DROP TABLE validation_runs")
        with client(server, server.read_token) as http:
            crash = http.get(f"{API}/repos/{SEED}/refs/v1/validations")
            assert_error(crash, 500, "internal_error")
            assert crash.headers.get("Connection") == "close"
            assert http.get(f"{API}/repos/{SEED}/revisions").status_code == 200  # a fresh connection, no failure
        text = _log_path(server).read_text()
    assert text.count("unhandled error on GET") == 1 and "Exception in ASGI application" not in text, text[-3000:]


# ----- the blob store and the disk -------------------------------------------------------------------------

def _mount(*args: str) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


@pytest.fixture
def seeded_server(tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """A server on SQLite with one adapter; and the digest of one of its blobs."""
    from registry.service import Registry

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = Registry(home=tmp_path / "home", database_url=url)
    registry.push(write_peft_lora(tmp_path / "seed", seed=3), SEED, tag="v1")
    registry.close()
    with running_server(tmp_path / "home", url) as server:
        with client(server, server.read_token) as http:
            files = http.get(f"{API}/repos/{SEED}/refs/v1").json()["files"]
        yield server, next(f["sha256"] for f in files if f["path"] == "adapter_model.safetensors")


def _store_answers(server: Server, digest: str) -> dict[str, httpx.Response]:
    with client(server, server.read_token) as read, client(server, server.write_token) as write:
        new = os.urandom(4096)
        return {
            "blob": read.get(f"{API}/blobs/{digest}"),
            "hf": read.get(f"/{SEED}/resolve/v1/adapter_model.safetensors"),
            "ms": read.get(f"/api/v1/models/{SEED}/repo?Revision=v1&FilePath=adapter_model.safetensors"),
            "upload": upload(write, new, sha256(new), pieces=1),
            "healthz": read.get("/healthz"),
        }


def test_a_store_folder_that_is_gone_answers_503_then_recovers(seeded_server: tuple[Server, str]) -> None:
    server, digest = seeded_server
    store = server.home / "blobs"
    away = store.with_name("blobs.away")
    store.rename(away)
    try:
        answers = _store_answers(server, digest)
    finally:
        if store.exists():  # whatever the server made meanwhile
            subprocess.run(["rm", "-rf", str(store)], check=True)
        away.rename(store)
    for name in ("blob", "upload"):
        body = assert_error(answers[name], 503, "unavailable")
        assert body["dependency"] == "store" and answers[name].headers["Retry-After"], body
    for name in ("hf", "ms"):
        assert answers[name].status_code == 503 and answers[name].headers["Retry-After"], answers[name].text
    assert answers["healthz"].status_code == 503 and answers["healthz"].json()["store"]["ok"] is False
    assert str(server.home) not in "".join(r.text for r in answers.values())
    after = _store_answers(server, digest)
    assert [after[k].status_code for k in ("blob", "hf", "ms", "upload", "healthz")] == [200, 200, 200, 201, 200]


def test_a_read_only_store_answers_503_for_writes_and_serves_reads(seeded_server: tuple[Server, str]) -> None:
    server, digest = seeded_server
    store = server.home / "blobs"
    if not (_mount("--bind", str(store), str(store)) and _mount("-o", "remount,ro,bind", str(store))):
        if os.path.ismount(store):
            _umount(store)
        cannot_mount("needs root and mount (a read-only bind mount of the store)")
    try:
        answers = _store_answers(server, digest)
    finally:
        _umount(store)
    assert [answers[k].status_code for k in ("blob", "hf", "ms")] == [200, 200, 200]
    body = assert_error(answers["upload"], 503, "unavailable")
    assert body["dependency"] == "store" and "Read-only file system" in body["message"], body
    assert answers["healthz"].status_code == 503 and answers["healthz"].json()["store"]["error"].startswith("EROFS")
    assert _store_answers(server, digest)["upload"].status_code == 201


@pytest.mark.parametrize(("options", "sizes"), [("size=1m", (3 << 20,)), ("size=8m,nr_inodes=7", (1000, 2000, 3000))],
                         ids=["out-of-bytes", "out-of-inodes"])
def test_a_full_disk_answers_507_never_500(tmp_path: Path, options: str, sizes: tuple[int, ...]) -> None:
    """A tmpfs as the blob store: 1 MiB for a 3 MiB blob (the store sees it coming), or room for bytes but
    not for files (ENOSPC from creating one: the server's fallback translation answers it)."""
    store = tmp_path / "store"
    store.mkdir()
    if not _mount("-t", "tmpfs", "-o", options, "tmpfs", str(store)):
        cannot_mount("needs root and mount (a tiny tmpfs as the blob store)")
    try:
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        with running_server(tmp_path / "home", url, extra_args=("--store", str(store))) as server:
            with client(server, server.write_token) as http:
                for size in sizes:
                    data = os.urandom(size)
                    answer = upload(http, data, sha256(data), pieces=1)
                    body = assert_error(answer, 507, "insufficient_storage")
                    assert body["writing"] and str(store) not in answer.text, body
            assert "Traceback" not in _log_path(server).read_text()
    finally:
        _umount(store)


def test_every_os_and_database_failure_of_a_dependency_maps_to_its_refusal(tmp_path: Path) -> None:
    """The translation table itself (health.os_fault, db.faults.database_fault), on real exceptions: what a
    write into a full filesystem raises cannot always be produced here (no mount), so the table is pinned too."""
    import sqlite3

    from sqlalchemy import exc

    from registry.db.faults import database_fault
    from registry.server.health import os_fault

    store, home = tmp_path / "store", tmp_path / "home"
    store.mkdir()
    home.mkdir()
    full = os_fault(OSError(errno.ENOSPC, "No space left on device", str(store / "tmp" / ".tmp-1")), store, home)
    assert isinstance(full, InsufficientStorageError) and full.writing == "the blob store: tmp/.tmp-1"
    assert str(tmp_path) not in str(full)
    for code in (errno.EIO, errno.EROFS, errno.ESTALE):
        down = os_fault(OSError(code, os.strerror(code), str(home / "snapshots" / "x")), store, home)
        assert isinstance(down, UnavailableError) and down.dependency == "disk" and down.headers["Retry-After"]
    gone = OSError(errno.ENOENT, "No such file or directory", str(store / "tmp" / ".tmp-2"))
    assert os_fault(gone, store, home) is None  # a missing file of a present store is not an outage
    store.rmdir()
    assert isinstance(os_fault(gone, store, home), UnavailableError)  # the store's folder itself is gone

    def wrapped(error: Exception) -> exc.DBAPIError:
        return exc.OperationalError("SELECT 1", {}, error)

    assert isinstance(database_fault(wrapped(sqlite3.OperationalError("database is locked"))), UnavailableError)
    assert isinstance(database_fault(wrapped(sqlite3.OperationalError("database or disk is full"))),
                      InsufficientStorageError)
    assert database_fault(wrapped(sqlite3.OperationalError("no such table: x"))) is None  # a bug stays a 500
    try:
        import psycopg
    except ImportError:
        return
    refused = psycopg.connect  # a real connection failure, as the driver raises it
    try:
        refused(f"host=127.0.0.1 port={free_port()} connect_timeout=2")
    except psycopg.OperationalError as error:
        assert isinstance(database_fault(wrapped(error)), UnavailableError)
    from psycopg import errors as pg

    assert isinstance(database_fault(wrapped(pg.AdminShutdown())), UnavailableError)
    assert isinstance(database_fault(wrapped(pg.DiskFull())), InsufficientStorageError)
    assert database_fault(wrapped(pg.ProgramLimitExceeded())) is None
