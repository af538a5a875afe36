"""Legacy `adapter_model.bin` files: read with `torch.load(weights_only=True)`, never unpickled freely.

torch is imported here, lazily, and only when a checkpoint actually has a .bin file: everything
else in the format layer works on JSON and bytes. Both of torch.save's formats are read: the zip
format memory-mapped, the old one (`_use_new_zipfile_serialization=False`, which cannot be mapped)
loaded whole, both with weights_only=True. A file that is not plain tensors is refused with torch's
reason, never with its advice to load it with weights_only=False (that would run the pickle's code).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UnsafePickleError
from .finite import NonFinite

if TYPE_CHECKING:
    import torch

#: torch dtype name -> safetensors dtype name.
TORCH_TO_SAFETENSORS = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "uint16": "U16", "uint32": "U32", "uint64": "U64",
}


def load_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    """The tensors of a .bin checkpoint; anything but a flat str -> tensor mapping is refused."""
    try:
        import torch
    except ImportError:  # pragma: no cover - the ml extra is part of every environment we build
        raise UnsafePickleError("reading a legacy .bin checkpoint needs torch (pip install 'swiftreg[ml]')",
                                path) from None
    try:
        import zipfile  # here: it (and shutil under it) would cost every command's start ~3 ms

        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError...: all mean "not plain weights"
        raise UnsafePickleError(
            f"not loadable as plain tensors with torch.load(weights_only=True), so it was not unpickled: "
            f"{refusal_reason(exc)}", path) from None
    if not isinstance(state, dict):
        raise UnsafePickleError(f"holds a {type(state).__name__}, not a mapping of tensor names to tensors", path)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UnsafePickleError(f"entry {str(key)[:100]!r} is a {type(value).__name__}, not a tensor", path)
        if str(value.dtype).removeprefix("torch.") not in TORCH_TO_SAFETENSORS:
            raise UnsafePickleError(f"tensor {key!r} has dtype {value.dtype}, which safetensors cannot hold", path)
    return state


#: torch's refusals explain how to load the file anyway; the reason itself follows "WeightsUnpickler error:".
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\s*Please use|\s*Check the documentation|$)",
                               re.S)


def refusal_reason(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, without torch's advice to retry with
    weights_only=False or to allowlist the file's classes (either would run the pickle's code)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    found = _UNPICKLER_REASON.search(text)
    reason = " ".join(found.group(1).split()) if found else (text.splitlines() or [""])[0]
    if not reason or re.search(r"weights_only|trust|add_safe_globals|safe_globals", reason):
        reason = f"{type(exc).__name__} (it holds more than tensors)"
    return reason[:300]


def nonfinite(state: dict[str, "torch.Tensor"]) -> list[NonFinite]:
    """The tensors of a loaded state dict that hold NaN or Inf (converters/finite.py reads safetensors files)."""
    import torch

    found = []
    for name, tensor in state.items():
        if not (tensor.is_floating_point() or tensor.is_complex()) or not tensor.numel():
            continue
        if tensor.element_size() == 1:  # float8: torch tests them only once widened
            tensor = tensor.to(torch.float32)
        if bool(torch.isfinite(tensor).all()):
            continue
        found.append(NonFinite(name, int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum()), tensor.numel()))
    return found


def dtype_name(tensor: "torch.Tensor") -> str:
    return TORCH_TO_SAFETENSORS[str(tensor.dtype).removeprefix("torch.")]


def save_safetensors(tensors: dict[str, "torch.Tensor"], path: Path, metadata: dict[str, str] | None) -> None:
    """Write tensors as safetensors; tensors that share storage get their own copy first."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    ready = {}
    for name, tensor in tensors.items():
        tensor = tensor.contiguous()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        ready[name] = tensor
    save_file(ready, str(path), metadata=metadata or {"format": "pt"})
