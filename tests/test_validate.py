"""validate(): every inconsistency PEFT would load silently is reported, naming the key or field."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

import converters
from tests.helpers.models import build_base, make_peft_checkpoint

PREFIX = "base_model.model.model.layers.0.self_attn."


@pytest.fixture(scope="module")
def good(llama_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("valid") / "peft"
    make_peft_checkpoint(llama_base, out, {"default": dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], use_dora=True,
        rank_pattern={"v_proj": 2})}, seed=5)
    return out


def _edited(good: Path, tmp_path: Path, tensors: Callable[[dict], None] | None = None,
            config: Callable[[dict], None] | None = None) -> Path:
    out = tmp_path / "edited"
    shutil.copytree(good, out)
    if tensors:
        state = load_file(out / "adapter_model.safetensors")
        tensors(state)
        save_file(state, out / "adapter_model.safetensors")
    if config:
        data = json.loads((out / "adapter_config.json").read_text())
        config(data)
        (out / "adapter_config.json").write_text(json.dumps(data))
    return out


def _problems(path: Path, base: Path | None = None) -> list[str]:
    return [f"{p.where}: {p.message}" for p in converters.validate(path, base).errors]


def test_a_real_peft_checkpoint_is_valid_alone_and_against_its_base(good: Path, llama_base: Path) -> None:
    assert _problems(good) == []
    assert _problems(good, llama_base) == []


def test_rank_pattern_is_applied_per_module(good: Path) -> None:
    keys = load_file(good / "adapter_model.safetensors")
    assert keys[PREFIX + "v_proj.lora_A.weight"].shape[0] == 2 and keys[PREFIX + "q_proj.lora_A.weight"].shape[0] == 4


EDITS = {
    "missing lora_B": (lambda s: s.pop(PREFIX + "q_proj.lora_B.weight"), None,
                       "q_proj: has only one of lora_A / lora_B"),
    "rank differs from r": (lambda s: s.update({PREFIX + "q_proj.lora_A.weight": torch.zeros(3, 32),
                                                PREFIX + "q_proj.lora_B.weight": torch.zeros(32, 3)}), None,
                            "q_proj.lora_A.weight: has 3 rows but the rank for"),
    "B columns differ from A rows": (lambda s: s.update({PREFIX + "q_proj.lora_B.weight": torch.zeros(32, 2)}), None,
                                     "has 2 columns but lora_A has 4 rows"),
    "DoRA magnitude missing": (lambda s: s.pop(PREFIX + "q_proj.lora_magnitude_vector"), None,
                               "DoRA magnitude vector is missing"),
    "DoRA magnitude wrong size": (lambda s: s.update({PREFIX + "q_proj.lora_magnitude_vector": torch.ones(7)}), None,
                                  "is not [32]"),
    "stray key": (lambda s: s.update({"base_model.model.model.norm.weight": torch.ones(32)}), None,
                  "matches no LoRA layer"),
    "missing prefix": (lambda s: s.update({"model.layers.0.self_attn.k_proj.lora_A.weight": torch.ones(4, 32)}), None,
                       "lacks the 'base_model.model.' prefix"),
    "integer LoRA tensor": (
        lambda s: s.update({PREFIX + "q_proj.lora_A.weight": torch.zeros(4, 32, dtype=torch.int32)}),
        None, "is not a floating-point type"),
    "module not targeted": (None, lambda c: c.update(target_modules=["q_proj", "up_proj"]),
                            "v_proj: has LoRA tensors but target_modules does not select it"),
    "bad r": (None, lambda c: c.update(r=0), "config.r: must be a positive integer"),
    "bad alpha": (None, lambda c: c.update(lora_alpha="16"), "config.lora_alpha: must be a number"),
    "bad bias": (None, lambda c: c.update(bias="some"), "config.bias"),
    "magnitude without DoRA": (None, lambda c: c.update(use_dora=False), "use_dora is false"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_each_inconsistency_is_reported_by_name(good: Path, tmp_path: Path, edit: str) -> None:
    tensors, config, expected = EDITS[edit]
    problems = _problems(_edited(good, tmp_path, tensors, config))
    assert any(expected in p for p in problems), problems


def test_an_adapter_for_another_base_model_names_the_mismatched_module(good: Path, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    other = tmp_path / "wider"
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(other)
    problems = _problems(good, other)
    assert any(p.startswith("model.layers.0.self_attn.q_proj: adapter expects a base weight of shape [32, 32]")
               for p in problems), problems


def test_a_module_missing_from_the_base_model_is_named(good: Path, tmp_path: Path) -> None:
    shallow = build_base("gpt2", tmp_path / "gpt2")
    assert any("no weight model.layers.0.self_attn.q_proj.weight" in p for p in _problems(good, shallow))


def test_leaked_keys_are_warnings_not_errors(tmp_path: Path) -> None:
    src = tmp_path / "swift"
    (src / "default").mkdir(parents=True)
    (src / "default" / "adapter_config.json").write_text(json.dumps(
        {"swift_type": "LORA", "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"]}))
    save_file({"m.q.lora_A.default.weight": torch.ones(2, 4), "m.q.lora_B.default.weight": torch.ones(4, 2),
               "m.q.lora_A.default2.weight": torch.ones(2, 4)}, src / "default" / "adapter_model.safetensors")
    report = converters.validate(src)
    assert report.ok and [p.where for p in report.problems] == ["m.q.lora_A.default2.weight"]
