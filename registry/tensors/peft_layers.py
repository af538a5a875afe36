"""peft's own tuner layers, one module at a time: how every non-LoRA type is merged and unmerged.

The streamed merge (merge.py) has hand-written math for LoRA, DoRA and SHiRA only. For every other type
that has weights to merge (LoHa, LoKr, IA3, VeRA, OFT, BOFT, AdaLoRA, FourierFT, HRA, MiSS, C3A, RandLoRA,
...), peft itself builds the model for the adapter's config on the base model's config, its base weights
zeros over pages the kernel never commits (no base weight is read, none occupies memory: `_zeros`), the
adapter's tensors are loaded into it (assigned, not copied), and then, as the merge streams the base
shard by shard, each base weight the adapter touches is
put into its tuner layer for the moment of that layer's own `merge()` (or `unmerge()`), in float32 (or
float64), and taken out again:

    W (from the shard) -> layer.base_layer.weight = W -> layer.merge() -> W' -> rounded once, written

So the arithmetic is peft's, layer by layer (a float32 merge equals peft's merge_and_unload of the same
layer), and peak memory stays one shard's tensor plus the adapter, as for LoRA. What cannot be done this
way is refused in one line naming the type or module: a type that cannot merge (tuners.py says why: among
them the types peft initialises from the base weights themselves), adapter state the file does not hold,
a layer whose merge would change its bias.
"""
from __future__ import annotations

import mmap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from converters import peft_native
from converters.config import CONFIG_NAME, read_json
from converters.layout import SAFETENSORS_NAME
from converters.methods import tuners

from .errors import AdapterError, MergeError, NotInvertibleError, ShapeMismatchError

ADAPTER = "default"


@dataclass
class PeftLayers:
    """A PeftModel skeleton (meta device) holding one adapter's real tensors, and its tuner layers by module."""

    peft_type: str
    config: dict[str, Any]
    model: Any
    layers: dict[str, Any] = field(default_factory=dict)        # module path -> peft tuner layer
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # the file's tensors, for checks


def _tuner_layers(model: Any) -> dict[str, Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    inner = model.base_model.model
    return {name: module for name, module in inner.named_modules()
            if isinstance(module, BaseTunerLayer) and ADAPTER in _adapter_names(module)}


def _adapter_names(layer: Any) -> set[str]:
    names: set[str] = set()
    for attr in getattr(layer, "adapter_layer_names", ()):
        value = getattr(layer, attr, None)
        if isinstance(value, (nn.ModuleDict, nn.ParameterDict, dict)):
            names.update(value.keys())
    return names


def load_layers(adapter_dir: str | Path, base_dir: str | Path) -> PeftLayers:
    """Build peft's model for the adapter at `adapter_dir` on the base at `base_dir`, on the meta device."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    config = read_json(adapter_dir / CONFIG_NAME)
    peft_type = str(config.get("peft_type"))
    refusal = tuners.merge_refusal(peft_type)
    if refusal is not None:
        raise MergeError(refusal)
    unknown = peft_native.unknown_type(peft_type)
    if unknown is not None:
        raise MergeError(unknown)
    weights = adapter_dir / SAFETENSORS_NAME
    if not weights.is_file():
        raise AdapterError(f"{adapter_dir}: no {SAFETENSORS_NAME}")
    tensors = load_file(str(weights))
    try:
        model = _build(config, base_dir)
    except Exception as exc:  # noqa: BLE001 - peft's own refusal, said in one line
        if isinstance(exc, ValueError) and "not found in the base model" in str(exc):
            raise ShapeMismatchError(f"tuner type {peft_type}: peft finds none of its target modules in the base "
                                     "model: is this adapter for another base model?") from None
        raise MergeError(f"tuner type {peft_type}: peft cannot build it without the base weights "
                         f"({type(exc).__name__}: {str(exc)[:200]}); the streamed merge never loads them "
                         "whole") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Assigned, not copied: the adapter's tensors become the layers' own.
        result = set_peft_model_state_dict(model, tensors, adapter_name=ADAPTER, low_cpu_mem_usage=True)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if ADAPTER in k or "base_model" in k]
    if unexpected:
        raise AdapterError(f"{weights}: {len(unexpected)} tensors match nothing in peft's {peft_type} model for "
                           f"this base, e.g. {unexpected[0]} (is the adapter for another base model?)")
    layers = _tuner_layers(model)
    if not layers:
        raise MergeError(f"tuner type {peft_type}: peft's model for this config has no tuner layer to merge")
    return PeftLayers(peft_type, config, model, layers, tensors)


def _build(config: dict[str, Any], base_dir: Path) -> Any:
    """peft's model for `config` over the base's config: base weights as zero pages, the adapter's layers real."""
    import json

    from peft import get_peft_model
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(base_dir)
    cls = peft_native.auto_class(config, json.loads((base_dir / "config.json").read_text()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            model = cls.from_config(hf_config)
        _zero_pages(model)
        return get_peft_model(model, peft_native.config_object(config))


def _zeros(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of zeros over an anonymous private mapping: the kernel backs every page with its one shared
    zero page until the page is written, so reading it costs no memory (a 1 GB tensor read whole left the
    process's peak RSS unchanged)."""
    numel = shape.numel()
    if numel == 0:
        return torch.zeros(shape, dtype=dtype)
    size = numel * torch.empty(0, dtype=dtype).element_size()
    pages = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.frombuffer(pages, dtype=dtype, count=numel).reshape(shape)


def _zero_pages(model: nn.Module) -> None:
    """Every meta parameter and buffer of the base model becomes zeros on the CPU that occupy no memory.

    peft builds its layers next to the base weights: on the meta device, state it derives at init from the
    shapes (OFT's block indices, UniLoRA's index tables) would stay on meta; over real zero pages it lands on
    the CPU. Nothing writes the base weights while peft builds (types that initialise from the base weights
    are refused in tuners.py), and each is replaced by the streamed shard's tensor when its layer merges."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.device.type == "meta":
                module._parameters[name] = nn.Parameter(_zeros(param.shape, param.dtype), requires_grad=False)
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device.type == "meta":
                module._buffers[name] = _zeros(buf.shape, buf.dtype)


def _meta_state(layer: Any) -> list[str]:
    """Adapter state of `layer` still on the meta device (not in the file, not rebuilt)."""
    left = []
    for name, tensor in [*layer.named_parameters(), *layer.named_buffers()]:
        if name.startswith("base_layer.") or ".base_layer." in name:
            continue
        if tensor.device.type == "meta" and (f".{ADAPTER}" in f".{name}" or ADAPTER not in name):
            left.append(name)
    return left


def check_layer(peft_type: str, module: str, layer: Any, shape: tuple[int, ...]) -> None:
    """Refuse, naming the module, what this layer cannot merge into a base weight of `shape`."""
    base = layer.get_base_layer()
    weight = getattr(base, "weight", None)
    if weight is None:
        raise MergeError(f"module {module}: peft's {peft_type} layer wraps a {type(base).__name__} without a weight")
    if tuple(weight.shape) != tuple(shape):
        raise MergeError(f"module {module}: peft's {peft_type} layer wraps a weight of shape {tuple(weight.shape)} but "
                         f"the base checkpoint's is {tuple(shape)}: is this adapter for another base model?")
    if peft_type in ("LN_TUNING", "BEFT") and getattr(base, "bias", None) is not None:
        raise MergeError(f"module {module}: {peft_type} would also replace the layer's bias, which the streamed "
                         "merge does not change")
    left = _meta_state(layer)
    if left:
        raise MergeError(f"module {module}: peft's {peft_type} layer needs {', '.join(left[:3])}, which the adapter "
                         "file does not hold (for VeRA-like types: save the projection, save_projection=True)")


def _swap_weight(layer: Any, W: torch.Tensor) -> tuple[Any, nn.Parameter]:
    base = layer.get_base_layer()
    saved = base.weight
    base.weight = nn.Parameter(W, requires_grad=False)
    return base, saved


def merged(layer: Any, W: torch.Tensor, *, sign: int, module: str, peft_type: str) -> torch.Tensor:
    """W with the adapter merged into it (sign > 0) or unmerged from it (sign < 0) by peft's own layer."""
    base, saved = _swap_weight(layer, W)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if sign > 0:
                layer.merge(adapter_names=[ADAPTER])
            else:
                layer.merged_adapters = [ADAPTER]
                try:
                    layer.unmerge()
                except Exception as exc:  # noqa: BLE001 - peft's layer cannot do it: one line, named
                    raise NotInvertibleError(f"module {module}: peft's {peft_type} layer cannot unmerge "
                                             f"({type(exc).__name__}: {exc}); unmerge by lineage returns the "
                                             "original base instead") from None
        result = layer.get_base_layer().weight.data
        if result.device.type == "meta":
            raise MergeError(f"module {module}: peft's {peft_type} merge used state that is not loaded")
        return result
    finally:
        if getattr(layer, "merged_adapters", None):
            if peft_type == "LN_TUNING":  # its merge swaps base and adapter layers: swap them back
                layer.unmerge()
            layer.merged_adapters = []
        base.weight = saved


__all__ = ["PeftLayers", "load_layers", "check_layer", "merged"]
