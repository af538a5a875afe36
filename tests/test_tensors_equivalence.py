"""Equivalence of merges on real architectures: the real pretrained MiniLM, Llama, Qwen2 and GPT-2.

For each: (a) the merged model vs base + adapter applied unmerged by PEFT, (b) vs PEFT's own
merge_and_unload, (c) unmerge(merge(W)) vs W, in float32 and bfloat16 with the tolerances written in
registry/tensors/equivalence.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry import ops
from registry.service import Registry
from registry.tensors import equivalence as eq
from tests.helpers.models import build_base, make_peft_checkpoint, minilm_folder

CASES = {
    "minilm": (None, dict(r=8, lora_alpha=16, target_modules=["query", "value", "dense"])),
    "llama": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"], use_dora=True)),
    "qwen2": ("qwen2", dict(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj", "up_proj"],
                            rank_pattern={"v_proj": 2})),
    "gpt2": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_merge_and_unmerge_are_equivalent_on_real_architectures(case: str, dtype: str, tmp_path: Path) -> None:
    kind, lora = CASES[case]
    base = minilm_folder() if kind is None else build_base(kind, tmp_path / "base")
    adapter = tmp_path / "adapter"
    make_peft_checkpoint(base, adapter, {"default": lora}, seed=11,
                         model_class="AutoModel" if kind is None else "AutoModelForCausalLM")
    reg = Registry(home=tmp_path / "home")
    try:
        merged = ops.merge(reg, str(adapter), str(base), output=tmp_path / "merged", dtype=dtype, device="cpu")
        print(f"\n{case} {dtype}\n{eq.format_table(merged.comparisons)}")
        assert merged.passed, eq.format_table(merged.comparisons)
        assert {c.dtype for c in merged.comparisons} == {"float32" if dtype == "fp32" else "bfloat16"}
        if lora.get("use_dora"):
            return  # DoRA cannot be unmerged from merged weights alone (tested in test_worker_merge.py)
        back = ops.unmerge(reg, str(tmp_path / "merged"), str(adapter), output=tmp_path / "back", device="cpu")
        assert back.passed, eq.format_table(back.comparisons)
        if dtype == "fp32":
            check = eq.check_same_model("unmerge(merge(W)) vs W", tmp_path / "back", base)
            assert check.passed and check.rel_err < 1e-6, check
    finally:
        reg.close()


# ----- the merge's own check, both directions, on deep half-precision models (issue 18) ----------------------

DEEP = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SQUARE = "model.layers.2.self_attn.q_proj"


@pytest.fixture(scope="module", params=["bf16", "fp16"])
def deep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 6-layer Llama stored in bf16 or fp16 and a LoRA on every linear layer (made by transformers and peft)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[request.param]
    root = tmp_path_factory.mktemp(f"deep-{request.param}")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**DEEP)).to(dtype).save_pretrained(root / "base")
    lora = dict(r=8, lora_alpha=16, target_modules=ALL_LINEAR)
    make_peft_checkpoint(root / "base", root / "adapter", {"default": lora}, seed=5)
    make_peft_checkpoint(root / "base", root / "adapter-x2", {"default": {**lora, "lora_alpha": 32}}, seed=5)
    from registry.tensors.adapter_tensors import load_adapter
    from registry.tensors.merge import merge_checkpoint

    report = merge_checkpoint(root / "base", load_adapter(root / "adapter"), root / "merged", device="cpu")
    return {"root": root, "dtype": dtype, "report": report}


def _wrong(deep: dict[str, Any], how: str) -> Path:
    """A merged folder made wrong in one way: the scaling doubled, one module left out, one delta transposed."""
    from safetensors.torch import load_file, save_file

    from registry.tensors.adapter_tensors import load_adapter
    from registry.tensors.lora_math import lora_delta
    from registry.tensors.merge import merge_checkpoint

    root = deep["root"]
    out = root / f"wrong-{how}"
    if out.exists():
        return out
    if how == "x2":
        merge_checkpoint(root / "base", load_adapter(root / "adapter-x2"), out, device="cpu", verify=False)
    elif how == "left-out":
        adapter = load_adapter(root / "adapter")
        del adapter.modules["model.layers.3.mlp.down_proj"]
        merge_checkpoint(root / "base", adapter, out, device="cpu", verify=False)
    else:  # one square module merged with its delta transposed
        import shutil

        shutil.copytree(root / "merged", out)
        adapter = load_adapter(root / "adapter")
        tensors = load_file(str(out / "model.safetensors"))
        base = load_file(str(root / "base" / "model.safetensors"))
        key = SQUARE + ".weight"
        delta = lora_delta(adapter.modules[SQUARE])
        tensors[key] = (base[key].float() + delta.T).to(deep["dtype"])
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_per_tensor_check_passes_the_correct_merge(deep: dict[str, Any]) -> None:
    """Fused into the merge and standalone on the folder: within half an ulp, every module once, bit-equal copies."""
    from registry.tensors.adapter_tensors import load_adapter
    from registry.tensors.tensor_check import check_merged

    verify = deep["report"].verify
    assert verify["passed"] and verify["tensors_checked"] == 6 * 7, verify
    assert 0.0 < verify["worst_ratio"] <= 1.0
    root = deep["root"]
    standalone = check_merged(root / "base", load_adapter(root / "adapter"), root / "merged")
    assert standalone.passed and standalone.tensors_checked == 42, standalone.failures
    assert standalone.worst_ratio == pytest.approx(verify["worst_ratio"])


@pytest.mark.parametrize("how", ["x2", "left-out", "transposed"])
def test_per_tensor_check_fails_each_wrong_merge(deep: dict[str, Any], how: str) -> None:
    from registry.tensors.adapter_tensors import load_adapter
    from registry.tensors.tensor_check import check_merged

    root = deep["root"]
    result = check_merged(root / "base", load_adapter(root / "adapter"), _wrong(deep, how))
    assert not result.passed
    named = {"x2": "q_proj", "left-out": "model.layers.3.mlp.down_proj.weight", "transposed": SQUARE + ".weight"}
    assert any(named[how] in failure for failure in result.failures), result.failures
    if how != "x2":
        assert len(result.failures) == 1, result.failures  # only the wrong tensor, not its neighbours


def test_fused_check_refuses_an_engine_that_merges_wrong(deep: dict[str, Any], tmp_path: Path) -> None:
    """The check derives scaling and layout from adapter_config.json itself: an engine given a doubled scaling or
    a transposed layout fails in the pass, names the tensor, and writes nothing."""
    from registry.tensors.adapter_tensors import load_adapter
    from registry.tensors.errors import MergeCheckError
    from registry.tensors.merge import merge_checkpoint

    root = deep["root"]
    for how in ("scaling", "layout"):
        adapter = load_adapter(root / "adapter")
        module = adapter.modules[SQUARE]
        if how == "scaling":
            module.scaling *= 2
        else:
            module.fan_in_fan_out = True
        with pytest.raises(MergeCheckError, match=SQUARE.replace(".", r"\.")):
            merge_checkpoint(root / "base", adapter, tmp_path / how, device="cpu")
        assert not (tmp_path / how).exists()
        assert not [p for p in tmp_path.iterdir() if how in p.name]


def test_output_check_passes_the_correct_merge_and_fails_a_doubled_scaling(deep: dict[str, Any]) -> None:
    """Against PEFT's own merge in the storage dtype (equal weights, equal outputs), tolerance from the dtype
    and the depth; base + adapter unmerged shown beside it. Finer mistakes are the per-tensor check's job."""
    from registry.tensors import equivalence as eq

    root = deep["root"]
    good = eq.check_merge_outputs(root / "base", root / "adapter", root / "merged")
    name = eq.dtype_name(deep["dtype"])
    assert [c.dtype for c in good] == [name, name]
    assert good[0].passed and good[0].rel_err == 0.0, eq.format_table(good)
    assert good[0].tolerance == pytest.approx(eq.output_tolerance(name, 6))
    assert good[1].informational and good[1].rel_err < good[0].tolerance, eq.format_table(good)
    bad = eq.check_merge_outputs(root / "base", root / "adapter", _wrong(deep, "x2"))
    assert not bad[0].passed and bad[0].rel_err > 4 * bad[0].tolerance, eq.format_table(bad)


def test_the_merge_command_checks_and_moves_its_result_into_place(deep: dict[str, Any], tmp_path: Path) -> None:
    from registry.tensors.tensor_check import compare_checkpoints

    root = deep["root"]
    reg = Registry(home=tmp_path / "home")
    try:
        out = tmp_path / "out" / "merged"
        result = ops.merge(reg, str(root / "adapter"), str(root / "base"), output=out, device="cpu")
        assert result.passed and result.output == out
        assert [c.name.split(",")[0] for c in result.comparisons] == ["merged vs base+adapter"]  # plain LoRA
        assert compare_checkpoints(out, root / "merged").identical
        assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]  # built beside it, renamed, no scratch
        full = ops.merge(reg, str(root / "adapter-x2"), str(root / "base"), output=tmp_path / "full", device="cpu",
                         check_outputs="full")
        assert len(full.comparisons) == 3 and full.passed
    finally:
        reg.close()


# ----- the pieces --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_half_ulp_is_half_the_distance_to_the_next_value(dtype: str) -> None:
    import torch

    from registry.tensors.tensor_check import half_ulp

    t = getattr(torch, dtype)
    info = torch.finfo(t)
    values = torch.tensor([0.0, info.tiny / 4, info.tiny, 1.0, 1.5, -3.0, 1000.0, info.max / 2, -info.eps], dtype=t)
    up = torch.nextafter(values.abs(), torch.tensor(float("inf"), dtype=t))
    assert torch.equal(half_ulp(values, torch.float64), (up.double() - values.abs().double()) / 2)


def test_compare_checkpoints_counts_ulps(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from registry.tensors.tensor_check import compare_checkpoints

    a = {"w": torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16), "i": torch.tensor([1, 2])}
    b = {"w": torch.nextafter(a["w"], torch.tensor(10.0, dtype=torch.bfloat16)), "i": a["i"]}
    for name, state in (("a", a), ("b", b), ("c", a)):
        (tmp_path / name).mkdir()
        save_file(state, str(tmp_path / name / "model.safetensors"))
    assert compare_checkpoints(tmp_path / "a", tmp_path / "c").identical
    diff = compare_checkpoints(tmp_path / "b", tmp_path / "a")
    assert (diff.differing, diff.elements_differing, diff.max_ulps, diff.worst_key) == (1, 3, 1.0, "w")


def test_checker_names_a_module_never_merged_or_merged_twice() -> None:
    from registry.tensors.tensor_check import TensorChecker

    checker = TensorChecker()
    checker.record("a.weight", "a", 0.5)
    checker.record("a.weight", "a", 0.5)
    result = checker.finish(["a", "b"])
    assert not result.passed and len(result.failures) == 2
    assert "module a: merged 2 times" in result.failures[0] and "module b: merged 0 times" in result.failures[1]


def test_exact_math_turns_reduced_precision_off_and_restores_it() -> None:
    import torch

    from registry.tensors.device import exact_math

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        with exact_math("cpu"):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


def test_merge_threads_leaves_cores_for_io_and_restores_the_count() -> None:
    import os

    import torch

    from registry.tensors.device import merge_threads

    before = torch.get_num_threads()
    with merge_threads("cpu") as count:
        assert torch.get_num_threads() == count == max(1, min(before, (os.cpu_count() or 2) // 2))
    assert torch.get_num_threads() == before
