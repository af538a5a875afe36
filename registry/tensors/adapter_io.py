"""Writing an `AdapterTensors` as a PEFT adapter folder (the inverse of `load_adapter`).

    folder/
      adapter_config.json          the adapter's config, as PEFT writes it (indent 2, sorted keys)
      adapter_model.safetensors    canonical PEFT keys: base_model.model.<module>.lora_A.weight, ...

Keys come from the converters' key grammar, so they are the ones PEFT's own
`get_peft_model_state_dict` returns: `lora_A.weight`, `lora_B.weight`, `lora_B.bias`
(lora_bias), `lora_magnitude_vector` (DoRA, no `.weight`), `lora_embedding_A` / `_B`,
`shira_weight` / `shira_indices`, and `base_model.model.<key>` for replacement tensors.

Before writing, every module's factor shapes are checked against the rank its config gives it
(rank_pattern included): PEFT would otherwise fail to load the folder, or (missing keys) load it
with freshly initialised factors and only a warning. Both files are written under temporary names,
flushed, and renamed into place, the config last: a folder with a config holds complete weights.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from converters.config import CONFIG_NAME, dump_json
from converters.keys import TensorKey
from converters.layout import SAFETENSORS_NAME
from converters.legacy_bin import save_safetensors
from converters.methods import ROLES

from ..atomic import fsync
from .adapter_tensors import AdapterTensors, module_scaling
from .errors import AdapterError

METADATA = {"format": "pt"}


def _key(module: str, role: str, param: str | None = None) -> str:
    return TensorKey(module, ROLES[role], param).peft()


def adapter_state_dict(adapter: AdapterTensors) -> dict[str, torch.Tensor]:
    """The adapter's tensors under canonical PEFT keys, checked against its config's ranks."""
    tensors: dict[str, torch.Tensor] = {}
    for module, entry in adapter.modules.items():
        if entry.kind == "shira":
            if entry.shira_weight is None or entry.shira_indices is None:
                raise AdapterError(f"module {module}: SHiRA needs both shira_weight and shira_indices")
            tensors[_key(module, "shira_weight")] = entry.shira_weight
            tensors[_key(module, "shira_indices")] = entry.shira_indices
            continue
        if entry.A is None or entry.B is None:
            raise AdapterError(f"module {module}: has only one of its A/B factors")
        r, _, _ = module_scaling(adapter.config, module)
        if entry.A.shape[0] != r or entry.B.shape[-1] != r:
            raise AdapterError(f"module {module}: factors of rank {entry.A.shape[0]} x {entry.B.shape[-1]} but the "
                               f"config gives it rank {r} (r or rank_pattern): PEFT could not load it")
        if entry.kind == "embedding":
            if entry.lora_bias is not None:
                raise AdapterError(f"module {module}: PEFT has no lora_bias for embedding LoRA")
            tensors[_key(module, "lora_embedding_A")] = entry.A
            tensors[_key(module, "lora_embedding_B")] = entry.B
        else:
            tensors[_key(module, "lora_A", "weight")] = entry.A
            tensors[_key(module, "lora_B", "weight")] = entry.B
            if entry.lora_bias is not None:
                tensors[_key(module, "lora_B", "bias")] = entry.lora_bias
        if entry.magnitude is not None:
            tensors[_key(module, "lora_magnitude_vector")] = entry.magnitude
    for key, tensor in adapter.replacements.items():
        tensors[TensorKey(key).peft()] = tensor
    return {k: v.detach().to("cpu") for k, v in tensors.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_adapter(adapter: AdapterTensors, folder: str | Path) -> Path:
    """Write `adapter` as a PEFT checkpoint in `folder` (created; its two files replaced)."""
    folder = Path(folder)
    tensors = adapter_state_dict(adapter)
    config = _jsonable(adapter.config)
    json.dumps(config)  # fail before writing anything if the config is not JSON
    folder.mkdir(parents=True, exist_ok=True)
    weights, config_path = folder / SAFETENSORS_NAME, folder / CONFIG_NAME
    tmp_weights = folder / f".{SAFETENSORS_NAME}.tmp"
    tmp_config = folder / f".{CONFIG_NAME}.tmp"
    try:
        save_safetensors(tensors, tmp_weights, METADATA)
        tmp_config.write_bytes(dump_json(config))
        fsync(tmp_weights)
        fsync(tmp_config)
        os.replace(tmp_weights, weights)
        os.replace(tmp_config, config_path)
        fsync(folder)
    finally:
        for tmp in (tmp_weights, tmp_config):
            tmp.unlink(missing_ok=True)
    return folder


__all__ = ["save_adapter", "adapter_state_dict"]
