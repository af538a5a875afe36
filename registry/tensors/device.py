"""Where the worker computes and in which precision.

Storage dtype and compute dtype are different things: a bf16 checkpoint is merged in float32 (or
float64 for checks) and rounded once at the end (DESIGN.md section 6). These two helpers turn the
user's words into torch objects and refuse anything else with a message that says what is allowed.
"""
from __future__ import annotations

import torch

from .errors import DeviceError

#: Compute precisions the worker accepts; anything narrower than float32 would round twice.
PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

#: Storage dtypes a merged checkpoint may be written in (`--dtype`), with their common spellings.
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """`auto`: the first CUDA device when there is one, else the CPU. `cuda` without CUDA is an error,
    never a silent fallback: a user who asked for the GPU should learn that they did not get it."""
    if isinstance(name, torch.device):
        name = str(name)
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA "
                              "device; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise DeviceError(f"device {name!r} asked for, but only {count} CUDA device(s) exist")
    elif device.type != "cpu":
        raise DeviceError(f"device type {device.type!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def compute_dtype(precision: str = "float32") -> torch.dtype:
    """The dtype deltas are computed and added in: float32 (PEFT's own, bit-compatible) or float64."""
    try:
        return PRECISIONS[precision.strip().lower()]
    except (KeyError, AttributeError):
        raise DeviceError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}") from None


def storage_dtype(name: str | None) -> torch.dtype | None:
    """The dtype a merged checkpoint is written in; None keeps every tensor's own dtype."""
    if name is None:
        return None
    try:
        return STORAGE_DTYPES[name.strip().lower()]
    except (KeyError, AttributeError):
        raise DeviceError(f"dtype {name!r}: use bf16, fp16 or fp32 (or none to keep each tensor's)") from None
