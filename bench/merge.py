"""Benchmark: merging a LoRA (or LoHa) adapter into a base checkpoint on disk, end to end, ours vs PEFT.

What it measures
    Each method runs in its own fresh process (start-up, imports, load, merge, save, exit):
      1. swiftreg  `merge_checkpoint(base, load_adapter(adapter), out, device="cpu")`: streams the base
                   shard by shard and tensor by tensor (registry/tensors/merge.py)
      2. PEFT      `AutoModelForCausalLM.from_pretrained(base, dtype=bfloat16)` +
                   `PeftModel.from_pretrained(model, adapter)` + `merge_and_unload()` +
                   `save_pretrained(out, max_shard_size=<same as the base>)`
      3. baseline  a process that only imports torch and safetensors (the interpreter + torch floor)
    For each: wall time of the whole process, the time after imports (load + merge + save), and peak
    RSS, read per process from os.wait4's rusage (ru_maxrss) and cross-checked with the child's own
    /proc/self/status VmHWM. The page cache is warm (the base and adapter are read once first); every
    run is preceded, outside the timer, by `sync`, a 2 s pause and `sync` again, so no run pays for
    another's dirty pages or deletions. Runs are interleaved round-robin; medians are judged, best-of
    printed beside them, and the load average is printed since other processes add noise.

Targets (exit code 0 either way; each line says MET / MISSED)
    * swiftreg at least 2x faster than PEFT (median whole-process wall time; the after-import ratio is
      printed too).
    * swiftreg's peak RSS no higher than one shard plus the adapter, counted as the increment above the
      baseline process (what `import torch, safetensors` alone costs), since no merge can run without
      an interpreter and torch; the absolute figures are printed as well.

Equal work
    The outputs of both methods are compared tensor by tensor (same keys, dtypes and values, bit for
    bit, or the max difference is printed), so the timings compare the same merge.

The base checkpoint
    A Llama architecture built from a config by transformers itself (hidden 2048, intermediate 5632,
    8 layers, 16 heads, no GQA, vocab 32000: 542 M parameters, 1.08 GB bf16), seeded weights,
    `save_pretrained(max_shard_size="200MB")` (6 shards); an adapter made by peft itself (r=16,
    lora_alpha=32 on q/k/v/o/gate/up/down_proj, weights randomised so B != 0). Both are built once in
    a subprocess and cached under the work dir (default $TMPDIR/swiftreg-bench/merge-<params>).

The LoHa row (`--tuner loha`)
    The same base with a LoHa adapter made by peft (r=16, alpha 32, the same seven projections). swiftreg
    has no LoHa math of its own: peft's LoHa layer merges each module while the base streams shard by
    shard (registry/tensors/peft_layers.py). Targets: at least as fast as PEFT (whole process, median),
    and peak RSS above the baseline within the LoRA budget, largest shard + adapter + 25%.

Run (from the repository root, main venv):
    .venv/bin/python bench/merge.py                     # ~2 minutes on 2 cores (+1 the first time)
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


CHILDREN = {"generate": child_generate, "ours": child_ours, "peft": child_peft, "baseline": child_baseline,
            "compare": child_compare}


# --------------------------------------------------------------------------- parent

def run_child(kind: str, args: argparse.Namespace, **paths: str) -> dict:
    """Run one child process; wall time and ru_maxrss (from wait4, this child only) added to its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--hidden", str(args.hidden), "--intermediate", str(args.intermediate),
           "--layers", str(args.layers), "--vocab", str(args.vocab), "--r", str(args.r),
           "--shard-size", args.shard_size, "--tuner", args.tuner]
    for name, value in paths.items():
        cmd += [f"--{name}", value]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("BENCH-RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"child {kind} failed (exit {proc.returncode}):\n{err[-3000:]}")
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

    scratch = Path(tempfile.mkdtemp(prefix="merge-bench-", dir=args.workdir))
    results: dict[str, list[dict]] = {"ours": [], "peft": [], "baseline": []}
    try:
        for i in range(args.runs):
            for kind in ("ours", "peft", "baseline"):
                out = scratch / f"{kind}-{i}"
                settle()
                result = run_child(kind, args, base=str(base), adapter=str(adapter), out=str(out))
                results[kind].append(result)
                results[kind][-1]["load"] = os.getloadavg()[0]
                if i < args.runs - 1:
                    shutil.rmtree(out, ignore_errors=True)
        last = args.runs - 1
        same = run_child("compare", args, base=str(scratch / f"ours-{last}"),
                         out=str(scratch / f"peft-{last}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def med(kind: str, field: str) -> float:
        return statistics.median(r[field] for r in results[kind])

    def best(kind: str, field: str) -> float:
        return min(r[field] for r in results[kind])

    def peak(kind: str) -> int:
        return max(max(r["ru_maxrss"], r["vm_hwm"]) for r in results[kind])

    loads = [r["load"] for rs in results.values() for r in rs]
    print(f"\n{args.runs} interleaved runs per method; 1-minute load average during the runs "
          f"{min(loads):.2f} to {max(loads):.2f} (other processes on this {os.cpu_count()}-CPU machine add "
          "noise above ~1)")
    print(f"\n{'method':<10}{'wall median':>13}{'wall best':>11}{'after-import':>14}{'imports':>9}"
          f"{'peak RSS':>11}")
    for kind in ("ours", "peft", "baseline"):
        print(f"{kind:<10}{med(kind, 'wall'):>12.2f}s{best(kind, 'wall'):>10.2f}s{med(kind, 'work'):>13.2f}s"
              f"{med(kind, 'imports'):>8.2f}s{mb(peak(kind)):>11}")
    ratio = med("peft", "wall") / med("ours", "wall")
    work_ratio = med("peft", "work") / max(med("ours", "work"), 1e-9)
    floor = peak("baseline")
    ours_inc, peft_inc = peak("ours") - floor, peak("peft") - floor
    best_ratio = best("peft", "wall") / best("ours", "wall")
    print(f"\nspeed-up (whole process, median): {ratio:.2f}x   (best-of: {best_ratio:.2f}x; "
          f"load+merge+save after imports: {work_ratio:.2f}x)")
    print(f"peak RSS: ours {mb(peak('ours'))}, PEFT {mb(peak('peft'))}; baseline (import torch+safetensors) "
          f"{mb(floor)}; above baseline: ours {mb(ours_inc)}, PEFT {mb(peft_inc)}")
    print(f"largest shard + adapter{' + 25%' if rss_factor != 1.0 else ''}: {mb(largest)} + {mb(adapter_bytes)}"
          f" -> {mb(budget)}")
    equal = (not same["only_ours"] and not same["only_peft"] and not same["dtype_mismatch"]
             and same["differing"] == 0)
    print(f"outputs: {same['tensors']} common tensors; "
          + ("bit-identical" if equal else
             f"{same['differing']} differ (max abs diff {same['max_abs_diff']:.3g}), "
             f"only ours {same['only_ours']}, only PEFT {same['only_peft']}, "
             f"dtype mismatches {same['dtype_mismatch'][:5]}"))
    met = "MET" if ratio >= speed_target else "MISSED"
    print(f"\ntarget speed >= {speed_target:.0f}x PEFT: {met} ({ratio:.2f}x)")
    print(f"target peak RSS above baseline <= the budget above: "
          f"{'MET' if ours_inc <= budget else 'MISSED'} ({mb(ours_inc)} <= {mb(budget)}); "
          f"absolute: {'MET' if peak('ours') <= budget else 'MISSED'} ({mb(peak('ours'))})")
    print(f"equal outputs: {'MET' if equal else 'MISSED'}")


if __name__ == "__main__":
    main()
