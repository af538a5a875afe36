"""Benchmark: the hub clients downloading a 7B-scale adapter from `swiftreg serve`, vs `swiftreg pull`.

What it measures
    One 7B-scale PEFT LoRA adapter (about 306 MiB, built as bench/transfer.py builds it) pushed once to a
    `swiftreg serve` on 127.0.0.1 (SQLite, local blob store). Then, per repeat, into empty caches and
    interleaved so machine noise hits every side alike:
      swiftreg pull -o          RemoteRegistry.pull over /api/v1: manifest, every blob downloaded, sha256
                                verified, fsynced, snapshot, copied to the output folder
      swiftreg resolve          the same without the copy to an output folder (what the hub clients'
                                snapshot_download into their cache compares with most closely)
      modelscope                modelscope.snapshot_download(repo, revision="v1", endpoint=<our server>)
                                through the ModelScope read API (the new client, what ms-swift uses); it
                                checks every file's sha256 and size against the listing
      huggingface_hub           huggingface_hub.snapshot_download(repo, revision="v1", endpoint=<our server>)
                                through the Hugging Face routes (what transformers / PEFT / vLLM use)
    Each output folder is checked to hold exactly the source's files and bytes (equal work). The table
    gives median and best seconds, MiB/s, and each hub client's time as a ratio of `swiftreg pull`'s.
    Client imports are done before timing (`import modelscope` alone costs seconds).

Run (from the repository root)
    .venv/bin/python bench/hub.py
    .venv/bin/python bench/hub.py --layers 2 --repeats 1      # quick smoke run
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPO = "team/sql-lora-7b"
TAG = "v1"


def say(msg: str = "") -> None:
    print(msg, flush=True)


def load_bench(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_swiftreg_bench_{name}", ROOT / "bench" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"bench/{name}.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every case (default 3)")
    parser.add_argument("--layers", type=int, default=32,
                        help="decoder layers of the 7B-scale adapter (default 32: about 306 MiB; 2 for a smoke run)")
    args = parser.parse_args()
    if args.repeats < 1 or args.layers < 1:
        parser.error("--repeats and --layers must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="swiftreg-bench-hub-"))
    # The clients read these at import: real downloads, their own homes, no telemetry or bars.
    os.environ.update(HF_HUB_OFFLINE="0", HF_HOME=str(work / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
                      HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_XET="1",
                      MODELSCOPE_CACHE=str(work / "ms-home"), MODELSCOPE_LOG_LEVEL="30")
    for name in [k for k in os.environ if k.startswith("SWIFTREG_")]:
        os.environ.pop(name)
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    transfer = load_bench("transfer")
    resolve_bench = transfer.load_bench("resolve")
    gen = resolve_bench.load_convert_bench()
    tiny, src = work / "src" / "tiny-peft", work / "src" / "large-peft"
    resolve_bench.build_tiny_peft(tiny)
    resolve_bench.build_large_peft(src, tiny, args.layers, gen)
    resolve_bench.check_large_against_tiny(src, tiny, args.layers, gen)
    expected = transfer.folder_digests(src)
    mib = sum(size for size, _ in expected.values()) / 2**20
    say(f"adapter {REPO}: {len(expected)} files, {mib:.2f} MiB")

    from huggingface_hub import snapshot_download as hf_snapshot
    from modelscope import snapshot_download as ms_snapshot

    from registry.client import RemoteRegistry

    def check(folder: Path, what: str) -> None:
        got = {rel: v for rel, v in transfer.folder_digests(folder).items()
               if not rel.startswith(".") and "/." not in rel}  # the clients' own metadata
        if got != expected:
            raise SystemExit(f"error: {what} gave {sorted(got)} with other bytes than the source {sorted(expected)}")

    times: dict[str, list[float]] = {"pull": [], "resolve": [], "ms": [], "hf": []}
    with transfer.serve(work / "server") as server:
        RemoteRegistry(server.url, server.write, home=work / "pusher").push(src, REPO, tag=TAG)
        for rep in range(args.repeats):
            base = work / f"rep{rep}"
            base.mkdir()
            puller = RemoteRegistry(server.url, server.read, home=base / "puller")
            t, out = transfer.timed(lambda: puller.pull(f"{REPO}@{TAG}", base / "pulled"))
            check(out, "swiftreg pull -o")
            times["pull"].append(t)
            resolver = RemoteRegistry(server.url, server.read, home=base / "resolver")
            t, out = transfer.timed(lambda: resolver.resolve(f"{REPO}@{TAG}"))
            check(out, "swiftreg resolve")
            times["resolve"].append(t)
            t, got = transfer.timed(lambda: ms_snapshot(REPO, revision=TAG, endpoint=server.url, token=server.read,
                                                        cache_dir=str(base / "ms-cache")))
            check(Path(got), "modelscope.snapshot_download")
            times["ms"].append(t)
            t, got = transfer.timed(lambda: hf_snapshot(REPO, revision=TAG, endpoint=server.url, token=server.read,
                                                        cache_dir=str(base / "hf-cache")))
            check(Path(got), "huggingface_hub.snapshot_download")
            times["hf"].append(t)
            shutil.rmtree(base, ignore_errors=True)
            say(f"  repeat {rep + 1}/{args.repeats} done")

    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    import huggingface_hub
    import modelscope

    rows = [("pull", "swiftreg pull -o (API v1)"),
            ("resolve", "swiftreg resolve into its cache, no -o copy (API v1)"),
            ("ms", f"modelscope {modelscope.__version__} snapshot_download (ModelScope API)"),
            ("hf", f"huggingface_hub {huggingface_hub.__version__} snapshot_download (HF routes)")]
    say()
    say(f"{args.repeats} repeat(s), {mib:.1f} MiB adapter over 127.0.0.1, empty caches (median, best)")
    say(f"{'operation':<62} {'median s':>9} {'best s':>8} {'MiB/s':>7} {'/ pull':>7}")
    for key, label in rows:
        say(f"{label:<62} {med[key]:>9.3f} {best[key]:>8.3f} {mib / med[key]:>7.0f} {med[key] / med['pull']:>6.2f}x")
    say()
    say(f"modelscope / swiftreg pull: {med['ms'] / med['pull']:.2f}x the time; "
        f"huggingface_hub / swiftreg pull: {med['hf'] / med['pull']:.2f}x the time; "
        f"modelscope / swiftreg resolve: {med['ms'] / med['resolve']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
