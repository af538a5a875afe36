"""Where the worker computes and in which precision.

Storage dtype and compute dtype are different things: a bf16 checkpoint is merged in float32 (or
float64 for checks) and rounded once at the end (DESIGN.md section 6). These two helpers turn the
user's words into torch objects and refuse anything else with a message that says what is allowed.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

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


@contextlib.contextmanager
def exact_math(device: torch.device | str = "cpu") -> Iterator[None]:
    """Full float32 arithmetic for the duration of a merge on `device`, then the caller's settings back.

    On CUDA, torch may run float32 matmuls in TF32 (10-bit mantissa inputs) or in bf16x3 when allowed
    (`torch.backends.cuda.matmul.allow_tf32`, `set_float32_matmul_precision`), and cuDNN convolutions
    in TF32: a merge doing that would not be PEFT's float32 arithmetic, and would differ from the CPU
    by far more than a summation order. This turns all of them off ("highest"), and turns off the
    reduced-precision reductions of fp16/bf16 GEMMs (not used by the merge, which computes in float32,
    but the output check runs half-precision models). On the CPU it only sets the matmul precision,
    which CPU kernels ignore, so the same code path runs everywhere.
    """
    dev = torch.device(device)
    matmul = torch.backends.cuda.matmul
    saved = (torch.get_float32_matmul_precision(), matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction)
    torch.set_float32_matmul_precision("highest")
    if dev.type == "cuda":
        matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        matmul.allow_fp16_reduced_precision_reduction = False
        matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        if dev.type == "cuda":
            matmul.allow_tf32 = saved[1]
            torch.backends.cudnn.allow_tf32 = saved[2]
            matmul.allow_fp16_reduced_precision_reduction = saved[3]
            matmul.allow_bf16_reduced_precision_reduction = saved[4]


@contextlib.contextmanager
def merge_threads(device: torch.device | str = "cpu") -> Iterator[int]:
    """Intra-op threads for a streamed merge on the CPU: half the cores (at least one), the caller's count back after.

    The merge works in cache-sized blocks, each a handful of small elementwise operations; every one of them
    is a parallel region whose threads wait for the slowest. Beside it a writer thread keeps the disk busy.
    On the 2-core bench machine with other work running (load average 9-10), two torch threads took 70-83 s
    for the bench's merge (27-33 s of CPU, most of it spinning) and one thread 10 s (3.6-4.0 s of CPU).
    So: half the cores for the maths, the rest for I/O and for everyone else; blocks grow with the threads.
    Yields the count. On CUDA nothing changes (the host only feeds the GPU).
    """
    dev = torch.device(device)
    before = torch.get_num_threads()
    if dev.type != "cpu":
        yield before
        return
    count = max(1, min(before, (os.cpu_count() or 2) // 2))
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)
