"""The key grammar: one set of rules, read from the right, never a substring replace."""
from __future__ import annotations

import pytest

from converters.keys import PEFT_PREFIX
from converters.methods import GRAMMAR

# (Swift key, adapter, PEFT key)
PAIRS = [
    ("model.layers.0.self_attn.q_proj.lora_A.default.weight", "default",
     "model.layers.0.self_attn.q_proj.lora_A.weight"),
    ("model.layers.0.self_attn.q_proj.lora_B.sql.weight", "sql", "model.layers.0.self_attn.q_proj.lora_B.weight"),
    ("model.layers.0.self_attn.q_proj.lora_B.default.bias", "default", "model.layers.0.self_attn.q_proj.lora_B.bias"),
    ("model.embed_tokens.lora_embedding_A.default", "default", "model.embed_tokens.lora_embedding_A"),
    ("model.embed_tokens.lora_embedding_B.x-1", "x-1", "model.embed_tokens.lora_embedding_B"),
    ("model.layers.1.mlp.up_proj.lora_magnitude_vector.default.weight", "default",
     "model.layers.1.mlp.up_proj.lora_magnitude_vector"),
    ("lm_head.weight", "default", "lm_head.weight"),
    ("transformer.h.0.attn.c_attn.base_layer.bias", "default", "transformer.h.0.attn.c_attn.base_layer.bias"),
    # Module names that contain a role or the adapter name are never touched.
    ("model.lora_A.q_proj.lora_A.default.weight", "default", "model.lora_A.q_proj.lora_A.weight"),
    ("model.lora_A_proj.lora_B.default.weight", "default", "model.lora_A_proj.lora_B.weight"),
    ("model.default.default_head.lora_A.default.weight", "default", "model.default.default_head.lora_A.weight"),
    ("encoder.lora_embedding_A.emb.lora_embedding_A.default", "default",
     "encoder.lora_embedding_A.emb.lora_embedding_A"),
    ("default.lora_magnitude_vector_head.lora_magnitude_vector.default.weight", "default",
     "default.lora_magnitude_vector_head.lora_magnitude_vector"),
]


@pytest.mark.parametrize("swift_key,adapter,peft_tail", PAIRS)
def test_swift_and_peft_keys_map_both_ways(swift_key: str, adapter: str, peft_tail: str) -> None:
    parsed = GRAMMAR.parse_swift(swift_key)
    assert parsed.adapter in (None, adapter)
    assert parsed.peft() == PEFT_PREFIX + peft_tail
    back = GRAMMAR.parse_peft(PEFT_PREFIX + peft_tail)
    assert back is not None and back.swift(adapter) == swift_key


def test_the_module_path_is_kept_whole_when_it_contains_roles_and_the_adapter_name() -> None:
    parsed = GRAMMAR.parse_swift("model.lora_A.default.lora_B.lora_A.default.weight")
    assert (parsed.module, parsed.role.name, parsed.adapter, parsed.param) == (
        "model.lora_A.default.lora_B", "lora_A", "default", "weight")


def test_leaked_modules_to_save_key_names_its_adapter() -> None:
    parsed = GRAMMAR.parse_swift("lm_head.modules_to_save.default2.weight")
    assert parsed.adapter == "default2" and parsed.role is None and parsed.module == "lm_head.weight"
    nested = GRAMMAR.parse_swift("classifier.modules_to_save.sql.dense.weight")
    assert nested.adapter == "sql" and nested.module == "classifier.dense.weight"


def test_adapter_names_that_prefix_each_other_are_told_apart() -> None:
    assert GRAMMAR.parse_swift("m.q.lora_A.default2.weight").adapter == "default2"
    assert GRAMMAR.parse_swift("m.q.lora_A.default.weight").adapter == "default"


def test_ms_swift_dora_key_with_weight_is_read_as_the_canonical_magnitude() -> None:
    parsed = GRAMMAR.parse_peft(PEFT_PREFIX + "m.q.lora_magnitude_vector.weight")
    assert parsed is not None and parsed.peft() == PEFT_PREFIX + "m.q.lora_magnitude_vector"


def test_peft_key_without_prefix_is_flagged() -> None:
    assert GRAMMAR.parse_peft("model.layers.0.q_proj.lora_A.weight") is None


def test_shira_roles_are_recognised_in_peft_keys() -> None:
    parsed = GRAMMAR.parse_peft(PEFT_PREFIX + "model.layers.0.q_proj.shira_indices")
    assert parsed is not None and parsed.role is not None and parsed.role.name == "shira_indices"
    assert not parsed.role.swift
