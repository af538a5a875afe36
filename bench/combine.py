"""Benchmark: SVD combination of two LoRA adapters, swiftreg's combine() vs PEFT's add_weighted_adapter.

What it measures
    Interleaved rounds (PEFT's side takes about a minute a round) of
      1. swiftreg  registry.tensors.combine.combine([a, b], weights, "svd", rank=K)
                   QR of the stacked thin factors + SVD of the small R x R core per module
      2. peft      PeftModel.add_weighted_adapter(["a", "b"], weights, "c", combination_type="svd", svd_rank=K)
                   dense delta + full torch.linalg.svd per module
    on the same two adapters, and the relative reconstruction error of each result against a float64
    reference of the intended delta  D = sum_i w_i s_i B_i A_i  (relative Frobenius error over all
    modules: sqrt(sum_m ||s B A - D_m||^2 / sum_m ||D_m||^2), with the scaling each result is loaded
    with). Both run on the CPU by default (same hardware; --device cuda moves swiftreg's side only).

How it is timed (bench/timing.py)
    --runs rounds (default 5), each running swiftreg's library call, the whole `swiftreg combine` command
    (the two adapters pushed to a temporary registry; it loads them, combines and writes -o OUT) and PEFT's
    add_weighted_adapter once, in alternating order, `sync` before the command; median and min-max spread,
    with the load average. PEFT's side is its library call on a model already built (a whole PEFT process
    would add loading the base model, which dwarfs the combination); each round adds one more PEFT adapter.

Which rank
    K = the sum of the source ranks (32): then the rank-K truncation is exact, so each error figure
    is pure arithmetic and the two methods are compared on equal footing. Also printed: swiftreg at
    K = the largest source rank (16, PEFT's default), where the error is the truncation itself
    (about 0.3 for these two random adapters); --peft-at-max-rank runs PEFT there too (another
    minute).

Targets (judged on this run)
    swiftreg at least 100x faster than PEFT, and its relative error at most 1e-4 (K = sum of ranks).
    The exit code is 0 whether or not they are met (a benchmark, not a test); each line says MET / MISSED.

The model
    A Llama-architecture model built from a LlamaConfig with random init in float32 (nothing
    downloaded): hidden 2048, intermediate 5504, 4 layers, 16 heads (no GQA), vocabulary 1024 (not
    targeted). Two adapters made by peft itself, r=16 on q/k/v/o/gate/up/down_proj (lora_alpha 32 and
    16, so the scalings differ), all factors seeded random; swiftreg reads them from the folders peft
    saves (load_adapter, timed separately).

Run (from the repository root):
    .venv/bin/python bench/combine.py
    .venv/bin/python bench/combine.py --layers 1                    # quick smoke run
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing  # noqa: E402  (bench/timing.py)

from registry.tensors.adapter_tensors import load_adapter  # noqa: E402
from registry.tensors.combine import combine  # noqa: E402

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WEIGHTS = [0.6, 0.4]


def build(args: argparse.Namespace, folder: Path):
    """A PeftModel with adapters "a" and "b" (random factors), both saved under `folder`."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=128)
    base = LlamaForCausalLM(config).to(torch.float32).eval()
    model = get_peft_model(base, LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules=PROJECTIONS),
                           adapter_name="a")
    model.add_adapter("b", LoraConfig(r=args.r, lora_alpha=args.r, target_modules=PROJECTIONS))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param.shape[-1]))
    model.save_pretrained(folder, selected_adapters=["a", "b"])
    return model


def reference(sources, weights) -> dict[str, torch.Tensor]:
    """float64 intended delta per module."""
    out: dict[str, torch.Tensor] = {}
    for w, src in zip(weights, sources):
        for m, e in src.modules.items():
            d = (w * e.scaling) * (e.B.double() @ e.A.double())
            out[m] = out[m] + d if m in out else d
    return out


def relative_error(factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
                   ref: dict[str, torch.Tensor]) -> float:
    diff = total = 0.0
    for m, d in ref.items():
        B, A, s = factors[m]
        diff += float((s * (B.double() @ A.double()) - d).norm() ** 2)
        total += float(d.norm() ** 2)
    return math.sqrt(diff / total)


def ours(result) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    return {m: (e.B, e.A, e.scaling) for m, e in result.adapter.modules.items()}


def peft_factors(model, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    out = {}
    for m, layer in model.base_model.model.named_modules():
        if hasattr(layer, "lora_A") and name in layer.lora_A:
            out[m] = (layer.lora_B[name].weight.detach(), layer.lora_A[name].weight.detach(), layer.scaling[name])
    return out


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5504)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--runs", type=int, default=timing.MIN_RUNS, help="interleaved rounds (default 5)")
    parser.add_argument("--device", default="cpu", help="device of swiftreg's combine (PEFT's side stays on CPU)")
    parser.add_argument("--peft-at-max-rank", action="store_true",
                        help="also run PEFT at svd_rank = the largest source rank (one more minute)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import peft

    with tempfile.TemporaryDirectory(prefix="swiftreg-bench-combine-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        model = build(args, folder)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sources = [load_adapter(folder / "a"), load_adapter(folder / "b")]
        load_s = time.perf_counter() - t0
        total_r = 2 * args.r
        modules = len(sources[0].modules)
        shapes = sorted({(e.B.shape[0], e.A.shape[1]) for e in sources[0].modules.values()})
        print(f"model: Llama, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}; "
              f"two adapters r={args.r} on {', '.join(PROJECTIONS)} ({modules} modules, delta shapes {shapes}); "
              f"weights {WEIGHTS}; torch {torch.__version__}, peft {peft.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"(built in {build_s:.1f} s; load_adapter of both folders {load_s * 1e3:.1f} ms, not in the timings)")
        ref = reference(sources, WEIGHTS)

        combine(sources, WEIGHTS, "svd", rank=total_r, device=args.device)  # warm-up (kernels, allocator)
        ours_sum = combine(sources, WEIGHTS, "svd", rank=total_r, device=args.device)
        ours_max = combine(sources, WEIGHTS, "svd", rank=args.r, device=args.device)
        t0 = time.perf_counter()
        ours_max = combine(sources, WEIGHTS, "svd", rank=args.r, device=args.device)
        ours_max_s = time.perf_counter() - t0

        # The command as a user runs it: the two adapters pushed to a registry, `swiftreg combine ... -o OUT`.
        from registry import Registry

        home = folder / "home"
        reg = Registry(home=home)
        reg.push(folder / "a", "bench/a")
        reg.push(folder / "b", "bench/b")
        reg.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
        env["SWIFTREG_HOME"] = str(home)
        out = folder / "combined"
        command = [str(Path(sys.executable).with_name("swiftreg")), "combine", "bench/a", "bench/b",
                   "--weights", ",".join(str(w) for w in WEIGHTS), "--method", "svd", "--rank", str(total_r),
                   "--device", "cpu" if args.device == "cpu" else "auto", "-o", str(out)]
        names = iter(range(10**6))
        clear = lambda: shutil.rmtree(out, ignore_errors=True)  # noqa: E731
        cases = [
            timing.Case("swiftreg combine (library)",
                        lambda: combine(sources, WEIGHTS, "svd", rank=total_r, device=args.device), writes=False),
            timing.Case("swiftreg combine (whole command, load + write)", timing.process(command, env),
                        before=clear, after=clear),
            timing.Case("peft add_weighted_adapter (library)",
                        lambda: model.add_weighted_adapter(["a", "b"], WEIGHTS, f"c{next(names)}",
                                                           combination_type="svd", svd_rank=total_r),
                        writes=False),
        ]
        print(timing.load_average())
        results = timing.interleaved(cases, args.runs, progress=print)
        ours_s, cli_s, peft_s = (results.median(c.name) for c in cases)
        err_ours = relative_error(ours(ours_sum), ref)
        err_peft = relative_error(peft_factors(model, "c0"), ref)
        err_ours_max = relative_error(ours(ours_max), ref)
        peft_max = None
        if args.peft_at_max_rank:
            t0 = time.perf_counter()
            model.add_weighted_adapter(["a", "b"], WEIGHTS, "c16", combination_type="svd", svd_rank=args.r)
            peft_max = (time.perf_counter() - t0, relative_error(peft_factors(model, "c16"), ref))

    ratio = peft_s / ours_s
    print()
    print(f"svd_rank = sum of source ranks = {total_r} (truncation exact: errors are arithmetic only); "
          f"{args.runs} interleaved rounds, median (min-max); {timing.load_average()}")
    for case in cases:
        print(f"  {case.name:<48} {results.spread(case.name)}")
    print(f"  relative error: swiftreg {err_ours:.2e} (device {args.device}), peft {err_peft:.2e}")
    print(f"  ratio peft/swiftreg (library calls) {ratio:.0f}x; peft (library) / swiftreg (whole command) "
          f"{peft_s / cli_s:.1f}x")
    print(f"svd_rank = largest source rank = {args.r} (error is the truncation itself)")
    print(f"  swiftreg combine   {ours_max_s * 1e3:10.1f} ms   relative error {err_ours_max:.4f}")
    if peft_max:
        print(f"  peft add_weighted  {peft_max[0] * 1e3:10.1f} ms   relative error {peft_max[1]:.4f}")
    else:
        print("  peft add_weighted  (not run; --peft-at-max-rank; same truncation, same figure up to arithmetic)")
    print()
    print("  " + timing.verdict("peft add_weighted_adapter / swiftreg combine (library calls)", ratio, 100,
                                at_most=False))
    print(f"target: relative error <= 1e-4 .......... {err_ours:.2e} (peft: {err_peft:.2e})  "
          f"{verdict(err_ours <= 1e-4)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
