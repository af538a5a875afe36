"""Every tuner type the installed peft can build for a causal LM, made by the real peft on a tiny Llama.

`KWARGS` holds the config fields each type needs on tests.helpers.models.LLAMA (hidden size 32, q_proj
32x32, v_proj 16x32); `build` saves one checkpoint per type with its trainable parameters perturbed (so
each adapter changes the outputs) and returns the PeftModel's logits on the probe batch.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from .models import PROBE, load_base

TARGETS = ["q_proj", "v_proj"]
#: Fields beyond target_modules=TARGETS (and num_virtual_tokens=4 for prompt learning) per type.
KWARGS: dict[str, dict] = {
    "ADALORA": dict(total_step=10, init_r=4, target_r=2),
    "ADAPTION_PROMPT": dict(adapter_len=4, adapter_layers=1),
    "C3A": dict(block_size=16),
    "CPT": dict(cpt_token_ids=[1, 2, 3], cpt_mask=[1, 1, 1], cpt_tokens_type_mask=[1, 2, 3]),
    "FOURIERFT": dict(n_frequency=64),
    "IA3": dict(target_modules=["q_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    "MISS": dict(r=4),
    "MULTITASK_PROMPT_TUNING": dict(num_tasks=1),
    "POLY": dict(r=2, n_tasks=1),
    "PSOFT": dict(r=4),
    "ROAD": dict(group_size=8),
    "SHIRA": dict(r=2),
    "TRAINABLE_TOKENS": dict(target_modules=["embed_tokens"], token_indices=[1, 2, 3]),
    "VBLORA": dict(vector_length=8, num_vectors=16),
    "WAVEFT": dict(n_frequency=64),
}
#: Types peft 0.21.2 cannot build on a tiny Llama here, and why (each is still accepted when peft can load it).
NOT_BUILT = {
    "SHADOW": "peft 0.21.2's SHADOW forward fails on a Llama ('ShadowCarrier' object has no attribute 'view')",
    "XLORA": "X-LoRA wraps already trained LoRA adapters and needs use_cache=False; it has no weights of its own",
    "LORA": "the LoRA path has its own tests (test_validate.py, test_tensors_merge.py)",
}
#: Types whose forward needs task_ids.
TASK_IDS = {"POLY", "MULTITASK_PROMPT_TUNING"}


def config_for(peft_type: str):  # type: ignore[no-untyped-def]
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    cls = {str(t.value): c for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items()}[peft_type]
    fields = {f.name for f in dataclasses.fields(cls)}
    kw: dict = {"task_type": "CAUSAL_LM"}
    if "target_modules" in fields and peft_type != "ADAPTION_PROMPT":  # that one names the attention module
        kw["target_modules"] = TARGETS
    if "num_virtual_tokens" in fields and peft_type != "CPT":
        kw["num_virtual_tokens"] = 4
    kw.update(KWARGS.get(peft_type, {}))
    return cls(**kw)


def buildable() -> list[str]:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return sorted(str(t.value) for t in PEFT_TYPE_TO_CONFIG_MAPPING if str(t.value) not in NOT_BUILT)


def forward_kwargs(peft_type: str) -> dict:
    ids = torch.tensor(PROBE, dtype=torch.long)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if peft_type in TASK_IDS:
        kw["task_ids"] = torch.zeros(len(PROBE), dtype=torch.long)
    return kw


def logits(model: torch.nn.Module, peft_type: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**forward_kwargs(peft_type)).logits.detach().float()


def build(peft_type: str, base: Path, out: Path, seed: int = 1, model: torch.nn.Module | None = None) -> torch.Tensor:
    """Save a `peft_type` checkpoint made by the real peft on the base at `base` to `out`; its logits."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model if model is not None else load_base(base), config_for(peft_type))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, param in peft_model.named_parameters():
                if param.requires_grad and param.is_floating_point():
                    param.add_(0.1 * torch.randn(param.shape, generator=generator).to(param.dtype))
        peft_model.eval()
        peft_model.save_pretrained(out)
        return logits(peft_model, peft_type)


def peft_logits(peft_type: str, base: Path, adapter: Path) -> torch.Tensor:
    """The real peft's logits for the adapter folder on a fresh copy of the base."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(load_base(base), adapter).eval()
        return logits(model, peft_type)
