"""Benchmark: moving a 7B-scale adapter through `swiftreg serve` over loopback, vs cp and huggingface_hub.

What it measures
    One 7B-scale PEFT LoRA adapter (about 306 MiB, mostly one safetensors file) and a `swiftreg serve`
    on 127.0.0.1 backed by SQLite and a local blob store, all on this machine:
      cp                  `cp -r` of the adapter folder to a new folder (source in the page cache):
                          the floor for "put these bytes in another folder".
      push (cold)         RemoteRegistry.push to a server that holds nothing: detect, validate, hash,
                          POST blobs/missing, resumable PATCH uploads of every blob, commit (the server
                          rebuilds and re-validates the checkpoint from its blobs before the revision
                          exists).
      re-push unchanged   the same push again: hash locally, find the revision by digest, send no bytes.
                          Also timed as a whole `swiftreg push` process (interpreter start included).
      resolve (cold)      RemoteRegistry.resolve into an empty cache: manifest, every blob downloaded
                          through a resumable .part file, sha256-verified, fsynced, renamed into a
                          snapshot folder.
      pull -o (cold)      RemoteRegistry.pull(..., output): the resolve above, then a copy of the
                          verified snapshot to the output folder (what `swiftreg pull -o` does).
      curl GET            `curl -o /dev/null` of the weights blob from /api/v1/blobs: how fast the server
                          alone serves the bytes (no hashing, no disk), the ceiling of any client.
      hf download (cold)  huggingface_hub.snapshot_download(repo, revision="v1", endpoint=<our server>)
                          into an empty cache, through the server's Hugging Face routes: the download
                          every transformers / PEFT / vLLM user already has.
    Every repeat starts a fresh server (empty store) and empty client caches, and runs every case
    once, interleaved, so machine noise hits all sides alike; the table gives the median and best
    repeat, MiB/s of adapter bytes, and ratios. Every output folder is checked to hold exactly the
    source's files and bytes (equal work).

      sha256              hashing the adapter's files, from the page cache, on one core: the least time any
                          pull that verifies every byte can take here (cp does not hash).

    Object storage (issue 20; skipped without boto3 and moto[server]): moto's standalone S3 server
    (`python -m moto.server`, a fresh one per repeat) on 127.0.0.1, and against it:
      s3 raw put / get    boto3's own transfer manager (upload_file / download_file of every file,
                          16 MiB parts, 10 threads: the store's defaults): the storage library alone;
                          also boto3 get_object read as one stream per file (moto answers every range
                          GET by copying the whole object, which slows download_file's parallel ranges).
      s3 push             RemoteRegistry.push to `swiftreg serve --store s3://...`: presigned part PUTs
                          straight to the storage, the server hashing the object before it copies it
                          to its blob key, then the commit (validated from the store).
      s3 pull -o          RemoteRegistry.pull: redirects to presigned GETs, every byte verified.
    The server's byte counters are checked: no adapter byte passes through it on these two.

Targets
    pull -o at least half of cp's throughput; a re-push of unchanged content under 1 s (the API call);
    s3 push and s3 pull -o within 1.3x the time of the raw put and get.
    Exit code 0 whether or not they are met (a benchmark, not a test); the verdict lines say MET / MISSED.

The adapter
    Built exactly as bench/resolve.py builds its 7B-scale one (Llama-7B shapes, r=64 on the seven
    projections, bf16, from bench/convert.py's generator, checked against a tiny adapter saved by the
    real peft); `--layers N` makes it smaller for a smoke run.

Run (from the repository root)
    .venv/bin/python bench/transfer.py
    .venv/bin/python bench/transfer.py --layers 2 --repeats 1      # quick smoke run
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import timing  # noqa: E402  (bench/timing.py: the interleaving every bench shares)
from timing import load_bench, say  # noqa: E402  (bench/timing.py)
REPO = "team/sql-lora-7b"
TAG = "v1"
PULL_VS_CP_TARGET = 0.5      # pull throughput / cp throughput, at least
RESOLVE_VS_FLOOR = 1.3       # cold resolve / the slower of sha256 alone and curl to a file, at most (issue 18)
VS_HUB_CLIENTS = 2.0         # huggingface_hub's and modelscope's time / cold resolve's, at least (issue 18)
REPUSH_TARGET_S = 1.0        # re-push of unchanged content, at most
S3_TARGET = 1.3              # s3 push / raw put and s3 pull / raw get, at most
BUCKET = "swiftreg-bench"




def folder_digests(root: Path) -> dict[str, tuple[int, str]]:
    from registry.store.digests import sha256_file

    return {p.relative_to(root).as_posix(): (p.stat().st_size, sha256_file(p))
            for p in sorted(root.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def swiftreg_command() -> str:
    """The `swiftreg` console script of this interpreter's environment: what a user runs."""
    script = Path(sys.executable).with_name("swiftreg")
    if not script.exists():
        raise SystemExit(f"error: no swiftreg script beside {sys.executable}: pip install -e . first")
    return str(script)


def download_cases(server: Server, base: Path, src: Path, weights: str, expected: dict[str, tuple[int, str]],
                   check: Callable[[Path, str], None], curl: str | None, hf_snapshot: Any, ms_snapshot: Any
                   ) -> list[timing.Case]:
    """The download sides, each into an empty cache or folder (made before, removed after, untimed)."""
    from registry.client import RemoteRegistry

    def fresh(*paths: Path) -> Callable[[], None]:
        def clear() -> None:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
                path.unlink(missing_ok=True) if path.is_file() else None
        return clear

    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
    env.update(SWIFTREG_URL=server.url, SWIFTREG_TOKEN=server.read)
    ref = f"{REPO}@{TAG}"
    cases = [timing.Case("sha256", lambda: folder_digests(src), writes=False)]
    if curl:  # the server's own speed at serving the big blob, written to a file like every other side
        out = base / "curl.out"
        cases.append(timing.Case(
            "curl", timing.process([curl, "-sf", "-o", str(out), "-H", f"Authorization: Bearer {server.read}",
                                    f"{server.url}/api/v1/blobs/{expected[weights][1]}"]),
            before=fresh(out), after=fresh(out)))
    resolver, puller, pulled = base / "resolver", base / "puller", base / "pulled"
    cases.append(timing.Case("resolve", lambda: RemoteRegistry(server.url, server.read, home=resolver).resolve(ref),
                             before=fresh(resolver), after=fresh(resolver), check=lambda f: check(f, "resolve")))
    cases.append(timing.Case("pull", lambda: RemoteRegistry(server.url, server.read, home=puller).pull(ref, pulled),
                             before=fresh(puller, pulled), after=fresh(puller, pulled),
                             check=lambda f: check(f, "pull -o")))
    cli_home, cli_out = base / "cli-pull", base / "pulled-cli"
    cli_env = {**env, "SWIFTREG_HOME": str(cli_home)}
    cases.append(timing.Case("resolve_cli", timing.process([swiftreg_command(), "pull", ref], cli_env),
                             before=fresh(cli_home), after=fresh(cli_home)))
    cases.append(timing.Case("pull_cli", timing.process([swiftreg_command(), "pull", ref, "-o", str(cli_out)], cli_env),
                             before=fresh(cli_home, cli_out), after=fresh(cli_home, cli_out),
                             check=lambda _: check(cli_out, "swiftreg pull -o")))
    if hf_snapshot is not None:
        hf_cache = base / "hf-cache"
        cases.append(timing.Case("hf", lambda: hf_snapshot(REPO, revision=TAG, endpoint=server.url, token=server.read,
                                                           cache_dir=str(hf_cache)),
                                 before=fresh(hf_cache), after=fresh(hf_cache),
                                 check=lambda got: check(Path(got), "huggingface_hub.snapshot_download")))
    if ms_snapshot is not None:
        ms_cache = base / "ms-cache"
        cases.append(timing.Case("ms", lambda: ms_snapshot(REPO, revision=TAG, endpoint=server.url, token=server.read,
                                                           cache_dir=str(ms_cache)),
                                 before=fresh(ms_cache), after=fresh(ms_cache),
                                 check=lambda got: check(Path(got), "modelscope.snapshot_download")))
    return cases


@dataclass
class Server:
    url: str
    admin: str
    write: str
    read: str


@contextmanager
def serve(home: Path, args: tuple[str, ...] = (), extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
    env.update(SWIFTREG_HOME=str(home), SWIFTREG_DATABASE_URL=f"sqlite:///{home / 'registry.db'}", **(extra_env or {}))
    home.mkdir(parents=True)
    port = free_port()
    log = open(home.parent / f"server-{port}.log", "w")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    import httpx

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"error: swiftreg serve exited with {proc.returncode} (log: {log.name})")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("error: swiftreg serve did not answer /healthz within 60 s")
            time.sleep(0.1)

        def token(scope: str) -> str:
            done = subprocess.run([sys.executable, "-m", "registry.cli", "token", "create", "--scope", scope, "--json"],
                                  env=env, capture_output=True, text=True, check=True)
            return json.loads(done.stdout)["token"]

        yield Server(url, token("admin"), token("write"), token("read"))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = func()
    return time.perf_counter() - t0, out


def s3_available() -> str | None:
    """None when boto3 and moto's server are installed, else why the object-store rows are skipped."""
    for module in ("boto3", "moto.server"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"{module} is not installed (pip install 'swiftreg[s3]' 'moto[server]')"
    return None


@contextmanager
def moto(work: Path) -> Iterator[dict[str, str]]:
    """moto's standalone S3 server on a free port with one bucket; the AWS_* variables that reach it."""
    import boto3

    port = free_port()
    log = open(work / f"moto-{port}.log", "w")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"error: moto's server did not start (log: {log.name})") from None
                time.sleep(0.1)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="bench",
                     aws_secret_access_key="bench-secret", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def raw_client(env: dict[str, str]) -> tuple[Any, Any]:
    """boto3's client and transfer settings as the s3:// store makes them (registry/store/s3.py)."""
    from boto3.s3.transfer import TransferConfig

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from registry.store.s3 import make_client

        client = make_client(10)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return client, TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=10)


def stats_of(server: Server) -> dict[str, Any]:
    import httpx

    return dict(httpx.get(f"{server.url}/api/v1/stats", headers={"Authorization": f"Bearer {server.admin}"}).json())


def hf_routes_answer(server: Server) -> str | None:
    """None when the server speaks the Hugging Face download protocol, else why not."""
    import httpx

    try:
        r = httpx.get(f"{server.url}/api/models/{REPO}/revision/{TAG}",
                      headers={"Authorization": f"Bearer {server.read}"}, timeout=30)
    except httpx.HTTPError as exc:
        return f"GET /api/models/{REPO}/revision/{TAG} failed: {exc}"
    if r.status_code != 200:
        return f"GET /api/models/{REPO}/revision/{TAG} answered {r.status_code} (no Hugging Face routes yet?)"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=timing.MIN_RUNS,
                        help=f"fresh-server repeats of every case (default {timing.MIN_RUNS})")
    parser.add_argument("--layers", type=int, default=32,
                        help="decoder layers of the 7B-scale adapter (default 32: about 306 MiB; 2 for a smoke run)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    parser.add_argument("--no-s3", action="store_true", help="leave out the object-storage rows")
    args = parser.parse_args()
    if args.repeats < 1 or args.layers < 1:
        parser.error("--repeats and --layers must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="swiftreg-bench-transfer-"))
    # huggingface_hub reads these at import: a real download (not offline), its own home, no telemetry.
    os.environ["HF_HUB_OFFLINE"] = "0"
    os.environ["HF_HOME"] = str(work / "hf-home")
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"  # modelscope's download bars
    os.environ["MODELSCOPE_CACHE"] = str(work / "ms-home")
    os.environ["MODELSCOPE_LOG_LEVEL"] = "30"
    os.environ.pop("HF_HUB_ENABLE_HF_TRANSFER", None)
    for name in [k for k in os.environ if k.startswith("SWIFTREG_")]:
        os.environ.pop(name)
    try:
        return run(args, work)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    say(f"work dir {work}")
    t0 = time.perf_counter()
    resolve_bench = load_bench("resolve")
    src = resolve_bench.build_large_source(work, args.layers)
    expected = folder_digests(src)
    total = sum(size for size, _ in expected.values())
    mib = total / 2**20
    say(f"adapter {REPO}: {len(expected)} files, {mib:.2f} MiB ({', '.join(expected)}), "
        f"built in {time.perf_counter() - t0:.1f} s")

    from registry.client import RemoteRegistry

    def check(folder: Path, what: str) -> None:
        got = {rel: v for rel, v in folder_digests(folder).items()
               if not rel.startswith(".") and "/." not in rel}  # the hub clients' own metadata files
        if got != expected:
            raise SystemExit(f"error: {what} gave {sorted(got)} with other bytes than the source {sorted(expected)}")

    times: dict[str, list[float]] = {k: [] for k in (
        "cp", "push", "repush", "repush_cli",
        "s3_raw_put", "s3_push", "s3_raw_get", "s3_raw_stream", "s3_pull")}
    s3_skip = s3_available() if not args.no_s3 else "--no-s3"
    weights = max(expected, key=lambda rel: expected[rel][0])
    curl = shutil.which("curl")
    hf_skip: str | None = None
    ms_skip: str | None = None
    try:
        from huggingface_hub import snapshot_download as hf_snapshot
    except ImportError as exc:
        hf_skip = f"huggingface_hub is not installed: {exc}"
    try:
        from modelscope import snapshot_download as ms_snapshot  # seconds of import: done before any timing
    except ImportError as exc:
        ms_skip = f"modelscope is not installed: {exc}"
    downloads = timing.Results()
    say(timing.load_average())
    for rep in range(args.repeats):
        base = work / f"rep{rep}"
        base.mkdir()
        warm = folder_digests(src)  # the source in the page cache for every side
        assert warm == expected
        timing.sync()
        t, _ = timed(lambda base=base: subprocess.run(["cp", "-r", str(src), str(base / "cp")], check=True))
        times["cp"].append(t)
        check(base / "cp", "cp -r")
        shutil.rmtree(base / "cp")

        with serve(base / "server") as server:
            timing.sync()
            pusher = RemoteRegistry(server.url, server.write, home=base / "pusher")
            t, result = timed(lambda pusher=pusher: pusher.push(src, REPO, tag=TAG))
            if not result.created or result.bytes_written != total:
                raise SystemExit(f"error: the cold push sent {result.bytes_written} of {total} bytes")
            times["push"].append(t)
            t, again = timed(lambda pusher=pusher: pusher.push(src, REPO, tag=TAG))
            if again.created or again.bytes_written:
                raise SystemExit("error: the re-push of unchanged content sent bytes or made a revision")
            times["repush"].append(t)
            env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
            env.update(SWIFTREG_URL=server.url, SWIFTREG_TOKEN=server.write, SWIFTREG_HOME=str(base / "cli"))
            t, done = timed(lambda env=env: subprocess.run([swiftreg_command(), "push", str(src), REPO],
                                                           env=env, capture_output=True, text=True))
            if done.returncode != 0 or not done.stdout.startswith("unchanged"):
                raise SystemExit(f"error: swiftreg push (unchanged) failed: {done.stdout}{done.stderr}")
            times["repush_cli"].append(t)
            if hf_skip is None:
                hf_skip = hf_routes_answer(server)
            cases = download_cases(server, base, src, weights, expected, check, curl,
                                   None if hf_skip else hf_snapshot, None if ms_skip else ms_snapshot)
            timing.interleaved(cases, 1, downloads, start=rep)  # one round per fresh server, order alternating
        if s3_skip is None:
            s3_repeat(src, base, check, times, total)
        shutil.rmtree(base, ignore_errors=True)
        say(f"  repeat {rep + 1}/{args.repeats} done ({timing.load_average()})")
    for name, values in downloads.times.items():
        times[name] = values

    med = {k: statistics.median(v) for k, v in times.items() if v}
    lo = {k: min(v) for k, v in times.items() if v}
    hi = {k: max(v) for k, v in times.items() if v}
    rows = [
        ("cp", "cp -r (folder copy, source in page cache)"),
        ("push", "push, cold server (library)"),
        ("repush", "push, unchanged content (library)"),
        ("repush_cli", "swiftreg push, unchanged (whole process)"),
        ("sha256", "sha256 of the adapter's files alone (page cache)"),
        ("curl", "curl -o FILE of the weights blob (the server)"),
        ("resolve", "resolve, empty cache (library)"),
        ("resolve_cli", "swiftreg pull REPO, empty cache (whole process)"),
        ("pull", "pull -o, empty cache (library)"),
        ("pull_cli", "swiftreg pull -o, empty cache (whole process)"),
        ("hf", "huggingface_hub snapshot_download (our server)"),
        ("ms", "modelscope snapshot_download (our server)"),
        ("s3_raw_put", "s3: boto3 upload_file of every file (raw)"),
        ("s3_push", "s3: swiftreg push, presigned (library)"),
        ("s3_raw_get", "s3: boto3 download_file of every file (raw)"),
        ("s3_raw_stream", "s3: boto3 get_object, one stream per file (raw)"),
        ("s3_pull", "s3: swiftreg pull -o, redirected (library)"),
    ]
    say()
    say(f"{args.repeats} repeat(s), {mib:.1f} MiB adapter over 127.0.0.1; the download rows interleaved in alternating "
        f"order with a sync before each; {timing.load_average()} at the end")
    say(f"{'operation':<50} {'median s':>9} {'spread (min-max)':>17} {'MiB/s':>7}")
    for key, label in rows:
        if key not in med:
            continue
        say(f"{label:<50} {med[key]:>9.3f} {lo[key]:>8.3f}-{hi[key]:<8.3f} {mib / med[key]:>7.0f}")
    say()
    floor_name = "curl -o FILE" if med.get("curl", 0) >= med["sha256"] else "sha256 alone"
    floor = max(med["sha256"], med.get("curl", 0.0))
    say(timing.verdict(f"cold resolve (library) / the slower of sha256 alone and curl -o FILE ({floor_name}, "
                       f"{floor:.3f} s)", med["resolve"] / floor, RESOLVE_VS_FLOOR))
    say(f"  as the whole `swiftreg pull` process: {med['resolve_cli'] / floor:.2f}x; `pull -o` (library) "
        f"{med['pull'] / floor:.2f}x, as a process {med['pull_cli'] / floor:.2f}x")
    for key, who in (("hf", "huggingface_hub"), ("ms", "modelscope")):
        if key in med:
            say(timing.verdict(f"{who} snapshot_download / swiftreg resolve (same server, same bytes, empty caches)",
                               med[key] / med["resolve"], VS_HUB_CLIENTS, at_most=False))
        else:
            say(f"{who} snapshot_download: skipped ({hf_skip if key == 'hf' else ms_skip})")
    say(timing.verdict("pull -o throughput / cp throughput", med["cp"] / med["pull"], PULL_VS_CP_TARGET,
                       at_most=False))
    say(timing.verdict("re-push of unchanged content (library)", med["repush"], REPUSH_TARGET_S, unit=" s")
        + f"; whole process {med['repush_cli']:.3f} s")
    say(f"push throughput: {mib / med['push']:.0f} MiB/s ({med['cp'] / med['push']:.2f}x cp's)")
    if s3_skip is not None:
        say(f"object storage rows: skipped ({s3_skip})")
    else:
        for mine, raw, what in (("s3_push", "s3_raw_put", "push"), ("s3_pull", "s3_raw_get", "pull -o"),
                                ("s3_pull", "s3_raw_stream", "pull -o (vs one GET stream per file)")):
            ratios = [a / b for a, b in zip(times[mine], times[raw])]
            ratio = statistics.median(ratios)
            say(f"s3 {what} / boto3 raw ({', '.join(f'{r:.2f}' for r in ratios)} per repeat): median {ratio:.2f}x; "
                f"target <= {S3_TARGET}x: {'MET' if ratio <= S3_TARGET else 'MISSED'}")
    return 0


def s3_repeat(src: Path, base: Path, check: Callable[[Path, str], None], times: dict[str, list[float]],
              total: int) -> None:
    """One repeat of the object-store rows, interleaved: raw put, swiftreg push, raw get, swiftreg pull."""
    from registry.client import RemoteRegistry

    files = sorted(p for p in src.rglob("*") if p.is_file())
    with moto(base) as env:
        client, config = raw_client(env)
        t, _ = timed(lambda: [client.upload_file(str(p), BUCKET, f"raw/{p.relative_to(src).as_posix()}",
                                                 Config=config) for p in files])
        times["s3_raw_put"].append(t)
        with serve(base / "s3-server", ("--store", f"s3://{BUCKET}/registry"), env) as server:
            pusher = RemoteRegistry(server.url, server.write, home=base / "s3-pusher")
            t, result = timed(lambda: pusher.push(src, REPO, tag=TAG))
            if not result.created or result.bytes_written != total:
                raise SystemExit(f"error: the s3 push sent {result.bytes_written} of {total} bytes")
            times["s3_push"].append(t)
            received = stats_of(server)["bytes_received"]
            if received:
                raise SystemExit(f"error: {received} bytes of the presigned push went through the server")
            out = base / "s3-raw"
            t, _ = timed(lambda: [client.download_file(BUCKET, f"raw/{p.relative_to(src).as_posix()}",
                                                       str(out / p.relative_to(src)), Config=config)
                                  for p in files if (out / p.relative_to(src)).parent.mkdir(parents=True,
                                                                                              exist_ok=True) is None])
            times["s3_raw_get"].append(t)
            check(out, "boto3 download_file")
            shutil.rmtree(out)
            out.mkdir()

            def streamed() -> None:  # one GET per file, read in 8 MiB pieces (no ranges: see registry/store/s3.py)
                for p in files:
                    body = client.get_object(Bucket=BUCKET, Key=f"raw/{p.relative_to(src).as_posix()}")["Body"]
                    (out / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    with open(out / p.relative_to(src), "wb") as f:
                        while chunk := body.read(8 << 20):
                            f.write(chunk)
            t, _ = timed(streamed)
            times["s3_raw_stream"].append(t)
            check(out, "boto3 get_object")
            sent = stats_of(server)["bytes_sent"]
            puller = RemoteRegistry(server.url, server.read, home=base / "s3-puller")
            t, pulled = timed(lambda: puller.pull(f"{REPO}@{TAG}", base / "s3-pulled"))
            times["s3_pull"].append(t)
            check(pulled, "s3 pull -o")
            through = stats_of(server)["bytes_sent"] - sent
            if through > total // 100:
                raise SystemExit(f"error: {through} bytes of the redirected pull went through the server")


if __name__ == "__main__":
    sys.exit(main())
