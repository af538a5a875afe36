"""Equivalence of merges on real architectures: the real pretrained MiniLM, Llama, Qwen2 and GPT-2.

For each: (a) the merged model vs base + adapter applied unmerged by PEFT, (b) vs PEFT's own
merge_and_unload, (c) unmerge(merge(W)) vs W, in float32 and bfloat16 with the tolerances written in
registry/tensors/equivalence.py.
"""
from __future__ import annotations

from pathlib import Path

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
