"""The LoRA family: LoRA, DoRA (`use_dora`), rsLoRA, rank/alpha patterns, embedding LoRA."""
from __future__ import annotations

from typing import Any, Mapping

from ..keys import Role
from .base import Method

LORA_A = Role("lora_A", params=frozenset({"weight", "bias"}))
LORA_B = Role("lora_B", params=frozenset({"weight", "bias"}))
LORA_EMBEDDING_A = Role("lora_embedding_A")
LORA_EMBEDDING_B = Role("lora_embedding_B")
#: DoRA magnitude: PEFT writes no parameter segment, ms-swift always writes `.weight`.
LORA_MAGNITUDE = Role("lora_magnitude_vector", swift_param="weight")

#: Fields ms-swift's LoRAConfig adds to PEFT's LoraConfig. PEFT has no place for them, so a
#: Swift -> PEFT conversion keeps them in the `additional_config.json` sidecar (ms-swift's own,
#: which ms-swift reads back when it loads a PEFT folder) and PEFT -> Swift restores them.
SWIFT_ONLY_FIELDS = ("lora_dtype", "lorap_lr_ratio", "lorap_emb_lr", "use_qa_lora", "use_merged_linear",
                     "enable_lora", "model_key_mapping", "lr_ratio")

#: Swift-only fields whose truthy value changes the computation itself: PEFT cannot express them.
MATH_CHANGING_FIELDS = {
    "use_qa_lora": "QA-LoRA pools inputs group-wise before lora_A (for GPTQ models); PEFT's LoRA has no such layer",
    "use_merged_linear": "MergedLinear splits one fused projection into per-part LoRA blocks (`enable_lora`) and "
                         "ms-swift writes no weights file for it; PEFT's LoRA has no such layer",
}


def _variant(config: Mapping[str, Any]) -> str:
    return "DORA" if config.get("use_dora") else ""


METHOD = Method(
    peft_type="LORA",
    swift_type="LORA",
    roles=(LORA_A, LORA_B, LORA_EMBEDDING_A, LORA_EMBEDDING_B, LORA_MAGNITUDE),
    config_class="LoraConfig",
    pair_roles=(("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B")),
    variant=_variant,
)
