"""What the NaN/Inf scan of `validate` and `push` costs next to the hashing a push does anyway.

On the 306 MiB bf16 adapter of bench/convert.py (Llama-7B shapes, r=64, seven projections, 32 layers),
written once to a scratch folder and read from the page cache, medians of 3 runs:

    sha256        hashlib.file_digest of the file: what a push costs at least (the manifest hashes each file)
    scan numpy    converters.finite.scan_safetensors with numpy (every environment with the ml extra)
    scan ints     the same without numpy (a core-only install: Python integers as bit vectors)

    python bench/nonfinite.py [--scratch DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.convert import make_tensor, tensor_specs, write_safetensors_streaming  # noqa: E402
from converters import finite  # noqa: E402
from converters.safetensors_io import read_header  # noqa: E402


def timed(run: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, help="Where the 306 MiB file is written (default: a temp folder).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        path = Path(tmp) / "adapter_model.safetensors"
        write_safetensors_streaming(path, tensor_specs(32, 4096, 11008, 64), make_tensor, {"format": "pt"})
        header = read_header(path)
        size = path.stat().st_size

        def sha256() -> None:
            with open(path, "rb") as f:
                hashlib.file_digest(f, "sha256")

        sha256()  # into the page cache
        figures = {"sha256": timed(sha256),
                   "scan numpy": timed(lambda: finite.scan_safetensors(header, use_numpy=True)),
                   "scan ints": timed(lambda: finite.scan_safetensors(header, use_numpy=False))}
    print(f"{size / 2**20:.0f} MiB, {len(header.tensors)} tensors, medians of 3")
    for name, seconds in figures.items():
        print(f"  {name:<11} {seconds:6.3f} s  {size / seconds / 2**20:7.0f} MiB/s  "
              f"{seconds / figures['sha256']:5.2f}x sha256")


if __name__ == "__main__":
    main()
