"""GPU failures under tensor work, as the registry's errors: out of memory, and a GPU lost mid-job.

torch reports both as exceptions deep in a shard's maths (torch.cuda.OutOfMemoryError; torch.AcceleratorError
or a RuntimeError "CUDA error: ..." for the rest), which a user would meet as a traceback. `on_device` wraps
one shard's work and turns them into DeviceOutOfMemoryError (naming the shard, the memory it needed and what
to try) or DeviceLostError (registry/errors.py); the merge writes into a temporary folder that is dropped on
any exception, so either way nothing partial is pushed or left, and a job records a retryable failure.

Fault injection, so this is tested without a GPU: `SWIFTREG_FAILPOINTS=merge:shard=oom` (or `=gpu-lost`;
`merge:shard@2=oom` for the second shard only) raises the very exception torch would, from inside `on_device`,
in the real code path.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import torch

from .. import failpoints
from ..errors import DeviceLostError, DeviceOutOfMemoryError

#: the failpoint inside each shard's work (registry/failpoints.py: action)
FAILPOINT = "merge:shard"
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_ASKED = re.compile(r"Tried to allocate ([0-9.]+) ([KMGT]?i?B)")
_LOST = ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "CUDA driver error", "device-side assert",
         "an illegal memory access", "unspecified launch failure")


def human(nbytes: int | None) -> str:
    """1.5 GiB, 300 MiB: the sizes an error message names."""
    if nbytes is None:
        return "an unknown amount"
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if nbytes >= _UNITS[unit]:
            return f"{nbytes / _UNITS[unit]:.1f} {unit}"
    return f"{nbytes} B"


def asked_bytes(message: str) -> int | None:
    """What the failed allocation asked for, from torch's message ("Tried to allocate 2.00 GiB")."""
    found = _ASKED.search(message)
    if found is None:
        return None
    return int(float(found.group(1)) * _UNITS.get(found.group(2), 1))


def is_device_lost(exc: BaseException) -> bool:
    """A CUDA failure other than out of memory (torch.AcceleratorError, or a RuntimeError naming CUDA)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    accelerator = getattr(torch, "AcceleratorError", None)
    if accelerator is not None and isinstance(exc, accelerator):
        return True
    return isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in _LOST)


def out_of_memory(exc: BaseException, device: torch.device | str, shard: str | None,
                  needed_bytes: int | None = None) -> DeviceOutOfMemoryError:
    """The registry's error for a CUDA out-of-memory: where, which shard, how much, and what to try."""
    asked = asked_bytes(str(exc))
    needed = needed_bytes if needed_bytes is not None else asked
    where = f" while working on shard {shard}" if shard else ""
    free = ""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()  # what the failed attempt held goes back before a retry
            free_bytes, total = torch.cuda.mem_get_info(dev)
            free = f"; {human(free_bytes)} free of {human(total)} now"
        except RuntimeError:
            pass
    return DeviceOutOfMemoryError(
        f"CUDA out of memory on {dev}{where}: it needed {human(needed)}"
        + (f" (the failed allocation asked for {human(asked)})" if asked and asked != needed else "")
        + f"{free}. Nothing was written or pushed. Try: a base saved in smaller shards (max_shard_size), "
        "a GPU with more free memory (other processes hold some), or --device cpu; the job can be retried.",
        device=str(dev), shard=shard, needed_bytes=needed)


def device_lost(exc: BaseException, device: torch.device | str, shard: str | None) -> DeviceLostError:
    """The registry's error for a GPU that failed mid-work."""
    where = f" while working on shard {shard}" if shard else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DeviceLostError(
        f"the GPU {torch.device(device)} failed{where}: {first[:300]}. Nothing was written or pushed; the job can "
        "be retried (on another GPU, after the GPU is reset, or with --device cpu).",
        device=str(torch.device(device)), shard=shard)


def inject(device: torch.device | str, shard: str | None, count: int | None) -> None:
    """Raise the fault armed at FAILPOINT for this shard, as torch would raise it (tests)."""
    what = failpoints.action(FAILPOINT, count)
    if what == "oom":
        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            f"1.50 GiB is free. (injected by SWIFTREG_FAILPOINTS at {FAILPOINT}, shard {shard})")
    if what == "gpu-lost":
        raise RuntimeError(f"CUDA error: unspecified launch failure (injected by SWIFTREG_FAILPOINTS at "
                           f"{FAILPOINT}, shard {shard})")


@contextmanager
def on_device(device: torch.device | str, *, shard: str | None = None, needed_bytes: int | None = None,
              count: int | None = None) -> Iterator[None]:
    """Run one shard's work; a CUDA out-of-memory or CUDA error leaves as DeviceOutOfMemoryError or
    DeviceLostError naming `shard` (`count`: its 1-based position, for `merge:shard@N` failpoints)."""
    try:
        inject(device, shard, count)
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise out_of_memory(exc, device, shard, needed_bytes) from None
    except RuntimeError as exc:
        if is_device_lost(exc):
            raise device_lost(exc, device, shard) from None
        raise
