"""Benchmark: pushing a 7B-scale adapter to `swiftreg serve` with the hubs' own upload clients, vs `swiftreg push`.

What it measures
    One 7B-scale PEFT LoRA adapter (about 306 MiB, built as bench/transfer.py builds it) pushed to a
    `swiftreg serve` on 127.0.0.1 (SQLite, local blob store) by each case below, every push a whole
    process (interpreter start and imports included: what a training script or a shell pays):
      swiftreg push             `python -m registry.cli push SRC team/x` (SWIFTREG_URL / SWIFTREG_TOKEN)
      huggingface_hub (LFS)     HfApi.create_repo(exist_ok=True) + upload_folder with HF_HUB_DISABLE_XET=1:
                                preupload, LFS batch, the signed PUTs (multipart for the weights), commit
      modelscope upload_folder  modelscope.hub.api.HubApi().upload_folder (use_cache=False, so the server,
                                not the client's own record, decides what is unchanged): LFS batch, PUT
                                with auth, commit
      modelscope-hub            the same call through modelscope_hub.HubApi, which the above wraps: the
                                protocol without `import modelscope` (seconds of module scanning)
    Each case pushes twice to a server of its own that starts empty: cold (every byte sent), then
    unchanged (the same folder again: nothing may be sent, no revision made; checked with the server's
    byte counter and revision list). Cases run in a rotating order within each repeat (interleaved, so
    machine noise hits every side alike); the table gives the median, the spread (min..max) and, for
    the hub clients, the time of the push call alone inside the process (imports excluded).

Targets (issue 17)
    the hub client's cold push within 1.5x the time of `swiftreg push` (whole processes, paired per
    repeat); an unchanged re-push under 1 s (the push call; the whole process is shown beside it).
    Exit code 0 whether or not they are met (a benchmark, not a test); the verdict lines say MET / MISSED.

Adding a case: append a `Case` to CASES below (its process, its environment, and `skip` saying when the
server cannot serve it); the table, the checks and the verdicts pick it up. The Xet case (issue 23) is the
same upload_folder with hf_xet on (its client cache in the case's home, so the unchanged re-push dedups on
the client's side); its own targets (cold within 2x, one tensor changed) are bench/push_xet.py's.

Run (from the repository root; on a quiet machine for figures worth quoting)
    .venv/bin/python bench/push.py
    .venv/bin/python bench/push.py --layers 2 --repeats 1      # quick smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from timing import load_bench, say  # noqa: E402  (bench/timing.py)
REPO = "team/sql-lora-7b"
COLD_TARGET = 1.5            # a hub client's cold push / swiftreg push's, at most
UNCHANGED_TARGET_S = 1.0     # an unchanged re-push, at most




# ----- the cases ---------------------------------------------------------------------------------------------

#: Runs inside a hub client's process: times the push call alone and prints it (`@@{"call_s": ...}`).
HF_PUSH = '''
import json, os, sys, time
from huggingface_hub import HfApi
api = HfApi(endpoint=os.environ["HF_ENDPOINT"], token=os.environ["HF_TOKEN"])
t0 = time.perf_counter()
api.create_repo(sys.argv[2], exist_ok=True)
api.upload_folder(folder_path=sys.argv[1], repo_id=sys.argv[2], commit_message="bench")
print("@@" + json.dumps({"call_s": time.perf_counter() - t0}))
'''

MS_PUSH = '''
import json, sys, time
from modelscope.hub.api import HubApi
api = HubApi()
t0 = time.perf_counter()
api.upload_folder(repo_id=sys.argv[2], folder_path=sys.argv[1], use_cache=False, disable_tqdm=True)
print("@@" + json.dumps({"call_s": time.perf_counter() - t0}))
'''

#: The same push through modelscope-hub alone (what modelscope.hub.api wraps), without `import modelscope`'s seconds.
MS_HUB_PUSH = MS_PUSH.replace("from modelscope.hub.api import HubApi\napi = HubApi()",
                              "from modelscope_hub import HubApi\napi = HubApi()").replace(
    "api.upload_folder(repo_id=sys.argv[2], folder_path", "api.upload_folder(sys.argv[2], \"model\", folder_path")


@dataclass(frozen=True)
class Case:
    """One way of pushing: the argv of the process that pushes folder `src` to `repo`, its environment on top
    of the bench's, and `skip` (None when the server can serve it, else why the case is skipped)."""

    key: str
    label: str
    argv: Callable[[Path, str], list[str]]
    env: Callable[[Any, Path], dict[str, str]]
    skip: Callable[[Any], str | None] = lambda server: None


def _script(source: str) -> Callable[[Path, str], list[str]]:
    return lambda src, repo: [sys.executable, "-c", source, str(src), repo]


def _hf_env(server: Any, home: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": server.url, "HF_TOKEN": server.write, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(home / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _ms_env(server: Any, home: Path) -> dict[str, str]:
    return {"MODELSCOPE_ENDPOINT": server.url, "MODELSCOPE_API_TOKEN": server.write,
            "MODELSCOPE_CACHE": str(home / "ms-cache"), "MODELSCOPE_LOG_LEVEL": "40", "HOME": str(home)}


def _answers(server: Any, method: str, path: str) -> str | None:
    """None when the server has the route (any answer but 404 / 405), else why the case is skipped."""
    import httpx

    r = httpx.request(method, server.url + path, json={}, headers={"Authorization": f"Bearer {server.write}"})
    if r.status_code in (404, 405):  # an empty body is refused 400 by a route that exists
        return f"{method} {path} answered {r.status_code}: this server has no such route yet"
    return None


CASES: list[Case] = [
    Case("swiftreg", "swiftreg push (CLI)",
         lambda src, repo: [sys.executable, "-m", "registry.cli", "push", str(src), repo],
         lambda server, home: {"SWIFTREG_URL": server.url, "SWIFTREG_TOKEN": server.write,
                               "SWIFTREG_HOME": str(home / "swiftreg-client")}),
    Case("hf", "huggingface_hub upload_folder (LFS, no Xet)", _script(HF_PUSH), _hf_env,
         lambda server: _answers(server, "POST", "/api/repos/create")),
    Case("modelscope", "modelscope HubApi.upload_folder", _script(MS_PUSH), _ms_env),
    Case("modelscope_hub", "modelscope-hub HubApi.upload_folder", _script(MS_HUB_PUSH), _ms_env),
    # Xet (issue 23): the same upload_folder with hf_xet on; cold vs one tensor changed: bench/push_xet.py.
    Case("xet", "huggingface_hub upload_folder (Xet)", _script(HF_PUSH),
         lambda server, home: {k: v for k, v in _hf_env(server, home).items() if k != "HF_HUB_DISABLE_XET"},
         lambda server: _answers(server, "GET", "/api/models/team/x/xet-write-token/main")),
]


# ----- one push ------------------------------------------------------------------------------------------------

def counters(server: Any) -> tuple[int, int]:
    """(bytes the server received, revisions of REPO) now."""
    import httpx

    auth = {"Authorization": f"Bearer {server.admin}"}
    received = int(httpx.get(f"{server.url}/api/v1/stats", headers=auth).json()["bytes_received"])
    listed = httpx.get(f"{server.url}/api/v1/repos/{REPO}/revisions", headers=auth)  # 404 before the first push
    return received, len(listed.json()) if listed.status_code == 200 else 0


def push_once(case: Case, server: Any, src: Path, home: Path) -> tuple[float, float | None, int, int]:
    """(whole-process seconds, push-call seconds or None, bytes the server received, revisions added)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFTREG_", "HF_", "MODELSCOPE_"))}
    env.update(case.env(server, home))
    before, revisions = counters(server)
    t0 = time.perf_counter()
    done = subprocess.run(case.argv(src, REPO), env=env, capture_output=True, text=True)
    whole = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{case.label} failed (exit {done.returncode}): {done.stderr[-3000:]}")
    marks = [ln for ln in done.stdout.splitlines() if ln.startswith("@@")]
    call = json.loads(marks[-1][2:])["call_s"] if marks else None
    after, now = counters(server)
    return whole, call, after - before, now - revisions


# ----- the run ---------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of every case (default 5)")
    parser.add_argument("--layers", type=int, default=32,
                        help="decoder layers of the 7B-scale adapter (default 32: about 306 MiB; 2 for a smoke run)")
    parser.add_argument("--cases", default=",".join(c.key for c in CASES),
                        help=f"comma-separated cases to run (default all: {','.join(c.key for c in CASES)})")
    args = parser.parse_args()
    if args.repeats < 1 or args.layers < 1:
        parser.error("--repeats and --layers must be at least 1")
    chosen = [c for c in CASES if c.key in args.cases.split(",")]
    if not chosen or chosen[0].key != "swiftreg":
        parser.error("--cases must include swiftreg (the baseline), first")
    work = Path(tempfile.mkdtemp(prefix="swiftreg-bench-push-"))
    for name in [k for k in os.environ if k.startswith("SWIFTREG_")]:
        os.environ.pop(name)
    try:
        return run(args, chosen, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, cases: list[Case], work: Path) -> int:
    transfer = load_bench("transfer")
    resolve_bench = transfer.load_bench("resolve")
    src = resolve_bench.build_large_source(work, args.layers)
    expected = transfer.folder_digests(src)
    total = sum(size for size, _ in expected.values())
    largest = max(size for size, _ in expected.values())
    mib = total / 2**20
    load_before = os.getloadavg()
    say(f"adapter {REPO}: {len(expected)} files, {mib:.2f} MiB; {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in load_before)}")

    whole: dict[str, dict[str, list[float]]] = {c.key: {"cold": [], "unchanged": []} for c in cases}
    call: dict[str, dict[str, list[float]]] = {c.key: {"cold": [], "unchanged": []} for c in cases}
    skipped: dict[str, str] = {}
    problems: list[str] = []
    for rep in range(args.repeats):
        order = cases[rep % len(cases):] + cases[:rep % len(cases)]  # rotate: nobody always goes first
        for case in order:
            if case.key in skipped:
                continue
            home = work / f"rep{rep}-{case.key}"
            with transfer.serve(home / "server") as server:
                why = case.skip(server)
                if why is not None:
                    skipped[case.key] = why
                    continue
                for phase in ("cold", "unchanged"):
                    try:
                        t, inner, received, made = push_once(case, server, src, home)
                    except RuntimeError as exc:
                        skipped[case.key] = str(exc)[:600]
                        break
                    whole[case.key][phase].append(t)
                    if inner is not None:
                        call[case.key][phase].append(inner)
                    # Xet: xorbs are LZ4-compressed (a cold push sends less than the weights) and an unchanged
                    # re-push still posts a shard (a few hundred bytes) naming what it deduplicated
                    floor, ceiling = (largest // 2, 64 << 10) if case.key == "xet" else (largest, 0)
                    if phase == "cold" and (made != 1 or received < floor):  # small files may ride in the commit
                        problems.append(f"{case.label}, cold: {made} revision(s), {received} bytes received "
                                        f"(the weights alone are {largest})")
                    if phase == "unchanged" and (made != 0 or received > ceiling):
                        problems.append(f"{case.label}, unchanged: {made} revision(s) made, {received} bytes received")
            shutil.rmtree(home, ignore_errors=True)
        say(f"  repeat {rep + 1}/{args.repeats} done (load average {os.getloadavg()[0]:.2f})")

    load_after = os.getloadavg()
    say()
    say(f"{args.repeats} repeat(s), {mib:.1f} MiB adapter pushed over 127.0.0.1, each push a whole process "
        f"(seconds: median, min..max; 'call': the push call inside the process, imports excluded)")
    say(f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)} (numbers under load are not figures to quote)")
    say(f"{'case':<46} {'phase':<10} {'median s':>9} {'min..max':>15} {'call s':>8} {'MiB/s':>7} {'/ swiftreg':>11}")
    base = whole["swiftreg"]
    for case in cases:
        if case.key in skipped:
            say(f"{case.label:<46} skipped: {skipped[case.key]}")
            continue
        for phase in ("cold", "unchanged"):
            got = whole[case.key][phase]
            if not got:
                continue
            med = statistics.median(got)
            inner = f"{statistics.median(call[case.key][phase]):.3f}" if call[case.key][phase] else "-"
            rate = f"{mib / med:.0f}" if phase == "cold" else "-"
            ratio = f"{med / statistics.median(base[phase]):.2f}x" if base[phase] else "-"
            say(f"{case.label:<46} {phase:<10} {med:>9.3f} {min(got):>7.3f}..{max(got):<7.3f} {inner:>8} "
                f"{rate:>7} {ratio:>11}")
    say()
    for case in cases[1:]:
        if case.key in skipped or not whole[case.key]["cold"]:
            continue
        paired = [a / b for a, b in zip(whole[case.key]["cold"], base["cold"])]
        ratio = statistics.median(paired)
        say(f"{case.label}, cold / swiftreg push ({', '.join(f'{r:.2f}' for r in paired)} per repeat): median "
            f"{ratio:.2f}x; target <= {COLD_TARGET}x: {'MET' if ratio <= COLD_TARGET else 'MISSED'}")
        unchanged = call[case.key]["unchanged"] or whole[case.key]["unchanged"]
        if unchanged:
            med = statistics.median(unchanged)
            say(f"{case.label}, unchanged re-push: {med:.3f} s (push call; whole process "
                f"{statistics.median(whole[case.key]['unchanged']):.3f} s); target < {UNCHANGED_TARGET_S} s: "
                f"{'MET' if med < UNCHANGED_TARGET_S else 'MISSED'}")
    if base["unchanged"]:
        say(f"swiftreg push, unchanged (whole process): {statistics.median(base['unchanged']):.3f} s")
    for problem in problems:
        say(f"CHECK FAILED: {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
