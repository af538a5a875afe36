"""Non-finite numbers (NaN, Inf) in an adapter's config and tensors, found without torch.

Python's json reads `NaN` and `Infinity`, and a training run that diverged saves NaN weights; neither
is a format error, and both would travel through conversion, push and serving unnoticed. So
`converters.validate` (and with it every push) asks here.

Tensors are read straight from the safetensors file, tensor by tensor, in fixed-size chunks into one
reused buffer, and tested by their bits: a float is non-finite exactly when every exponent bit is
set (IEEE 754 widths and bfloat16 alike: bfloat16, which numpy has no dtype for, is read as uint16
like every other 16-bit format); its mantissa then tells NaN from Inf. numpy does the test where it
is installed (it comes with the `ml` extra); without it the same test runs on Python integers used
as wide bit vectors, so a core-only install (`pip install swiftreg`, a server) checks the same
values, about ten times slower. A .bin checkpoint is already in torch's hands: torch tests it
(`legacy_bin.nonfinite`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .safetensors_io import SafetensorsFile

#: safetensors dtype -> (bytes per lane, exponent mask, whether the format has an Inf). A lane is
#: non-finite when `lane & mask == mask`; below the mask lies the mantissa (non-zero: NaN). C64 is
#: two F32 lanes. The 4- and 6-bit floats encode no NaN or Inf, integers neither.
LANES: Mapping[str, tuple[int, int, bool]] = {
    "F64": (8, 0x7FF0_0000_0000_0000, True), "C64": (4, 0x7F80_0000, True), "F32": (4, 0x7F80_0000, True),
    "F16": (2, 0x7C00, True), "BF16": (2, 0x7F80, True), "F8_E5M2": (1, 0x7C, True),
    "F8_E4M3": (1, 0x7F, False),  # e4m3fn: S.1111.111 is NaN, there is no Inf
    "F8_E8M0": (1, 0xFF, False),  # an exponent only: 0xFF is NaN
}
#: Bytes read per step: large enough that the per-chunk overhead vanishes, small enough to stay in cache.
CHUNK = 8 << 20


@dataclass(frozen=True)
class NonFinite:
    """One tensor holding non-finite values: how many NaN, how many +-Inf, out of how many values."""

    name: str
    nan: int
    inf: int
    numel: int

    def __str__(self) -> str:
        parts = [f"{n:,} {what}" for n, what in ((self.nan, "NaN"), (self.inf, "Inf")) if n]
        return f"{self.name}: {' and '.join(parts)} among {self.numel:,} values"


def config_fields(config: Any, prefix: str = "config") -> list[tuple[str, str]]:
    """Every number in a config (nested objects and lists, rank/alpha patterns included) that is NaN or
    +-Inf: (the path of its field, how JSON writes it), e.g. ("config.alpha_pattern['q_proj']", "NaN")."""
    found: list[tuple[str, str]] = []
    if isinstance(config, float):
        if not math.isfinite(config):
            found.append((prefix, "NaN" if math.isnan(config) else "Infinity" if config > 0 else "-Infinity"))
    elif isinstance(config, Mapping):
        for key, value in config.items():
            where = f"{prefix}.{key}" if prefix == "config" and isinstance(key, str) and key.isidentifier() \
                else f"{prefix}[{key!r}]"
            found += config_fields(value, where)
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            found += config_fields(value, f"{prefix}[{i}]")
    return found


def scan_safetensors(header: SafetensorsFile, *, use_numpy: bool | None = None) -> list[NonFinite]:
    """The tensors of a (validated) safetensors file that hold NaN or Inf, in file order.

    `use_numpy`: None uses numpy when it is installed; False forces the pure-Python test (for tests).
    """
    np: Any = None
    if use_numpy is not False:
        try:
            import numpy as np
        except ImportError:
            if use_numpy:
                raise
    found: list[NonFinite] = []
    buffer = bytearray(CHUNK)
    with open(header.path, "rb", buffering=0) as f:
        for entry in header.tensors:
            lanes = LANES.get(entry.dtype)
            if lanes is None or not entry.nbytes:
                continue
            width, mask, has_inf = lanes
            nan = inf = 0
            f.seek(header.data_start + entry.begin)
            left = entry.nbytes
            while left:
                view = memoryview(buffer)[:min(left, CHUNK)]
                if f.readinto(view) != len(view):
                    raise OSError(f"{header.path} changed while it was read: it ended {left} bytes early")
                n, i = _count_numpy(np, view, width, mask) if np is not None else _count_ints(view, width, mask)
                nan, inf = nan + n, inf + i
                left -= len(view)
                view.release()
            if not has_inf:
                nan, inf = nan + inf, 0
            if nan or inf:
                found.append(NonFinite(entry.name, nan, inf, entry.numel))
    return found


def _count_numpy(np: Any, chunk: memoryview, width: int, mask: int) -> tuple[int, int]:
    """(NaN, Inf) lanes of `chunk`, by numpy."""
    lanes = np.frombuffer(chunk, dtype=np.dtype(f"<u{width}"))
    hit = (lanes & np.array(mask, dtype=lanes.dtype)) == mask
    total = int(np.count_nonzero(hit))
    if not total:
        return 0, 0
    mantissa = (mask & -mask) - 1  # the bits below the exponent
    nan = int(np.count_nonzero(lanes[hit] & np.array(mantissa, dtype=lanes.dtype)))
    return nan, total - nan


def _count_ints(chunk: memoryview, width: int, mask: int) -> tuple[int, int]:
    """(NaN, Inf) lanes of `chunk` without numpy: the chunk as one integer, every lane tested at once.

    z = (x & M) ^ M is zero exactly in the non-finite lanes; adding M sets the bit just above the
    exponent (the sign bit, or the next lane's first bit for E8M0, which is then counted by bytes)
    exactly in the lanes where z is not zero, and no carry crosses a lane.
    """
    if width == 1 and mask == 0xFF:
        return bytes(chunk).count(b"\xff"), 0
    lanes = len(chunk) // width
    x = int.from_bytes(chunk, "little")
    low = mask & -mask                  # the exponent's lowest bit
    above = mask + low                  # the bit just above the exponent
    mantissa = low - 1

    def repeat(value: int) -> int:
        return int.from_bytes(value.to_bytes(width, "little") * lanes, "little")

    m, a = repeat(mask), repeat(above)
    z = (x & m) ^ m
    nonfinite = a & ~(z + m)            # `above` set in the lanes where z is zero
    total = nonfinite.bit_count()
    if not total:
        return 0, 0
    mant = repeat(mantissa)
    nan_lanes = ((x & mant) + mant) & repeat(low)   # `low` set where the mantissa is not zero
    nan = (nan_lanes & (nonfinite >> (above.bit_length() - low.bit_length()))).bit_count()
    return nan, total - nan


def describe(found: Iterable[NonFinite]) -> str:
    """One phrase for a list of non-finite tensors: how many, and the first with its counts."""
    tensors = list(found)
    more = f" (and {len(tensors) - 1} more tensor{'s' if len(tensors) > 2 else ''})" if len(tensors) > 1 else ""
    return f"{len(tensors)} tensor{'s' if len(tensors) != 1 else ''} hold{'s' if len(tensors) == 1 else ''} " \
           f"non-finite values, first {tensors[0]}{more}"
