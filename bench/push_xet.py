"""Benchmark: the unmodified huggingface_hub + hf_xet (the Xet protocol) vs `swiftreg push`, cold and with one
tensor changed, pushing the 7B-scale adapter of bench/push.py to `swiftreg serve`.

What it measures
    The adapter bench/push.py builds (about 306 MiB; 2 for --layers 2), pushed by two cases, each push a whole
    process (interpreter start and imports included), each case to a `swiftreg serve` of its own that starts
    empty:
      swiftreg push      `python -m registry.cli push SRC team/x`
      Xet upload_folder  HfApi.create_repo(exist_ok=True) + upload_folder, HF_HUB_DISABLE_XET unset (hf_xet
                         chunks, dedups against the server through the global dedup query, uploads xorbs
                         and a shard, then commits), with a fresh HF_XET_CACHE for every push (another
                         machine, e.g. a new training job: nothing is deduplicated on the client's side)
    Phases per case: cold (every byte sent), then "one tensor" (the same folder with one of its ~450
    tensors changed: the sign of every element of one LoRA A matrix flipped, in place; a retrained adapter
    that moved one module). The server's received-bytes counter and revision count are checked: a cold push
    receives at least the weights (half of them for Xet, whose xorbs are compressed) and makes 1 revision;
    a one-tensor push makes 1 revision, and for Xet receives under 5% of the adapter. Cases alternate first
    within each repeat; median and min..max given.

Targets (issue 23)
    Xet cold within 2x the time of `swiftreg push` cold (whole processes, paired per repeat); the Xet push of
    the one-tensor change at least 5x faster than a cold push (Xet's own cold, paired per repeat; swiftreg
    push's cold shown beside it). Exit code 0 whether or not they are met; the verdict lines say MET / MISSED.

Run (from the repository root; on a quiet machine for figures worth quoting)
    .venv/bin/python bench/push_xet.py
    .venv/bin/python bench/push_xet.py --layers 2 --repeats 1      # quick smoke run
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from timing import load_bench, say  # noqa: E402  (bench/timing.py)

COLD_TARGET = 2.0       # Xet cold / swiftreg push cold, at most
CHANGE_TARGET = 5.0     # Xet cold / Xet one-tensor push, at least
SENT_TARGET = 0.05      # bytes received for the one-tensor push / adapter bytes, under


def flip_one_tensor(src: Path, dst: Path) -> str:
    """Copy checkpoint folder `src` to `dst` with one tensor of its safetensors changed (every element's sign
    flipped, bytes rewritten in place: the header and every other tensor stay byte-identical). Its name."""
    shutil.copytree(src, dst)
    path = dst / "adapter_model.safetensors"
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        names = sorted(k for k, v in header.items() if "lora_A" in k and v["dtype"] in ("F32", "F16", "BF16"))
        name = names[len(names) // 3]
        width = 4 if header[name]["dtype"] == "F32" else 2
        start, end = header[name]["data_offsets"]
        f.seek(8 + n + start)
        data = bytearray(f.read(end - start))
        for i in range(width - 1, len(data), width):
            data[i] ^= 0x80
        f.seek(8 + n + start)
        f.write(data)
    return name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of every case (default 5)")
    parser.add_argument("--layers", type=int, default=32,
                        help="decoder layers of the 7B-scale adapter (default 32: about 306 MiB; 2 for a smoke run)")
    args = parser.parse_args()
    if args.repeats < 1 or args.layers < 1:
        parser.error("--repeats and --layers must be at least 1")
    for name in [k for k in os.environ if k.startswith("SWIFTREG_")]:
        os.environ.pop(name)
    work = Path(tempfile.mkdtemp(prefix="swiftreg-bench-push-xet-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    push = load_bench("push")
    transfer = load_bench("transfer")
    resolve_bench = transfer.load_bench("resolve")
    src = resolve_bench.build_large_source(work, args.layers, checked=False)
    changed = work / "src" / "one-tensor"
    tensor = flip_one_tensor(src, changed)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    largest = max(p.stat().st_size for p in src.rglob("*") if p.is_file())
    mib = total / 2**20
    load_before = os.getloadavg()
    say(f"adapter {push.REPO}: {mib:.2f} MiB; one-tensor change: {tensor}; {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in load_before)}")

    pushes = itertools.count()

    def xet_env(server: Any, home: Path) -> dict[str, str]:
        """huggingface_hub's environment with Xet on, and a Xet cache no earlier push filled."""
        env: dict[str, str] = push._hf_env(server, home)
        env.pop("HF_HUB_DISABLE_XET")
        return {**env, "HF_XET_CACHE": str(home / f"xet-cache-{next(pushes)}")}

    cases = [push.CASES[0],
             push.Case("xet", "huggingface_hub upload_folder (Xet)", push._script(push.HF_PUSH), xet_env)]
    phases = ("cold", "one tensor")
    whole: dict[str, dict[str, list[float]]] = {c.key: {p: [] for p in phases} for c in cases}
    sent: dict[str, dict[str, list[int]]] = {c.key: {p: [] for p in phases} for c in cases}
    problems: list[str] = []
    for rep in range(args.repeats):
        for case in (cases if rep % 2 == 0 else cases[::-1]):
            home = work / f"rep{rep}-{case.key}"
            with transfer.serve(home / "server") as server:
                for phase, folder in zip(phases, (src, changed)):
                    t, _, received, made = push.push_once(case, server, folder, home)
                    whole[case.key][phase].append(t)
                    sent[case.key][phase].append(received)
                    if made != 1:
                        problems.append(f"{case.label}, {phase}: {made} revision(s) made, not 1")
                    floor = largest if case.key == "swiftreg" else largest // 2  # xorbs are LZ4-compressed
                    if phase == "cold" and received < floor:
                        problems.append(f"{case.label}, cold: {received} bytes received (the weights are {largest})")
                    if case.key == "xet" and phase == "one tensor" and received >= SENT_TARGET * total:
                        problems.append(f"{case.label}, one tensor: {received} bytes received, not under "
                                        f"{SENT_TARGET:.0%} of {total}")
            shutil.rmtree(home, ignore_errors=True)
        say(f"  repeat {rep + 1}/{args.repeats} done (load average {os.getloadavg()[0]:.2f})")

    load_after = os.getloadavg()
    say()
    say(f"{args.repeats} repeat(s), {mib:.1f} MiB adapter over 127.0.0.1, each push a whole process (seconds: "
        f"median, min..max; bytes: what the server received, median)")
    say(f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)} (numbers under load are not figures to quote)")
    say(f"{'case':<40} {'phase':<11} {'median s':>9} {'min..max':>15} {'MiB recv':>9} {'% of adapter':>13}")
    for case in cases:
        for phase in phases:
            got = whole[case.key][phase]
            recv = statistics.median(sent[case.key][phase])
            say(f"{case.label:<40} {phase:<11} {statistics.median(got):>9.3f} {min(got):>7.3f}..{max(got):<7.3f} "
                f"{recv / 2**20:>9.2f} {recv / total:>12.2%}")
    say()
    x, s = whole["xet"], whole["swiftreg"]
    cold = [a / b for a, b in zip(x["cold"], s["cold"])]
    ratio = statistics.median(cold)
    say(f"Xet cold / swiftreg push cold ({', '.join(f'{r:.2f}' for r in cold)} per repeat): median {ratio:.2f}x; "
        f"target <= {COLD_TARGET}x: {'MET' if ratio <= COLD_TARGET else 'MISSED'}")
    speedup = [a / b for a, b in zip(x["cold"], x["one tensor"])]
    ratio = statistics.median(speedup)
    say(f"Xet one-tensor push vs Xet cold ({', '.join(f'{r:.1f}' for r in speedup)} per repeat): median {ratio:.1f}x "
        f"faster; target >= {CHANGE_TARGET}x: {'MET' if ratio >= CHANGE_TARGET else 'MISSED'}")
    vs_cli = statistics.median([a / b for a, b in zip(s["cold"], x["one tensor"])])
    say(f"Xet one-tensor push vs swiftreg push cold: {vs_cli:.1f}x faster; swiftreg push one tensor: "
        f"{statistics.median(s['one tensor']):.3f} s")
    for problem in problems:
        say(f"CHECK FAILED: {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
