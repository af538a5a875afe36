"""SHiRA fusion: a linear combination of SHiRA adapters is exactly one SHiRA adapter over the union of their masks.

A SHiRA delta is sparse: dW_i = sparse(indices_i, values_i) (peft's scaling is 1.0). So

    sum_i w_i dW_i = sparse(union of the masks, sum_i w_i values_i)    (values summed where masks overlap)

with no approximation. peft fixes a SHiRA layer's value count by `r`: r * (in + out) values per module,
one config `r` for every module. The fused adapter takes the smallest `r` whose count holds the largest
union (and refuses when that would exceed in * out, which peft refuses too). The slots left over in each
module are filled with the value 0, so they add nothing to the delta:

- with the base model's shapes (a `--base-model` to check against): at positions outside the union, the
  first free ones in row-major order, so the result is an ordinary SHiRA mask of distinct positions (a
  continued training would train them, starting from 0);
- without them: at the union's last position again (a zero added twice changes nothing; peft's sparse
  add sums duplicates), which is exact but leaves that position counted more than once.

Indices are written sorted row-major, int32 like peft's own; values in the sources' dtype (float32 when
they differ). The result is written by adapter_io.save_adapter and loads in the installed peft as an
ordinary SHiRA checkpoint.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch

from .adapter_tensors import AdapterTensors, ModuleAdapter
from .errors import CombineError

METHODS = ("linear", "cat")  # cat is the same union for SHiRA: both mean sum_i w_i dW_i exactly


def _sum_in_out(adapter: AdapterTensors, entry: ModuleAdapter) -> int:
    """in + out of the module, from SHiRA's own count (r * (in + out) values)."""
    assert entry.shira_weight is not None
    r = int(adapter.config.get("r") or 0)
    count = entry.shira_weight.numel()
    if r <= 0 or count % r:
        raise CombineError(f"module {entry.module}: {count} SHiRA values are not r * (in + out) for r = {r}")
    return count // r


def fuse(adapters: Sequence[AdapterTensors], weights: Sequence[float], method: str = "linear", *,
         shapes: dict[str, tuple[int, int]] | None = None) -> tuple[AdapterTensors, list[str]]:
    """The fused SHiRA adapter and notes on how it was built (r chosen, slots filled)."""
    if method not in METHODS:
        raise CombineError(f"SHiRA adapters combine by linear (their deltas summed exactly, over the union of the "
                           f"masks); {method!r} is a LoRA-factor method with no meaning for a sparse delta")
    for i, a in enumerate(adapters):
        if a.peft_type != "SHIRA":
            raise CombineError(f"source {i} is {a.peft_type}: SHiRA fusion combines SHiRA adapters only")
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    sizes: dict[str, int] = {}
    dtypes = {e.shira_weight.dtype for a in adapters for e in a.modules.values() if e.shira_weight is not None}
    value_dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    for a, w in zip(adapters, weights):
        for name, entry in a.modules.items():
            if entry.kind != "shira" or entry.shira_weight is None or entry.shira_indices is None:
                raise CombineError(f"module {name}: not a SHiRA module")
            size = _sum_in_out(a, entry)
            if sizes.setdefault(name, size) != size:
                raise CombineError(f"module {name}: the sources disagree on its shape (in + out {sizes[name]} vs "
                                   f"{size}): are they for the same base model?")
            idx = entry.shira_indices.to(torch.int64)
            parts.setdefault(name, []).append(((idx[0] << 32) | idx[1],
                                               entry.shira_weight.to(torch.float64) * float(w) * entry.scaling))
    if not parts:
        raise CombineError("the sources have no SHiRA modules")
    unions: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, pieces in parts.items():
        keys = torch.cat([k for k, _ in pieces])
        union, inverse = torch.unique(keys, sorted=True, return_inverse=True)  # row-major: the row is the high half
        unions[name] = (union, torch.zeros(union.numel(), dtype=torch.float64).index_add_(
            0, inverse, torch.cat([v for _, v in pieces])))
    largest = max(u.numel() for u, _ in unions.values())
    r = max(1, max(math.ceil(u.numel() / sizes[name]) for name, (u, _) in unions.items()))
    notes = [f"SHiRA fusion: sum_i w_i dW_i written exactly as one SHiRA adapter over the union of the masks; "
             f"r = {r} (the smallest whose r * (in + out) holds the largest union, {largest} positions)"]
    config = copy.deepcopy(adapters[0].config)
    config["r"] = r
    targets = [a.config.get("target_modules") for a in adapters]
    if all(isinstance(t, list) for t in targets):
        config["target_modules"] = sorted({m for t in targets for m in t})  # type: ignore[union-attr]
    result = AdapterTensors(config)
    filled_distinct = filled_repeat = 0
    for name, (union, values) in sorted(unions.items()):
        slots = r * sizes[name]
        shape = (shapes or {}).get(name)
        if shape is not None and slots > shape[0] * shape[1]:
            raise CombineError(f"module {name}: the union needs r = {r}, whose {slots} values exceed the "
                               f"{shape[0]} x {shape[1]} weight; peft refuses such a SHiRA layer")
        spare = slots - union.numel()
        if spare:
            if shape is not None:
                flat = torch.arange(spare + union.numel(), dtype=torch.int64)
                candidates = ((flat // shape[1]) << 32) | (flat % shape[1])
                extra = candidates[~torch.isin(candidates, union)][:spare]
                filled_distinct += spare
            else:
                extra = union[-1:].repeat(spare)
                filled_repeat += spare
            keys = torch.cat([union, extra])
            order = torch.argsort(keys, stable=True)
            union, values = keys[order], torch.cat([values, torch.zeros(spare, dtype=torch.float64)])[order]
        indices = torch.stack([union >> 32, union & 0xFFFFFFFF]).to(torch.int32)
        result.modules[name] = ModuleAdapter(name, "shira", r, float(r), 1.0, shira_weight=values.to(value_dtype),
                                             shira_indices=indices)
    if filled_distinct:
        notes.append(f"{filled_distinct} spare slots filled with 0 at free positions (row-major), so the mask is an "
                     "ordinary one of distinct positions and the delta is unchanged")
    if filled_repeat:
        notes.append(f"{filled_repeat} spare slots filled with 0 at each module's last union position (no base model "
                     "shapes to pick free positions from): the delta is unchanged")
    return result, notes


__all__ = ["fuse", "METHODS"]
