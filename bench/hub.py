"""Benchmark: the hub clients downloading a 7B-scale adapter from `swiftreg serve`, vs swiftreg's own download.

What it measures
    One 7B-scale PEFT LoRA adapter (about 306 MiB, built as bench/transfer.py builds it) pushed once to a
    `swiftreg serve` on 127.0.0.1 (SQLite, local blob store). Then the download sides of bench/transfer.py
    (`download_cases`), each into an empty cache or folder, interleaved in alternating order with a `sync` before
    each, for --rounds rounds (at least 5) on the one server:
      sha256              hashing the adapter's files alone (page cache): the floor of any verified download
      curl                `curl -o FILE` of the weights blob: the server's own speed, written to a file
      resolve             RemoteRegistry.resolve (the library), and `swiftreg pull REPO` (the whole process)
      pull                RemoteRegistry.pull(..., output) and `swiftreg pull REPO -o OUT` (the whole process)
      hf                  huggingface_hub.snapshot_download(repo, revision="v1", endpoint=<our server>)
      ms                  modelscope.snapshot_download(repo, revision="v1", endpoint=<our server>)
    The hub clients are imported before any timing (`import modelscope` alone costs seconds). Every output is
    checked to hold exactly the source's files and bytes (the clients' own dot-files aside).

Targets (README "Benchmarks", issue 18)
    swiftreg's cold resolve at least 2x faster than huggingface_hub and than modelscope from the same server,
    and within 1.3x of the slower of sha256 alone and curl to a file. Exit code 0 either way.

Run (from the repository root); on a shared machine the figures are as loaded as the machine, which is printed
    .venv/bin/python bench/hub.py
    .venv/bin/python bench/hub.py --layers 2 --rounds 5      # quick smoke run
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import timing  # noqa: E402
from timing import say  # noqa: E402  (bench/timing.py)

REPO = "team/sql-lora-7b"
TAG = "v1"



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=timing.MIN_RUNS, help="interleaved rounds (default 5)")
    parser.add_argument("--layers", type=int, default=32,
                        help="decoder layers of the 7B-scale adapter (default 32: about 306 MiB; 2 for a smoke run)")
    args = parser.parse_args()
    if args.rounds < 1 or args.layers < 1:
        parser.error("--rounds and --layers must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="swiftreg-bench-hub-"))
    # The clients read these at import: real downloads, their own homes, no telemetry or bars.
    os.environ.update(HF_HUB_OFFLINE="0", HF_HOME=str(work / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_XET="1",
                      MODELSCOPE_CACHE=str(work / "ms-home"), MODELSCOPE_LOG_LEVEL="30", TQDM_DISABLE="1")
    for name in [k for k in os.environ if k.startswith("SWIFTREG_")]:
        os.environ.pop(name)
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    import transfer

    resolve_bench = transfer.load_bench("resolve")
    src = resolve_bench.build_large_source(work, args.layers)
    expected = transfer.folder_digests(src)
    mib = sum(size for size, _ in expected.values()) / 2**20
    weights = max(expected, key=lambda rel: expected[rel][0])
    say(f"adapter {REPO}: {len(expected)} files, {mib:.2f} MiB")

    import huggingface_hub
    import modelscope
    from huggingface_hub import snapshot_download as hf_snapshot
    from modelscope import snapshot_download as ms_snapshot

    from registry.client import RemoteRegistry

    def check(folder: Path, what: str) -> None:
        got = {rel: v for rel, v in transfer.folder_digests(folder).items()
               if not rel.startswith(".") and "/." not in rel}  # the clients' own metadata
        if got != expected:
            raise SystemExit(f"error: {what} gave {sorted(got)} with other bytes than the source {sorted(expected)}")

    say(timing.load_average())
    with transfer.serve(work / "server") as server:
        RemoteRegistry(server.url, server.write, home=work / "pusher").push(src, REPO, tag=TAG)
        base = work / "rounds"
        base.mkdir()
        cases = transfer.download_cases(server, base, src, weights, expected, check, shutil.which("curl"),
                                        hf_snapshot, ms_snapshot)
        results = timing.interleaved(cases, args.rounds, progress=say)

    labels = {"sha256": "sha256 of the adapter's files alone", "curl": "curl -o FILE of the weights blob",
              "resolve": "swiftreg resolve (library)", "resolve_cli": "swiftreg pull REPO (whole process)",
              "pull": "swiftreg pull -o (library)", "pull_cli": "swiftreg pull -o (whole process)",
              "hf": f"huggingface_hub {huggingface_hub.__version__} snapshot_download",
              "ms": f"modelscope {modelscope.__version__} snapshot_download"}
    say()
    say(f"{args.rounds} interleaved round(s), {mib:.1f} MiB over 127.0.0.1, empty caches; {timing.load_average()}")
    say(f"{'operation':<52} {'median s (min-max)':>26} {'MiB/s':>7}")
    for case in cases:
        say(f"{labels[case.name]:<52} {results.spread(case.name):>26} {mib / results.median(case.name):>7.0f}")
    say()
    floor = max(results.median("sha256"), results.median("curl") if "curl" in results else 0.0)
    resolve = results.median("resolve")
    say(timing.verdict("cold resolve / the slower of sha256 alone and curl -o FILE", resolve / floor,
                       transfer.RESOLVE_VS_FLOOR))
    for key in ("hf", "ms"):
        say(timing.verdict(f"{labels[key]} / swiftreg resolve", results.median(key) / resolve,
                           transfer.VS_HUB_CLIENTS, at_most=False)
            + f"; / swiftreg pull -o: {results.median(key) / results.median('pull'):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
