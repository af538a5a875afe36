"""Small valid adapter checkpoints written directly (no model needed): fast fixtures for registry tests.

Layouts and keys are exactly those of PeftModel.save_pretrained and SwiftModel.save_pretrained for a
Llama with hidden size 32 (the oracle tier proves the converters against the real libraries).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

HIDDEN = 32
MODULES = ("q_proj", "v_proj")
OUT = {"q_proj": 32, "v_proj": 16}  # tests.helpers.models.LLAMA: 4 heads, 2 key/value heads of size 8


def _tensors(seed: int, r: int, layers: int, size_scale: int = 1) -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(layers):
        for module in MODULES:
            path = f"model.layers.{layer}.self_attn.{module}"
            out[path] = (
                rng.standard_normal((r, HIDDEN * size_scale), dtype=np.float32),
                rng.standard_normal((OUT[module], r), dtype=np.float32),
            )
    return out


def _config(r: int) -> dict:
    return {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(MODULES), "bias": "none",
            "use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "modules_to_save": None,
            "rank_pattern": {}, "alpha_pattern": {}, "lora_dropout": 0.0, "inference_mode": True,
            "base_model_name_or_path": None, "task_type": "CAUSAL_LM"}


def write_peft_lora(folder: Path, seed: int = 0, r: int = 4, layers: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(_config(r), indent=2, sort_keys=True))
    tensors = {}
    for path, (a, b) in _tensors(seed, r, layers).items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = a
        tensors[f"base_model.model.{path}.lora_B.weight"] = b
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "README.md").write_text(f"# test adapter {seed}\n")
    return folder


def write_swift_lora(folder: Path, seed: int = 0, r: int = 4, layers: int = 2,
                     names: tuple[str, ...] = ("default",)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration.json").write_text("{}")
    for i, name in enumerate(names):
        sub = folder / name
        sub.mkdir()
        config = {**_config(r), "swift_type": "LORA", "lora_dtype": None, "lorap_lr_ratio": 16.0,
                  "lorap_emb_lr": 1e-6, "use_qa_lora": False, "use_merged_linear": False, "enable_lora": None,
                  "model_key_mapping": None}
        (sub / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        tensors = {}
        for path, (a, b) in _tensors(seed + i, r, layers).items():
            tensors[f"{path}.lora_A.{name}.weight"] = a
            tensors[f"{path}.lora_B.{name}.weight"] = b
        save_file(tensors, str(sub / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def write_big_peft_lora(folder: Path, seed: int, megabytes: int = 8) -> Path:
    """A PEFT LoRA checkpoint of about `megabytes` MB (2 layers of wide float32 tensors, r=8): for what only
    large adapters show (disk use, progress lines)."""
    write_peft_lora(folder, seed=seed)
    rng = np.random.default_rng(seed)
    width = megabytes * (1 << 20) // (4 * 4 * 8 * 2)
    tensors = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            stem = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{stem}.lora_A.weight"] = rng.standard_normal((8, width), dtype=np.float32)
            tensors[f"{stem}.lora_B.weight"] = rng.standard_normal((width, 8), dtype=np.float32)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder
