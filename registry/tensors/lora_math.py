"""The LoRA-family tensor math, as pure functions over tensors.

Every function reproduces PEFT 0.21.2's own operation order (`peft/tuners/lora/layer.py`,
`variants.py`, `dora.py`, `peft/tuners/shira/layer.py`), because floating-point results depend on
it: with the same order, a float32 merge here is bit-identical to PEFT's `merge_and_unload()`.
Where PEFT rounds twice (safe_merge, unmerge, every Embedding merge cast the delta to the storage
dtype before adding it), we deliberately do not: the sum is formed in the compute dtype and rounded
to the storage dtype once (FORMATS.md, "Math PEFT uses"). For float32 storage both are the same.

Shapes (PEFT's conventions; `fan_in_fan_out` is GPT-2's Conv1D, which stores weights as (in, out)):

    linear      A (r, in)              B (out, r)     delta = transpose(B @ A, fan_in_fan_out) * scaling
    embedding   A (r, num_embeddings)  B (dim, r)     delta = (B @ A).T * scaling  -> (num_embeddings, dim)
    DoRA        magnitude (out,)       W_new = m / ||W + delta||_row * (W + delta), rows in (out, in) layout
    SHiRA       weight (nnz,)          indices int (2, nnz): row 0 output index, row 1 input index

Nothing here reads files or knows about checkpoints; `merge.py` streams tensors through these and
`combine.py` builds on `lora_delta`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .adapter_tensors import ModuleAdapter
from .errors import AdapterError

__all__ = [
    "transpose", "lora_product", "delta_layout", "lora_delta", "bias_delta", "add_delta", "sub_delta",
    "dora_weight_norm", "dora_merge",
    "shira_add", "shira_dense",
]


def transpose(weight: Tensor, fan_in_fan_out: bool) -> Tensor:
    """PEFT's `transpose`: a view, so later ops see the same strides PEFT's do (reductions over a
    transposed view may sum in a different order than over a contiguous copy)."""
    return weight.T if fan_in_fan_out else weight


def _factor(t: Tensor | None, what: str, m: ModuleAdapter, dtype: torch.dtype,
            device: torch.device | str | None) -> Tensor:
    if t is None:
        raise AdapterError(f"module {m.module}: no {what} tensor")
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def lora_product(m: ModuleAdapter, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, out: Tensor | None = None) -> Tensor:
    """`B @ A` with both factors upcast to `dtype` first, unscaled and untransposed: (B.rows, A.cols).

    `out`: a preallocated tensor of that shape and `dtype` to compute into (same kernel, same bits),
    so a caller merging tensor after tensor does not pay for fresh pages each time (a fresh 40 MB
    tensor costs more in page faults than the product itself).
    """
    if m.kind == "shira":
        raise AdapterError(f"module {m.module}: SHiRA is a sparse delta; use shira_add or shira_dense")
    A = _factor(m.A, "A", m, dtype, device)
    B = _factor(m.B, "B", m, dtype, device)
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
        raise AdapterError(f"module {m.module}: lora_B {tuple(B.shape)} @ lora_A {tuple(A.shape)} is not a "
                         "rank-r product (conv LoRA is not supported)")
    if out is None:
        return B @ A
    return torch.matmul(B, A, out=out)


def delta_layout(m: ModuleAdapter) -> bool:
    """Whether the delta is the transpose of `B @ A`: Conv1D (fan_in_fan_out) and embeddings."""
    return m.kind == "embedding" or m.fan_in_fan_out


def lora_delta(m: ModuleAdapter, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
    """The dense weight update of a linear or embedding LoRA module, shaped like the base weight.

    Factors are upcast to `dtype` first (PEFT upcasts bf16/fp16 adapters to float32 on load, and on
    CPU computes the product in float32 anyway), then `B @ A`, then the transpose, then the scaling
    as a Python float: exactly PEFT's `get_delta_weight` (`transpose(B @ A, fan_in_fan_out) * scaling`,
    `(B @ A).T * scaling` for embeddings), so float32 results match it bit for bit. The transpose is a
    view, as in PEFT.

    SHiRA has no low-rank factors: use `shira_add` (or `shira_dense` where a dense delta is needed).
    """
    return transpose(lora_product(m, dtype=dtype, device=device), delta_layout(m)) * m.scaling


def bias_delta(m: ModuleAdapter, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor | None:
    """`lora_B.bias * scaling` (lora_bias=True), which PEFT adds to the base bias when merging; or None."""
    if m.lora_bias is None:
        return None
    return _factor(m.lora_bias, "lora_B.bias", m, dtype, device) * m.scaling


def add_delta(weight: Tensor, delta: Tensor, *, out_dtype: torch.dtype | None = None,
              consume_delta: bool = False) -> Tensor:
    """`weight + delta` formed in delta's dtype, rounded once to `out_dtype` (default: weight's dtype).

    Same values as PEFT's default merge `weight.data += delta` (an in-place add promotes to float32,
    adds, and rounds once), and unlike `safe_merge`, which rounds the delta to bf16 first.
    `consume_delta` adds into delta's own buffer (one float32 copy of the weight fewer at peak);
    IEEE addition is commutative, so the bits are the same.
    """
    if consume_delta:
        return delta.add_(weight).to(out_dtype or weight.dtype)
    return (weight.to(delta.dtype) + delta).to(out_dtype or weight.dtype)


def sub_delta(weight: Tensor, delta: Tensor, *, out_dtype: torch.dtype | None = None,
              consume_delta: bool = False) -> Tensor:
    """`weight - delta`, the exact inverse computation of `add_delta` before rounding (one rounding).

    `consume_delta` computes `-(delta - weight)` in delta's buffer: round-to-nearest-even is
    symmetric, so that is `weight - delta` to the bit.
    """
    if consume_delta:
        return delta.sub_(weight).neg_().to(out_dtype or weight.dtype)
    return (weight.to(delta.dtype) - delta).to(out_dtype or weight.dtype)


def dora_weight_norm(weight: Tensor, delta: Tensor, fan_in_fan_out: bool) -> Tensor:
    """||W + delta|| per output row in (out, in) layout, in delta's dtype.

    PEFT's `DoraLinearLayer.get_weight_norm(W, transpose(delta), scaling=1)`: both operands are
    transposed views for Conv1D (and for embeddings, whose DoRA layer is built with
    fan_in_fan_out=True), added, and reduced along dim 1; no epsilon. The norm is detached in PEFT,
    which only matters for gradients.
    """
    total = transpose(weight.to(delta.dtype), fan_in_fan_out) + transpose(delta, fan_in_fan_out)
    return torch.linalg.norm(total, dim=1)


def dora_merge(weight: Tensor, delta: Tensor, magnitude: Tensor, fan_in_fan_out: bool, *,
               norm_weight: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """DoRA's merged weight `(m / ||W + delta||_row) * (W + delta)`, rounded once to `out_dtype`.

    `delta` is `lora_delta(...)` (scaling included, shaped like W) in the compute dtype. The norm is
    taken per output row of W + delta in (out, in) layout. `norm_weight` is the base weight the norm
    is computed from when it differs from `weight`: PEFT 0.21.2 computes it from the *unmerged*
    base weight (`_unmerged_base_weight`), so when several DoRA adapters are merged in turn each
    norm ignores the earlier merges (older PEFT used the current, already merged weight). For one
    adapter merged into a base, both are W. For embeddings pass fan_in_fan_out=True: PEFT's
    DoraEmbeddingLayer is built that way, giving one magnitude per embedding dimension.
    """
    compute = delta.dtype
    norm = dora_weight_norm(weight if norm_weight is None else norm_weight, delta, fan_in_fan_out)
    factor = magnitude.to(device=delta.device, dtype=compute) / norm
    factor = transpose(factor.view(-1, 1), fan_in_fan_out)
    return (factor * (weight.to(compute) + delta)).to(out_dtype or weight.dtype)


def _shira_parts(m: ModuleAdapter, dtype: torch.dtype, device: torch.device | str | None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    if m.shira_weight is None or m.shira_indices is None:
        raise AdapterError(f"module {m.module}: SHiRA needs both shira_weight and shira_indices")
    indices = m.shira_indices
    if indices.ndim != 2 or indices.shape[0] != 2 or indices.shape[1] != m.shira_weight.numel():
        raise AdapterError(f"module {m.module}: shira_indices {tuple(indices.shape)} must be (2, "
                         f"{m.shira_weight.numel()}), one (row, column) per shira_weight value")
    dev = device if device is not None else m.shira_weight.device
    indices = indices.to(device=dev, dtype=torch.long)
    values = m.shira_weight.reshape(-1).to(device=dev, dtype=dtype) * m.scaling
    return indices[0], indices[1], values


def shira_add(weight: Tensor, m: ModuleAdapter, *, sign: int = 1, dtype: torch.dtype = torch.float32,
              out_dtype: torch.dtype | None = None) -> Tensor:
    """`weight` plus (or minus, sign=-1) SHiRA's sparse delta, without a dense delta.

    PEFT adds `sparse_coo(indices, shira_weight * scaling, (out, in))` to the dense weight (scaling is
    1.0); an accumulating index_put gives the same sums (duplicate indices add up, as they do in an
    uncoalesced COO tensor). Formed in `dtype`, rounded once to `out_dtype` (default: weight's dtype).
    """
    rows, cols, values = _shira_parts(m, dtype, weight.device)
    if weight.ndim != 2:
        raise AdapterError(f"module {m.module}: SHiRA applies to 2-D linear weights, got {tuple(weight.shape)}")
    if rows.numel() and (int(rows.max()) >= weight.shape[0] or int(cols.max()) >= weight.shape[1]
                         or int(rows.min()) < 0 or int(cols.min()) < 0):
        raise AdapterError(f"module {m.module}: shira_indices point outside the {tuple(weight.shape)} weight")
    result = weight.to(dtype=dtype, copy=True)
    result.index_put_((rows, cols), values if sign >= 0 else -values, accumulate=True)
    return result.to(out_dtype or weight.dtype)


def shira_dense(m: ModuleAdapter, shape: tuple[int, int], *, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> Tensor:
    """SHiRA's delta as a dense (out, in) tensor, for callers that combine deltas (merging never needs it)."""
    rows, cols, values = _shira_parts(m, dtype, device)
    dense = torch.zeros(shape, dtype=dtype, device=values.device)
    dense.index_put_((rows, cols), values, accumulate=True)
    return dense
