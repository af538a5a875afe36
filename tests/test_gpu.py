"""The `gpu` tier (issue 19, item 2): merge, unmerge, combination and the equivalence check on a CUDA device.

Deselected without CUDA by tests/conftest.py (a CI machine has no GPU; `scripts/gpu-check` runs this tier on
one). `SWIFTREG_GPU_TEST_DEVICE=cpu` (set by `scripts/gpu-check --cpu`) runs the same tests with the CPU in
the GPU's place, so their code is proven in CI even though only a GPU run proves what they claim.

The rules held here:
- a merge on the GPU writes the CPU's tensors: bit for bit, or within the ulp bound the engine states (float32
  accumulation then one rounding to the storage dtype: 0 ulps expected, MAX_ULPS allowed where CUDA's GEMM sums
  the rank's terms in another order);
- and PEFT's own `merge_and_unload` on the same GPU: bit for bit in float32 storage; in bf16 PEFT rounds the delta
  to bf16 before adding it (two roundings), so there swiftreg is within 1 ulp of PEFT and never further from the
  float64 truth;
- unmerge by lineage gives back the base bit for bit;
- SVD combination's error against the float64 truncated SVD is no worse on the GPU than on the CPU;
- the equivalence check, run on the GPU in the storage dtype, passes a correct merge and fails a merge whose
  scaling is off by 2 and one with a module left out.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.llama_shapes import Shape, build_base, build_lora

DEVICE = os.environ.get("SWIFTREG_GPU_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="no CUDA device: the gpu tier runs where there is one (scripts/gpu-check)")]

#: small but real: several shards, GQA, every linear layer targeted; seconds on a GPU or a CPU
SMALL = Shape("small", hidden=256, intermediate=688, layers=2, heads=8, kv_heads=4, vocab=512, shard_bytes=600_000)


def _max_ulps() -> int:
    """The engine's stated bound for GPU vs CPU (registry/tensors; 1 where it states none)."""
    try:
        from registry.tensors import tensor_check  # type: ignore[attr-defined]

        return int(getattr(tensor_check, "MAX_GPU_ULPS", 1))
    except ImportError:
        return 1


MAX_ULPS = _max_ulps()


def _state(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _ordered(t: torch.Tensor) -> torch.Tensor:
    """The float's bits as integers ordered like the floats, so the difference of two counts ulps."""
    bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[t.dtype]
    i = t.contiguous().view(bits).to(torch.int64)
    top = 1 << (8 * t.element_size() - 1)
    return torch.where(i < 0, -(i + top), i)


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.dtype == b.dtype and a.shape == b.shape
    return int((_ordered(a) - _ordered(b)).abs().max()) if a.numel() else 0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu-tier")
    base16 = build_base(root / "base-bf16", SMALL, dtype=torch.bfloat16, seed=0)
    base32 = build_base(root / "base-fp32", SMALL, dtype=torch.float32, seed=0)
    out = {"bf16": base16, "fp32": base32}
    out["lora"] = build_lora(root / "lora", SMALL, seed=1, b_std=0.1)
    out["lora_x2"] = build_lora(root / "lora-x2", SMALL, seed=1, b_std=0.1, alpha=64)  # scaling off by 2
    out["lora_less"] = build_lora(root / "lora-less", SMALL, seed=1, b_std=0.1, skip=("model.layers.0.mlp.down_proj",))
    for i in range(4):
        out[f"part{i}"] = build_lora(root / f"part{i}", SMALL, seed=20 + i, b_std=0.1)
    return out


def _merge(base: Path, adapter: Path, out: Path, device: str) -> Any:
    from registry.tensors.adapter_tensors import load_adapter
    from registry.tensors.merge import merge_checkpoint

    return merge_checkpoint(base, load_adapter(adapter, base_dir=base), out, device=device)


@pytest.mark.parametrize("storage", ["bf16", "fp32"])
def test_gpu_merge_writes_the_cpus_tensors_and_matches_peft_merge_and_unload(
        models: dict[str, Path], tmp_path: Path, storage: str) -> None:
    base, adapter = models[storage], models["lora"]
    report = _merge(base, adapter, tmp_path / "gpu", DEVICE)
    assert str(report.device).startswith(DEVICE.split(":")[0])
    _merge(base, adapter, tmp_path / "cpu", "cpu")
    gpu, cpu, original = _state(tmp_path / "gpu"), _state(tmp_path / "cpu"), _state(base)
    assert gpu.keys() == cpu.keys() == original.keys()
    worst = max(ulps(gpu[k], cpu[k]) for k in gpu)
    assert worst <= MAX_ULPS, f"GPU vs CPU merge: {worst} ulps of {storage} (bound {MAX_ULPS})"
    changed = [k for k in gpu if not torch.equal(gpu[k], original[k])]
    assert len(changed) == len(SMALL.linear_modules()), "every targeted weight is merged"

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=gpu[changed[0]].dtype).to(DEVICE)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    peft = {k: v.detach().to("cpu") for k, v in merged.state_dict().items()}
    if storage == "fp32":
        assert max(ulps(gpu[k], peft[k]) for k in changed) == 0, "fp32: bit for bit PEFT's merge_and_unload"
        return
    assert max(ulps(gpu[k], peft[k]) for k in changed) <= 1, "bf16: within PEFT's second rounding"
    for k in changed[:4]:  # and never further from the float64 truth than PEFT
        truth = _truth(original[k], adapter, k)
        ours = (gpu[k].double() - truth).abs().max()
        theirs = (peft[k].double() - truth).abs().max()
        assert ours <= theirs, (k, float(ours), float(theirs))


def _truth(weight: torch.Tensor, adapter: Path, key: str) -> torch.Tensor:
    config = json.loads((adapter / "adapter_config.json").read_text())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    stem = "base_model.model." + key.removesuffix(".weight")
    a, b = tensors[stem + ".lora_A.weight"].double(), tensors[stem + ".lora_B.weight"].double()
    return weight.double() + config["lora_alpha"] / config["r"] * (b @ a)


def test_gpu_unmerge_by_lineage_returns_the_base_bit_for_bit(models: dict[str, Path], tmp_path: Path) -> None:
    from registry import ops
    from registry.service import Registry

    reg = Registry(home=tmp_path / "home")
    try:
        reg.push_base(models["bf16"], "meta/small", tag="v1")
        reg.push(models["lora"], "team/lora", tag="v1", base_model="meta/small@v1")
        merged = ops.merge(reg, "team/lora@v1", "meta/small@v1", push="meta/small-lora", device=DEVICE)
        assert merged.passed, [c.to_dict() for c in merged.comparisons]
        back = ops.unmerge(reg, "meta/small-lora@1", "team/lora@v1", push="meta/small-back", device=DEVICE)
        assert back.passed and back.pushed is not None
        restored = _state(reg.resolve("meta/small-back@1"))
        original = _state(models["bf16"])
        assert restored.keys() == original.keys()
        assert all(torch.equal(restored[k], original[k]) for k in original)
    finally:
        reg.close()


def _svd_error(device: str, parts: list[Path], n: int) -> float:
    from registry.tensors.adapter_tensors import load_adapter
    from registry.tensors.combine import combine

    result = combine([load_adapter(p) for p in parts[:n]], [1.0 / n] * n, "svd", rank=16, device=device)
    states = [load_file(str(p / "adapter_model.safetensors")) for p in parts[:n]]
    worst = 0.0
    for m in result.adapter.modules.values():
        stem = f"base_model.model.{m.module}"
        B = torch.cat([(2.0 / n) * s[stem + ".lora_B.weight"].double() for s in states], dim=1)
        A = torch.cat([s[stem + ".lora_A.weight"].double() for s in states], dim=0)
        u, sv, vh = torch.linalg.svd(B @ A, full_matrices=False)
        reference = (u[:, :16] * sv[:16]) @ vh[:16]
        assert m.A is not None and m.B is not None
        ours = m.scaling * (m.B.double().cpu() @ m.A.double().cpu())
        worst = max(worst, float((ours - reference).norm() / reference.norm()))
    return worst


@pytest.mark.parametrize("n", [2, 4])
def test_gpu_svd_combination_is_no_less_accurate_than_on_the_cpu(models: dict[str, Path], n: int) -> None:
    parts = [models[f"part{i}"] for i in range(4)]
    gpu, cpu = _svd_error(DEVICE, parts, n), _svd_error("cpu", parts, n)
    # the truncation is exact (rank 16 of at most 16 n); what is left is float32 rounding, which on either
    # device is ~1e-6 relative: "no worse" allows the other order of summation its own last bits
    assert gpu <= max(cpu * 1.5, 1e-6), (gpu, cpu)


def test_gpu_equivalence_check_passes_a_correct_merge_and_fails_wrong_ones(models: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    from registry.tensors import equivalence as eq

    base, adapter = models["bf16"], models["lora"]
    dev = torch.device(DEVICE)
    verdicts = {}
    for name in ("lora", "lora_x2", "lora_less"):
        out = tmp_path / name
        _merge(base, models[name], out, DEVICE)
        comparisons = eq.check_merge(base, adapter, out, device=dev)
        assert comparisons and all(c.dtype == "bfloat16" for c in comparisons), "checked in the storage dtype"
        verdicts[name] = all(c.passed for c in comparisons)
    assert verdicts == {"lora": True, "lora_x2": False, "lora_less": False}, verdicts
