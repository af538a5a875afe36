"""A base model folder seen through its safetensors headers: names and shapes, no weights loaded.

Adapter module paths are relative to the model object PEFT wrapped (`model.layers.0.self_attn.q_proj`
for a causal LM), while a base checkpoint may be saved from a class with or without a wrapper
prefix (`bert.encoder...` vs `encoder...`). `weight_of` accepts either, as long as the match is
unique.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import source_files
from .errors import FormatError, NotACheckpointError
from .tensors import TensorInfo, WeightsFile


@dataclass
class BaseModel:
    path: Path
    tensors: dict[str, TensorInfo]
    config: dict

    @classmethod
    def open(cls, path: str | Path) -> "BaseModel":
        root = Path(path)
        if not root.is_dir():
            raise NotACheckpointError("base model must be a folder with config.json and *.safetensors", root)
        files = sorted(root.glob("*.safetensors")) or sorted(root.glob("pytorch_model*.bin"))
        if not files:
            raise NotACheckpointError("base model folder has no *.safetensors or pytorch_model*.bin", root)
        config_path = root / "config.json"
        roots = source_files.allowed_roots(root)  # the symlink rule: a Hugging Face cache snapshot is fine
        for f in [*files, config_path] if os.path.lexists(config_path) else files:
            source_files.check(root, f, roots=roots)
        tensors: dict[str, TensorInfo] = {}
        for f in files:
            for info in WeightsFile.open(f).infos():
                tensors[info.name] = info
        try:
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        except ValueError as exc:
            raise FormatError(f"config.json is not valid JSON: {exc}", config_path) from None
        return cls(root, tensors, config if isinstance(config, dict) else {})

    def tensor(self, key: str) -> TensorInfo | None:
        if key in self.tensors:
            return self.tensors[key]
        matches = [t for name, t in self.tensors.items()
                   if name.endswith("." + key) or key.endswith("." + name)]
        return matches[0] if len(matches) == 1 else None

    def weight_of(self, module: str) -> TensorInfo | None:
        return self.tensor(f"{module}.weight") or self.tensor(f"{module}.base_layer.weight")
