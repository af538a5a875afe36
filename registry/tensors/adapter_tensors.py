"""An adapter's tensors grouped by the module they modify, with each module's own scaling.

Read from a PEFT-format folder (a Swift checkpoint is converted first: `registry.resolve(...,
format="peft")` or `converters.convert`). Scaling follows PEFT exactly: `lora_alpha / r`, or
`lora_alpha / sqrt(r)` with rsLoRA, with `rank_pattern` / `alpha_pattern` resolved per module by
PEFT's own rule (first matching key wins, `(.*\\.)?(key)$`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from converters.config import CONFIG_NAME, read_json
from converters.layout import SAFETENSORS_NAME
from converters.methods import GRAMMAR
from converters.validation import pattern_value

from .errors import AdapterError

Kind = Literal["linear", "embedding", "shira", "peft"]


@dataclass
class ModuleAdapter:
    """What one adapter does to one module of the base model."""

    module: str                     # module path inside the base model, e.g. model.layers.0.self_attn.q_proj
    kind: Kind
    r: int
    alpha: float
    scaling: float
    fan_in_fan_out: bool = False
    A: torch.Tensor | None = None   # lora_A (r, in) or lora_embedding_A (r, num_embeddings)
    B: torch.Tensor | None = None   # lora_B (out, r) or lora_embedding_B (dim, r)
    magnitude: torch.Tensor | None = None   # DoRA: one magnitude per output row
    lora_bias: torch.Tensor | None = None   # lora_B.bias (lora_bias=True)
    shira_weight: torch.Tensor | None = None
    shira_indices: torch.Tensor | None = None
    layer: Any = None               # kind "peft": peft's own tuner layer (peft_layers.py), meta base weight
    peft_type: str = ""

    @property
    def weight_key(self) -> str:
        """The base-model tensor this module's delta applies to."""
        return f"{self.module}.weight"


@dataclass
class AdapterTensors:
    config: dict[str, Any]
    modules: dict[str, ModuleAdapter] = field(default_factory=dict)
    #: Tensors that replace base tensors outright: modules_to_save copies, biases with bias="all",
    #: embedding base weights (save_embedding_layers). Keys as in the base model.
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Other PEFT types: peft's model skeleton whose tuner layers merge module by module (peft_layers.py).
    peft_layers: Any = None

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type"))


def module_scaling(config: dict[str, Any], module: str) -> tuple[int, float, float]:
    """(r, alpha, scaling) PEFT uses for `module`."""
    r = pattern_value(config.get("rank_pattern") or {}, module) or config["r"]
    alpha = pattern_value(config.get("alpha_pattern") or {}, module)
    alpha = config.get("lora_alpha", r) if alpha is None else alpha
    if config.get("peft_type") == "SHIRA":
        return int(r), float(alpha), 1.0
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return int(r), float(alpha), float(scaling)


def _load_peft_native(folder: Path, config: dict[str, Any], base_dir: str | Path | None) -> AdapterTensors:
    """Another PEFT type: peft's own layers, built on the meta device over the base's config (peft_layers.py)."""
    from converters import peft_native
    from converters.keys import PEFT_PREFIX
    from converters.methods import tuners

    from .peft_layers import load_layers

    peft_type = str(config.get("peft_type"))
    refusal = tuners.merge_refusal(peft_type)
    if refusal is not None:
        raise AdapterError(refusal)
    if base_dir is None:
        raise AdapterError(f"{folder}: a {peft_type} adapter is merged through peft's own layers, which are built on "
                           "the base model's config: pass the base model folder (base_dir)")
    built = load_layers(folder, base_dir)
    result = AdapterTensors(config, peft_layers=built)
    for module, layer in built.layers.items():
        result.modules[module] = ModuleAdapter(module, "peft", 0, 0.0, 1.0, layer=layer, peft_type=peft_type)
    tuner = peft_native.tuner_for(peft_type)
    for key, tensor in built.tensors.items():
        if not key.startswith(PEFT_PREFIX) or peft_native.module_of(tuner, key) is not None:
            continue  # a tuner layer's own tensor, or a shared one at the root of peft's model
        result.replacements[key[len(PEFT_PREFIX):]] = tensor  # modules_to_save copies, bias="all" biases
    return result


def load_adapter(folder: str | Path, device: str | torch.device = "cpu", *,
                 base_dir: str | Path | None = None) -> AdapterTensors:
    """Every tensor of the PEFT adapter in `folder`, grouped by module.

    LoRA and SHiRA are read by hand (zero-copy maths in lora_math.py); every other type peft can merge
    is built by peft on the meta device over the base model at `base_dir` (required for those)."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterError(f"{folder}: no {CONFIG_NAME}; pass a PEFT adapter folder (convert Swift checkpoints first)")
    config = read_json(config_path)
    if "swift_type" in config:
        raise AdapterError(f"{config_path}: a Swift config; convert the checkpoint to PEFT first")
    if config.get("peft_type") not in ("LORA", "SHIRA"):
        return _load_peft_native(folder, config, base_dir)
    weights = folder / SAFETENSORS_NAME
    if not weights.is_file():
        raise AdapterError(f"{folder}: no {SAFETENSORS_NAME}")
    result = AdapterTensors(config)
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    with safe_open(str(weights), framework="pt", device=str(device)) as f:
        for key in f.keys():
            parsed = GRAMMAR.parse_peft(key)
            if parsed is None:
                raise AdapterError(f"{weights}: key {key!r} lacks the base_model.model. prefix")
            tensor = f.get_tensor(key)
            if parsed.role is None:
                result.replacements[parsed.module] = tensor
                continue
            role = parsed.role.name
            entry = result.modules.get(parsed.module)
            if entry is None:
                kind: Kind = ("embedding" if role.startswith("lora_embedding") else
                              "shira" if role.startswith("shira") else "linear")
                r, alpha, scaling = module_scaling(config, parsed.module)
                entry = ModuleAdapter(parsed.module, kind, r, alpha, scaling,
                                      fan_in_fan_out=fan_in_fan_out and kind == "linear")
                result.modules[parsed.module] = entry
            if role == "lora_A" and parsed.param == "bias":
                raise AdapterError(f"{weights}: {key} is a lora_A bias; PEFT's LoRA has biases only on lora_B")
            if role in ("lora_A", "lora_embedding_A"):
                entry.A = tensor
            elif role in ("lora_B", "lora_embedding_B"):
                if parsed.param == "bias":
                    entry.lora_bias = tensor
                else:
                    entry.B = tensor
            elif role == "lora_magnitude_vector":
                entry.magnitude = tensor
            elif role == "shira_weight":
                entry.shira_weight = tensor
            elif role == "shira_indices":
                entry.shira_indices = tensor
    for entry in result.modules.values():
        if entry.kind == "shira":
            if entry.shira_weight is None or entry.shira_indices is None:
                raise AdapterError(f"{weights}: module {entry.module} has only one of shira_weight/shira_indices")
            continue
        if entry.A is None or entry.B is None:
            raise AdapterError(f"{weights}: module {entry.module} has only one of its A/B factors")
        if entry.A.dim() != 2 or entry.B.dim() != 2:
            raise AdapterError(f"{weights}: module {entry.module} has {entry.A.dim()}-D factors (convolution LoRA); "
                               "the worker handles Linear, Conv1D and Embedding LoRA only")
        if entry.A.shape[0] != entry.r or entry.B.shape[1] != entry.r:
            raise AdapterError(f"{weights}: module {entry.module} has factors of rank {entry.A.shape[0]}/"
                               f"{entry.B.shape[1]} but its config gives rank {entry.r} (r or rank_pattern); "
                               "the scaling would be wrong")
    return result
