"""Benchmark: `swiftreg merge` as users run it (the whole command, check included) against PEFT as users run it.

What it measures
    Every case is a fresh process (start-up, imports, load, merge, check, write, exit), timed by the parent
    from fork to exit, peak RSS from os.wait4's rusage of that process (ru_maxrss):
      1. cli       `swiftreg merge ADAPTER --base BASE -o OUT --device cpu`: the default command. Streams the
                   base shard by shard, checks every merged LoRA tensor against base + delta within its
                   storage dtype's rounding (fused into the pass, registry/tensors/tensor_check.py), runs the
                   output check when some changed tensor is outside that rule (LoHa here: always), and renames
                   the checked result into place (no copy).
      2. peft      a small script: `AutoModelForCausalLM.from_pretrained(base, dtype=bfloat16)`,
                   `PeftModel.from_pretrained`, `merge_and_unload()`, `save_pretrained(out, max_shard_size=<the
                   base's>)`; no check at all.
      3. cli-full  the same command with `--check-outputs full` (the merged model against PEFT's own merge on a
                   probe batch as well): what the output check costs. An extra row, not the target.
      4. library   `merge_checkpoint(base, load_adapter(adapter), out, device="cpu")` in a small script (the
                   per-tensor check included): an extra row.
      5. baseline  `import torch, safetensors` only: the interpreter + torch floor.
    One untimed warm-up round first (page cache, the registry's home). Then each round runs every case once,
    in alternating order (forward on even rounds, reversed on odd ones), with `sync`, a 2 s pause and `sync`
    before every case (outside the timer), so no case pays for another's dirty pages or deletions. Medians are
    judged, min-max spread printed beside them, and the 1-minute load average before each case.

Targets (exit code 0 either way; each line says MET / MISSED)
    * the default command at least 2x faster than PEFT (median whole-process wall time), its check passing.
    * its peak RSS above the baseline process within: largest shard + adapter (the streamed merge) + what the
      per-tensor check needs (one float32 copy of the largest merged tensor, the reference delta).

Equal work
    The outputs of the command and PEFT are compared tensor by tensor (same keys, dtypes and values, bit for bit,
    or the max difference is printed), so the timings compare the same merge.

The base checkpoint
    A Llama architecture built from a config by transformers itself (hidden 2048, intermediate 5632,
    8 layers, 16 heads, no GQA, vocab 32000: 542 M parameters, 1.08 GB bf16), seeded weights,
    `save_pretrained(max_shard_size="200MB")` (6 shards); an adapter made by peft itself (r=16,
    lora_alpha=32 on q/k/v/o/gate/up/down_proj, weights randomised so B != 0). Both are built once in
    a subprocess and cached under the work dir (default $TMPDIR/swiftreg-bench/merge-<params>).

The LoHa row (`--tuner loha`)
    The same base with a LoHa adapter made by peft (r=16, alpha 32, the same seven projections), merged through
    peft's own LoHa layers while the base streams (registry/tensors/peft_layers.py). The default command runs the
    output check there (LoHa is outside the per-tensor rule). Target: at least as fast as PEFT (whole process,
    median); RSS budget: largest shard + adapter + 25%, plus one model in the storage dtype for the output check.

Run (from the repository root, main venv; on a quiet machine: nothing else running, load average < 0.5):
    .venv/bin/python bench/merge.py                     # ~4 minutes on 2 cores (+1 the first time)
    .venv/bin/python bench/merge.py --tuner loha        # the LoHa row
    .venv/bin/python bench/merge.py --layers 2 --runs 1 # quick smoke run
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SPEEDUP_TARGET = 2.0
GENERATOR_VERSION = 1
#: (speed-up target over PEFT, RSS budget factor over largest shard + adapter) per tuner
TUNER_TARGETS = {"lora": (SPEEDUP_TARGET, 1.0), "loha": (1.0, 1.25)}


# --------------------------------------------------------------------------- children

def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _emit(result: dict) -> None:
    result["vm_hwm"] = _vm_hwm()
    print("BENCH-RESULT " + json.dumps(result), flush=True)


def child_generate(args: argparse.Namespace) -> None:
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    sys.path.insert(0, str(ROOT))
    from tests.helpers.models import randomise_adapter_weights

    base, adapter = Path(args.base), Path(args.adapter)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=16, num_key_value_heads=16,
                         max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(base, max_shard_size=args.shard_size)
    if args.tuner == "loha":
        config = peft.LoHaConfig(r=args.r, alpha=2 * args.r, target_modules=TARGETS)
    else:
        config = peft.LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules=TARGETS)
    peft_model = peft.get_peft_model(model, config)
    randomise_adapter_weights(peft_model, 99)
    peft_model.save_pretrained(adapter)
    _emit({})


def child_ours(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    from registry.tensors.adapter_tensors import load_adapter
    from registry.tensors.merge import merge_checkpoint

    t1 = time.perf_counter()
    report = merge_checkpoint(args.base, load_adapter(args.adapter, base_dir=args.base), args.out, device="cpu")
    t2 = time.perf_counter()
    _emit({"imports": t1 - t0, "work": t2 - t1, "modules": report.modules_merged})


def child_peft(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(model, args.adapter)
    model = model.merge_and_unload()
    model.save_pretrained(args.out, max_shard_size=args.shard_size)
    t2 = time.perf_counter()
    _emit({"imports": t1 - t0, "work": t2 - t1})


def child_baseline(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    import safetensors  # noqa: F401
    import torch  # noqa: F401

    _emit({"imports": time.perf_counter() - t0, "work": 0.0})


def child_compare(args: argparse.Namespace) -> None:
    """Tensor by tensor, one at a time: same keys, dtypes, values."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(folder.glob("*.safetensors")):
            with safe_open(str(path), "pt") as f:
                found.update({k: path for k in f.keys()})
        return found

    a, b = index(Path(args.base)), index(Path(args.out))
    result = {"only_ours": sorted(set(a) - set(b))[:5], "only_peft": sorted(set(b) - set(a))[:5],
              "tensors": 0, "differing": 0, "max_abs_diff": 0.0, "dtype_mismatch": []}
    for key in sorted(set(a) & set(b)):
        with safe_open(str(a[key]), "pt") as fa, safe_open(str(b[key]), "pt") as fb:
            x, y = fa.get_tensor(key), fb.get_tensor(key)
        result["tensors"] += 1
        if x.dtype != y.dtype:
            result["dtype_mismatch"].append(key)
        if not torch.equal(x, y):
            result["differing"] += 1
            result["max_abs_diff"] = max(result["max_abs_diff"], float((x.float() - y.float()).abs().max()))
    _emit(result)


CHILDREN = {"generate": child_generate, "library": child_ours, "peft": child_peft, "baseline": child_baseline,
            "compare": child_compare}


# --------------------------------------------------------------------------- parent

def _command(kind: str, args: argparse.Namespace, **paths: str) -> list[str]:
    if kind in ("cli", "cli-full"):
        swiftreg = str(Path(sys.executable).with_name("swiftreg"))
        cmd = [swiftreg, "merge", paths["adapter"], "--base", paths["base"], "-o", paths["out"], "--device", "cpu"]
        return cmd + (["--check-outputs", "full"] if kind == "cli-full" else [])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--hidden", str(args.hidden), "--intermediate", str(args.intermediate),
           "--layers", str(args.layers), "--vocab", str(args.vocab), "--r", str(args.r),
           "--shard-size", args.shard_size, "--tuner", args.tuner]
    for name, value in paths.items():
        cmd += [f"--{name}", value]
    return cmd


def run_child(kind: str, args: argparse.Namespace, **paths: str) -> dict:
    """Run one process; wall time and ru_maxrss (from wait4: this process and nothing else) added to its result.
    Its output goes to files, so a chatty process never blocks on a full pipe while the parent waits."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "SWIFTREG_HOME": str(Path(args.workdir) / "home")}
    env.pop("SWIFTREG_DATABASE_URL", None)
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        start = time.perf_counter()
        proc = subprocess.Popen(_command(kind, args, **paths), stdout=out_f, stderr=err_f, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read().decode(errors="replace"), err_f.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"{kind} failed (exit {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
    if kind in ("cli", "cli-full"):
        result: dict = {"table": [line for line in out.splitlines() if line.strip()]}
    else:
        lines = [line for line in out.splitlines() if line.startswith("BENCH-RESULT ")]
        if not lines:
            sys.exit(f"child {kind} printed no result:\n{err[-3000:]}")
        result = json.loads(lines[-1].removeprefix("BENCH-RESULT "))
    result["wall"] = wall
    result["ru_maxrss"] = usage.ru_maxrss * 1024
    return result


def ensure_inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    params = dict(v=GENERATOR_VERSION, hidden=args.hidden, intermediate=args.intermediate, layers=args.layers,
                  vocab=args.vocab, r=args.r, shard=args.shard_size)
    if args.tuner != "lora":  # the LoRA inputs keep their cache tag
        params["tuner"] = args.tuner
    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(args.workdir) / f"merge-{tag}"
    base, adapter = folder / "base", folder / "adapter"
    if not (folder / "DONE").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"building base and adapter in {folder} (once) ...", flush=True)
        run_child("generate", args, base=str(base), adapter=str(adapter))
        (folder / "DONE").write_text(json.dumps(params))
    return base, adapter


def warm_read(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    while f.read(64 << 20):
                        pass


def settle() -> None:
    """Before every timed run, outside the timer: flush dirty pages and let the filesystem finish the
    previous run's deletions (this root filesystem is ext4 mounted with `discard`, where a deleted 1 GB
    output otherwise slows the next run's writes by seconds)."""
    os.sync()
    time.sleep(2.0)
    os.sync()


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--shard-size", default="200MB")
    parser.add_argument("--tuner", choices=sorted(TUNER_TARGETS), default="lora")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "swiftreg-bench"))
    parser.add_argument("--base")
    parser.add_argument("--adapter")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        CHILDREN[args.child](args)
        return

    base, adapter = ensure_inputs(args)
    shards = sorted(base.glob("*.safetensors"))
    largest = max(p.stat().st_size for p in shards)
    adapter_bytes = sum(p.stat().st_size for p in adapter.glob("*.safetensors"))
    base_bytes = sum(p.stat().st_size for p in shards)
    speed_target, rss_factor = TUNER_TARGETS[args.tuner]
    budget = int((largest + adapter_bytes) * rss_factor)
    print(f"tuner {args.tuner.upper()}; base: {len(shards)} shards, {mb(base_bytes)} (largest {mb(largest)}); "
          f"adapter {mb(adapter_bytes)}; "
          f"hidden {args.hidden}, intermediate {args.intermediate}, {args.layers} layers, r={args.r}; "
          f"{os.cpu_count()} CPUs")
    warm_read(base, adapter)

    cases = ["cli", "peft", "cli-full", "library", "baseline"]
    scratch = Path(tempfile.mkdtemp(prefix="merge-bench-", dir=args.workdir))
    results: dict[str, list[dict]] = {kind: [] for kind in cases}

    def one(kind: str, tag: str, keep: bool = False) -> dict:
        out = scratch / f"{kind}-{tag}"
        settle()
        load = os.getloadavg()[0]
        result = run_child(kind, args, base=str(base), adapter=str(adapter), out=str(out))
        result["load"] = load
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
        return result

    try:
        print("warm-up round (untimed) ...", flush=True)
        for kind in cases:
            one(kind, "warm")
        for i in range(args.runs):
            order = cases if i % 2 == 0 else cases[::-1]
            for kind in order:
                results[kind].append(one(kind, str(i), keep=i == args.runs - 1 and kind in ("cli", "peft")))
            print(f"round {i + 1}/{args.runs}: " + ", ".join(f"{k} {results[k][-1]['wall']:.2f}s" for k in cases),
                  flush=True)
        last = args.runs - 1
        same = run_child("compare", args, base=str(scratch / f"cli-{last}"), out=str(scratch / f"peft-{last}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def walls(kind: str) -> list[float]:
        return [r["wall"] for r in results[kind]]

    def med(kind: str) -> float:
        return statistics.median(walls(kind))

    def peak(kind: str) -> int:
        return max(r["ru_maxrss"] for r in results[kind])

    loads = [r["load"] for rs in results.values() for r in rs]
    print(f"\n{args.runs} rounds, every case once per round, order alternating; 1-minute load average before each "
          f"case {min(loads):.2f} to {max(loads):.2f} on this {os.cpu_count()}-CPU machine (above ~0.5 the figures "
          "carry other processes' noise; rerun on a quiet machine)")
    print(f"\n{'case':<10}{'wall median':>13}{'spread (min-max)':>20}{'peak RSS':>12}")
    for kind in cases:
        w = walls(kind)
        print(f"{kind:<10}{med(kind):>12.2f}s{min(w):>11.2f}-{max(w):.2f}s{mb(peak(kind)):>12}")
    ratio = med("peft") / med("cli")
    floor = peak("baseline")
    cli_inc = peak("cli") - floor
    largest_merged = max(args.hidden * args.intermediate, args.hidden * args.hidden)
    check_bytes = 4 * largest_merged if args.tuner == "lora" else base_bytes + 2 * adapter_bytes
    budget_total = budget + check_bytes
    print(f"\nspeed-up of the default command over PEFT (whole process, median): {ratio:.2f}x  (library call: "
          f"{med('peft') / med('library'):.2f}x; with --check-outputs full: {med('peft') / med('cli-full'):.2f}x)")
    print("the command's check: " + " | ".join(results["cli"][-1]["table"][-3:]))
    print(f"peak RSS above the baseline (import torch+safetensors, {mb(floor)}): cli {mb(cli_inc)}, "
          f"PEFT {mb(peak('peft') - floor)}, cli-full {mb(peak('cli-full') - floor)}, "
          f"library {mb(peak('library') - floor)}")
    what = "one float32 copy of the largest merged tensor" if args.tuner == "lora" else \
        "the output check: one model in the storage dtype + the adapter in float32"
    print(f"budget: largest shard + adapter{' + 25%' if rss_factor != 1.0 else ''} {mb(budget)} + {what} "
          f"{mb(check_bytes)} -> {mb(budget_total)}")
    equal = (not same["only_ours"] and not same["only_peft"] and not same["dtype_mismatch"]
             and same["differing"] == 0)
    print(f"outputs (command vs PEFT): {same['tensors']} common tensors; "
          + ("bit-identical" if equal else
             f"{same['differing']} differ (max abs diff {same['max_abs_diff']:.3g}), "
             f"only ours {same['only_ours']}, only PEFT {same['only_peft']}, "
             f"dtype mismatches {same['dtype_mismatch'][:5]}"))
    met = "MET" if ratio >= speed_target else "MISSED"
    print(f"\ntarget: the default command >= {speed_target:.0f}x PEFT, check included: {met} ({ratio:.2f}x)")
    print(f"target: its peak RSS above baseline <= the budget: {'MET' if cli_inc <= budget_total else 'MISSED'} "
          f"({mb(cli_inc)} <= {mb(budget_total)})")
    print(f"equal outputs: {'MET' if equal else 'MISSED'}")


if __name__ == "__main__":
    main()
