"""Weighted combination of LoRA adapters: every PEFT combination type, in two semantics.

    combine(adapters, weights, method, semantics="exact" | "peft", ...) -> CombineResult

Methods (PEFT's `combination_type` names): cat, linear, svd, ties, ties_svd, dare_linear, dare_ties,
dare_linear_svd, dare_ties_svd, magnitude_prune, magnitude_prune_svd.

semantics="exact" (default): the combined delta of a module is the intended
`sum_i w_i * s_i * B_i A_i`, each source with its own scaling `s_i` (rsLoRA, rank_pattern and
alpha_pattern resolved per module), or that sum pruned by the method:
- cat: A rows `w_i s_i A_i` stacked, B columns `B_i` stacked. Lossless; ranks may differ per
  source and per module (the result carries rank_pattern/alpha_pattern entries where they do).
- svd: the best rank-k approximation of the intended delta, computed without forming the m x n
  matrix: QR of the stacked B (m x R) and of the stacked A^T (n x R), SVD of the R x R core,
  B = Qb U_k S_k, A = (Qa V_k)^T. k = `rank`, default the largest source rank; every module gets
  rank k (zero-padded where its delta has lower rank), so the config needs no patterns. With
  k >= sum of the source ranks the truncation is exact. With one source and weight 1 this is a rank
  reduction (what `validate --target vllm` suggests for an adapter above vLLM's --max-lora-rank).
- linear: cannot hold the intended delta at a fixed rank without truncation, so it is *the same
  operation as svd* (the best rank-k approximation; PEFT's linear, with its cross terms, is
  semantics="peft"). A note gives the truncation error; `cat` is the lossless alternative.
- ties, dare_linear, dare_ties, magnitude_prune and their `_svd` variants (the same operation in
  exact semantics): the sources' dense deltas `s_i B_i A_i` are formed one module at a time (in
  PEFT's get_delta_weight layout), pruned / sign-elected / disjoint-merged exactly as PEFT's
  `peft/utils/merge_utils.py` does with weights `w_i` (which enter after pruning and sign election,
  as there), then reduced by truncated SVD to rank k. This equals PEFT 0.21's `*_svd` result up to
  SVD arithmetic (and, for DARE, given the same masks).
Singular vectors get a fixed sign (the largest entry of each B column positive), so `svd_clamp`
(PEFT's signed quantile clamp of B and A, computed here by selection, not `torch.quantile`, so it
works beyond 2^24 elements) does not depend on the backend's sign choice.

semantics="peft": what the installed peft's `LoraModel.add_weighted_adapter` gives, tensor for
tensor, including its defects; `CombineResult.notes` say plainly how it differs from "exact", with
the relative error of the delta PEFT applies against the intended one. See `_peft_module`.

Refused in both semantics, with the reason: DoRA sources (the magnitude is normalised by the base
weight, so DoRA adapters have no weighted sum without it; PEFT silently re-initialises it from the
base, peft issue 3761), replacement tensors (modules_to_save, bias="all": a replaced tensor can
only be weighted as a delta against base weights combine() does not have), SHiRA, conv LoRA.
LoRA biases (`lora_bias=True`) are combined where that is defined (exact cat/svd/linear:
`b = sum_i w_i s_i b_i`), reproduced as PEFT drops them (peft semantics, with a note), and refused
for the pruning methods.

DARE masks: each module draws from its own CPU `torch.Generator` seeded with
`module_seed(seed, module)`, tensors in PEFT's order (sources in order; for the factor methods all
A then all B). The masks therefore do not depend on module order or device. PEFT draws from the
global RNG in `named_modules()` order; it gives the same masks when `torch.manual_seed(
module_seed(seed, name))` runs right before PEFT combines each module, on CPU (the tests wrap
`LoraModel._generalized_task_arithmetic_weighted_adapter` and `_svd_..._weighted_adapter` so).
Masks are drawn from float32 probabilities (as PEFT's full_like on a float32 delta) whatever
`precision` is: bernoulli draws differ between float32 and float64.
"""
from __future__ import annotations

import copy
import hashlib
import math
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .adapter_tensors import AdapterTensors, ModuleAdapter, module_scaling
from .errors import CombineError

METHODS = ("cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
           "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
#: PEFT combines A and B separately for these (semantics="peft").
FACTOR_METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
#: PEFT forms the dense delta and takes a full SVD for these.
SVD_METHODS = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
#: merge_utils function behind each method.
MERGE = {"cat": "cat", "linear": "task_arithmetic", "svd": "task_arithmetic", "ties": "ties", "ties_svd": "ties",
         "dare_linear": "dare_linear", "dare_linear_svd": "dare_linear", "dare_ties": "dare_ties",
         "dare_ties_svd": "dare_ties", "magnitude_prune": "magnitude_prune",
         "magnitude_prune_svd": "magnitude_prune"}
PRUNING = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
RANDOM = ("dare_linear", "dare_ties")
SEMANTICS = ("exact", "peft")
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
#: PEFT's SVD uses full_matrices=True; beyond this many rows/columns the reduced SVD is used
#: (the same leading vectors; U/Vh of a 32k vocabulary would need 4 GB each).
FULL_SVD_LIMIT = 16384


@dataclass
class CombineResult:
    """The combined adapter and what to know about it.

    `relative_error`: ||D_result - D_intended||_F / ||D_intended||_F over all modules, where
    D_result is the delta PEFT applies when it loads the result (its own scaling included) and
    D_intended = sum_i w_i s_i B_i A_i (before any pruning). For pruning methods it includes the
    pruning itself. `method_error` (exact only): the same against the method's own target (the
    intended delta, or the intended-then-pruned one): what truncation and clamping cost.
    """

    adapter: AdapterTensors
    notes: list[str] = field(default_factory=list)
    method: str = ""
    semantics: str = "exact"
    rank: int = 0
    relative_error: float | None = None
    method_error: float | None = None
    seed: int | None = None


# ----------------------------------------------------------------------------- small numerics


def module_seed(seed: int, module: str) -> int:
    """The seed of `module`'s DARE masks: order- and device-independent, distinct per module."""
    digest = hashlib.sha256(f"{int(seed)}\0{module}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """`torch.quantile(x.flatten(), q)` (linear interpolation) for tensors of any size.

    torch.quantile refuses inputs beyond 2^24 elements; this selects the two neighbouring order
    statistics with kthvalue instead of sorting. Up to 2^24 elements the position is computed in
    x's dtype, as torch does, so the results are equal; beyond, in float64.
    """
    if not 0.0 <= q <= 1.0:
        raise CombineError(f"svd_clamp must be a quantile in [0, 1], got {q}")
    flat = x.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise CombineError("quantile of an empty tensor")
    dtype = flat.dtype if n <= 2 ** 24 else torch.float64
    pos = torch.tensor(q, dtype=dtype) * (n - 1)
    lo = int(torch.floor(pos).item())
    frac = (pos - lo).to(flat.dtype)
    below = torch.kthvalue(flat, lo + 1).values
    if lo + 1 >= n:
        return below
    above = torch.kthvalue(flat, lo + 2).values
    return torch.lerp(below, above, frac.to(flat.device))


def lowrank_norm(B: torch.Tensor, A: torch.Tensor) -> float:
    """||B @ A||_F in float64 without forming B @ A: ||R A|| with B = QR (R is small)."""
    if B.shape[1] == 0:
        return 0.0
    B, A = B.double(), A.double()
    if B.shape[0] > B.shape[1]:
        B = torch.linalg.qr(B, mode="r").R
    return float(torch.linalg.matrix_norm(B @ A))


def lowrank_svd(B: torch.Tensor, A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-k factors of B @ A (B: m x R, A: R x n) without forming it.

    QR of B and of A^T, SVD of the small core R_b R_a^T (in float64), then B_k = Q_b U_k S_k and
    A_k = V_k^T Q_a^T. Returns (B_k, A_k, S) with all singular values S (float64) of B @ A.
    """
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    U, S, Vh = torch.linalg.svd((Rb.double() @ Ra.double().T), full_matrices=False)
    k = min(k, S.numel())
    B_k = Qb @ (U[:, :k] * S[:k]).to(Qb.dtype)
    A_k = Vh[:k].to(Qa.dtype) @ Qa.T
    return B_k, A_k, S


def fix_signs(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each rank-one pair so that the largest-magnitude entry of the B column is positive."""
    if B.shape[1] == 0:
        return B, A
    rows = B.abs().argmax(dim=0)
    signs = torch.sign(B[rows, torch.arange(B.shape[1], device=B.device)])
    signs[signs == 0] = 1
    return B * signs, A * signs[:, None]


def clamp_factors(B: torch.Tensor, A: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's svd_clamp: clamp B (= U S) and A (= Vh) to +-quantile(q) of their joined values."""
    hi = quantile(torch.cat([B.flatten(), A.flatten()]), q)
    return B.clamp(-hi, hi), A.clamp(-hi, hi)


def pad_rank(B: torch.Tensor, A: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero columns/rows up to rank k (a delta of lower rank than the adapter's r)."""
    missing = k - B.shape[1]
    if missing <= 0:
        return B, A
    return (torch.cat([B, B.new_zeros(B.shape[0], missing)], dim=1),
            torch.cat([A, A.new_zeros(missing, A.shape[1])], dim=0))


# ------------------------------------------------- PEFT's merge_utils, with an explicit generator


def _prune_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1:
        return tensor
    mask = torch.zeros_like(tensor).reshape(-1)
    k = int(density * tensor.numel())
    mask[torch.topk(tensor.abs().reshape(-1), k=k, largest=True).indices] = 1
    return tensor * mask.reshape(tensor.shape)


def _prune_random(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    if density >= 1:
        return tensor
    probabilities = torch.full(tuple(tensor.shape), density, dtype=torch.float32)
    mask = torch.bernoulli(probabilities, generator=generator).to(tensor.device, tensor.dtype)
    return tensor * mask / density


def _weighted(stacked: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return stacked * weights.view(weights.shape + (1,) * (stacked.dim() - weights.dim()))


def _majority_mask(stacked: torch.Tensor, method: str) -> torch.Tensor:
    sign = stacked.sign()
    magnitude = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(magnitude >= 0, 1, -1)


def _disjoint(weighted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (weighted * mask).sum(dim=0) / torch.clamp(mask.sum(dim=0), min=1.0)


def merge_tensors(kind: str, tensors: Sequence[torch.Tensor], weights: torch.Tensor, *, density: float | None,
                  majority_sign_method: str, generator: torch.Generator | None) -> torch.Tensor:
    """PEFT's task_arithmetic / magnitude_prune / ties / dare_linear / dare_ties, op for op."""
    if kind in ("magnitude_prune", "ties"):
        assert density is not None
        tensors = [_prune_magnitude(t, density) for t in tensors]
    elif kind in ("dare_linear", "dare_ties"):
        assert generator is not None and density is not None
        tensors = [_prune_random(t, density, generator) for t in tensors]
    stacked = torch.stack(list(tensors), dim=0)
    if kind in ("ties", "dare_ties"):
        mask = _majority_mask(stacked, majority_sign_method)
        return _disjoint(_weighted(stacked, weights), mask)
    return _weighted(stacked, weights).sum(dim=0)


# ----------------------------------------------------------------------------------- checking


@dataclass
class _Term:
    source: int
    weight: float
    entry: ModuleAdapter

    @property
    def coef(self) -> float:
        return self.weight * self.entry.scaling


def _pick_device(device: str | torch.device) -> torch.device:
    try:
        from .device import pick_device
    except ImportError:  # device.py is another module's job; until it exists: CUDA when present
        if isinstance(device, torch.device):
            return device
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device)
    return pick_device(device)


def _installed_peft_version() -> str:
    import peft

    return peft.__version__


def _peft_double_scales(version: str) -> bool:
    """peft v0.9.0 through v0.20.x apply each source's scaling twice in the SVD family."""
    from packaging.version import Version

    return Version(version) < Version("0.21.0")


def _check_arguments(adapters: Sequence[AdapterTensors], weights: Sequence[float], method: str, semantics: str,
                     rank: int | None, svd_clamp: float | None, density: float | None, majority_sign_method: str,
                     precision: str) -> None:
    if method not in METHODS:
        raise CombineError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if semantics not in SEMANTICS:
        raise CombineError(f"unknown semantics {semantics!r}; choose 'exact' (the intended delta) or 'peft' "
                           "(what peft's add_weighted_adapter returns)")
    if precision not in PRECISIONS:
        raise CombineError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not adapters:
        raise CombineError("no adapters to combine")
    if len(weights) != len(adapters):
        raise CombineError(f"{len(adapters)} adapters but {len(weights)} weights")
    for w in weights:
        if not math.isfinite(float(w)):
            raise CombineError(f"weight {w} is not finite")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise CombineError(f"rank must be a positive integer, got {rank!r}")
    if svd_clamp is not None and not 0.0 <= svd_clamp <= 1.0:
        raise CombineError(f"svd_clamp is a quantile in [0, 1], got {svd_clamp}")
    if majority_sign_method not in ("total", "frequency"):
        raise CombineError(f"majority_sign_method must be 'total' or 'frequency', got {majority_sign_method!r}")
    if MERGE[method] in PRUNING:
        if density is None:
            raise CombineError(f"{method} prunes: pass density (the fraction of values kept, in (0, 1])")
        if not 0.0 <= density <= 1.0:
            raise CombineError(f"density must be in [0, 1], got {density}")
        if density == 0 and MERGE[method] in RANDOM:
            raise CombineError(f"{method} rescales kept values by 1/density: density 0 divides by zero")
    for i, adapter in enumerate(adapters):
        what = f"source {i}"
        if adapter.peft_type != "LORA":
            raise CombineError(f"{what} is {adapter.peft_type}: only LoRA adapters can be combined "
                               "(PEFT has no weighted combination for SHiRA either)")
        if adapter.config.get("target_parameters"):
            raise CombineError(f"{what} targets parameters (target_parameters: LoRA on nn.Parameter, e.g. MoE "
                               "experts); combining those is not supported (PEFT's add_weighted_adapter refuses too)")
        dora = adapter.config.get("use_dora") or any(m.magnitude is not None for m in adapter.modules.values())
        if dora:
            raise CombineError(
                f"{what} is a DoRA adapter: its output m * (W + dW) / ||W + dW|| normalises by the base weight W, so a "
                "weighted sum of DoRA adapters has no LoRA-plus-magnitude form without W (PEFT's add_weighted_adapter "
                "silently re-initialises the magnitude to ||W||, dropping the trained one: peft issue 3761). Merge "
                "each adapter into the base instead")
        for entry in adapter.modules.values():
            if entry.kind == "shira":
                raise CombineError(f"{what} module {entry.module} is SHiRA: no weighted combination defined")
            if entry.A is None or entry.B is None or entry.A.dim() != 2 or entry.B.dim() != 2:
                raise CombineError(f"{what} module {entry.module}: only 2-D LoRA factors (linear, embedding) can be "
                                   "combined; conv LoRA is not supported")
            if entry.lora_bias is not None and semantics == "exact" and method not in ("cat", "svd", "linear"):
                raise CombineError(
                    f"{what} module {entry.module} has a LoRA bias (lora_bias=True): {method} prunes the weight "
                    "delta and has no definition for the bias; use cat, svd or linear (bias = sum w_i s_i b_i)")


def _shared_replacements(adapters: Sequence[AdapterTensors]) -> dict[str, torch.Tensor]:
    """Replacement tensors (modules_to_save, bias="all", embedding copies saved by
    save_embedding_layers) pass through only when every source holds the same ones, bit for bit:
    then each source replaces the base tensor identically and so does the result."""
    first = adapters[0].replacements
    for i, adapter in enumerate(adapters):
        keys = set(adapter.replacements)
        same = keys == set(first) and all(
            adapter.replacements[k].dtype == first[k].dtype and adapter.replacements[k].shape == first[k].shape
            and torch.equal(adapter.replacements[k], first[k]) for k in keys)
        if not same:
            differing = sorted(set(first) ^ keys) or sorted(k for k in keys if not torch.equal(
                adapter.replacements[k], first[k]))
            raise CombineError(
                f"sources 0 and {i} replace base tensors differently ({', '.join(differing[:4])}: modules_to_save, "
                "bias='all' or embedding copies from save_embedding_layers). A replaced tensor can only be weighted "
                "as a delta against the base weights, which combine() does not have (PEFT's add_weighted_adapter "
                "keeps whatever the last loaded source put there, or a fresh copy of the base module, silently). "
                "Combine adapters that replace nothing (or the same tensors), or merge each into the base instead")
    return {k: v for k, v in first.items()}


def _terms(adapters: Sequence[AdapterTensors], weights: Sequence[float]) -> dict[str, list[_Term]]:
    """Per module (first-seen order), the sources that touch it, checked for compatibility."""
    terms: dict[str, list[_Term]] = {}
    for i, (adapter, w) in enumerate(zip(adapters, weights)):
        for module, entry in adapter.modules.items():
            terms.setdefault(module, []).append(_Term(i, float(w), entry))
    for module, ts in terms.items():
        first = ts[0].entry
        shape = (first.B.shape[0], first.A.shape[1])
        for t in ts[1:]:
            e = t.entry
            if e.kind != first.kind:
                raise CombineError(f"module {module}: {first.kind} LoRA in source {ts[0].source} but {e.kind} in "
                                   f"source {t.source}")
            if (e.B.shape[0], e.A.shape[1]) != shape:
                raise CombineError(f"module {module}: delta shape {shape} in source {ts[0].source} but "
                                   f"{(e.B.shape[0], e.A.shape[1])} in source {t.source}: adapters of different "
                                   "base models")
            if e.fan_in_fan_out != first.fan_in_fan_out:
                raise CombineError(f"module {module}: fan_in_fan_out differs between sources {ts[0].source} and "
                                   f"{t.source}")
        for t in ts:
            if t.entry.A.shape[0] != t.entry.B.shape[1] or t.entry.A.shape[0] != t.entry.r:
                raise CombineError(f"module {module} of source {t.source}: lora_A has {t.entry.A.shape[0]} rows, "
                                   f"lora_B {t.entry.B.shape[1]} columns, config rank {t.entry.r}")
    return terms


def _max_rank(adapter: AdapterTensors) -> int:
    """PEFT's rank of a source: r, or the largest rank_pattern value when there is one."""
    config = adapter.config
    pattern = config.get("rank_pattern") or {}
    return int(max([config["r"], *pattern.values()])) if pattern else int(config["r"])


def _dense(entry: ModuleAdapter, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """s * B A in PEFT's get_delta_weight layout: transposed for fan_in_fan_out and embeddings."""
    delta = entry.B.to(device, dtype) @ entry.A.to(device, dtype)
    if entry.fan_in_fan_out or entry.kind == "embedding":
        delta = delta.T
    return delta * entry.scaling


def _from_layout(delta: torch.Tensor, entry: ModuleAdapter) -> torch.Tensor:
    return delta.T if (entry.fan_in_fan_out or entry.kind == "embedding") else delta


def _generators(seed: int | None, module: str, method: str) -> torch.Generator | None:
    if seed is None or MERGE[method] not in RANDOM:
        return None
    return torch.Generator().manual_seed(module_seed(seed, module))


def _out_dtype(adapters: Sequence[AdapterTensors], semantics: str) -> torch.dtype:
    if semantics == "peft":
        return torch.float32  # PEFT upcasts adapters to float32 on load and combines them there
    dtypes = {m.A.dtype for a in adapters for m in a.modules.values()} | {
        m.B.dtype for a in adapters for m in a.modules.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


# ------------------------------------------------------------------------------------ combine


def combine(adapters: list[AdapterTensors], weights: list[float], method: str, *, semantics: str = "exact",
            rank: int | None = None, svd_clamp: float | None = None, density: float | None = None,
            majority_sign_method: str = "total", seed: int | None = None, device: str | torch.device = "auto",
            precision: str = "float32", peft_version: str | None = None,
            shapes: dict[str, tuple[int, int]] | None = None) -> CombineResult:
    """Combine LoRA adapters with `weights` by `method` (PEFT's combination types); see the module doc.

    rank: result rank for the SVD family and, in exact semantics, linear and the pruning methods
    (default: the largest source rank). svd_clamp, density, majority_sign_method: as PEFT's
    add_weighted_adapter. seed: DARE masks (module_seed); None draws one and reports it in the notes.
    device: "auto" (CUDA when available), "cpu", "cuda:0"...; precision: compute dtype, float32 or
    float64 (results are stored in the sources' dtype, float32 under peft semantics).
    peft_version: the peft whose add_weighted_adapter semantics="peft" reproduces (default: installed).
    SHiRA sources are fused exactly over the union of their masks (shira_fusion.py; `shapes`: the base's
    (out, in) per module, to fill spare slots at free positions).
    """
    if adapters and any(a.peft_type == "SHIRA" for a in adapters):
        from .shira_fusion import fuse

        if semantics != "exact":
            raise CombineError("PEFT has no weighted combination for SHiRA (add_weighted_adapter refuses it), so there "
                               "are no peft semantics to reproduce: use semantics exact")
        if len(weights) != len(adapters):
            raise CombineError(f"{len(adapters)} adapters but {len(weights)} weights")
        for w in weights:
            if not math.isfinite(float(w)):
                raise CombineError(f"weight {w} is not finite")
        fused, fusion_notes = fuse(adapters, weights, method, shapes=shapes)
        return CombineResult(fused, fusion_notes, method, semantics, int(fused.config["r"]), 0.0, 0.0)
    _check_arguments(adapters, weights, method, semantics, rank, svd_clamp, density, majority_sign_method,
                     precision)
    terms = _terms(adapters, weights)
    replacements = _shared_replacements(adapters)
    if not terms:
        raise CombineError("the sources have no LoRA modules")
    notes: list[str] = []
    if MERGE[method] in RANDOM and seed is None:
        seed = secrets.randbits(63)
        notes.append(f"DARE masks drawn with seed {seed} (pass seed={seed} to reproduce them)")
    ctx = _Context(adapters, list(map(float, weights)), method, terms, rank, svd_clamp, density,
                   majority_sign_method, seed, _pick_device(device), PRECISIONS[precision],
                   _out_dtype(adapters, semantics), notes, replacements)
    if semantics == "exact":
        return _combine_exact(ctx)
    return _combine_peft(ctx, peft_version or _installed_peft_version())


@dataclass
class _Context:
    adapters: Sequence[AdapterTensors]
    weights: list[float]
    method: str
    terms: dict[str, list[_Term]]
    rank: int | None
    svd_clamp: float | None
    density: float | None
    majority_sign_method: str
    seed: int | None
    device: torch.device
    dtype: torch.dtype
    out_dtype: torch.dtype
    notes: list[str]
    replacements: dict[str, torch.Tensor]


class _Errors:
    """Accumulates squared Frobenius norms over modules."""

    def __init__(self) -> None:
        self.diff = 0.0
        self.ref = 0.0

    def add(self, diff: float, ref: float) -> None:
        self.diff += diff * diff
        self.ref += ref * ref

    @property
    def relative(self) -> float | None:
        return math.sqrt(self.diff / self.ref) if self.ref > 0 else (0.0 if self.diff == 0 else math.inf)


def _intended_error(result_B: torch.Tensor, result_A: torch.Tensor, scale: float, ts: list[_Term],
                    device: torch.device, ref: float | None = None) -> tuple[float, float]:
    """(||scale * B A - sum c_i B_i A_i||, ||sum c_i B_i A_i||), all factored, in float64.
    `ref`: the second figure when the caller already has it (the core's singular values)."""
    Bs = [t.entry.B.to(device, torch.float64) * t.coef for t in ts]
    As = [t.entry.A.to(device, torch.float64) for t in ts]
    if ref is None:
        ref = lowrank_norm(torch.cat(Bs, dim=1), torch.cat(As, dim=0))
    diff = lowrank_norm(torch.cat([result_B.to(device, torch.float64) * scale, *[-b for b in Bs]], dim=1),
                        torch.cat([result_A.to(device, torch.float64), *As], dim=0))
    return diff, ref


def _combine_exact(ctx: _Context) -> CombineResult:
    method, dev, dt = ctx.method, ctx.device, ctx.dtype
    k = ctx.rank or max(_max_rank(a) for a in ctx.adapters)
    intended, target = _Errors(), _Errors()
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    truncated: list[str] = []
    for module, ts in ctx.terms.items():
        if method == "cat":
            A = torch.cat([t.entry.A.to(dev, dt) * t.coef for t in ts], dim=0).to(ctx.out_dtype)
            B = torch.cat([t.entry.B.to(dev, dt) for t in ts], dim=1).to(ctx.out_dtype)
            diff, ref = _intended_error(B, A, 1.0, ts, dev)
            target.add(diff, ref)
        elif method in ("svd", "linear"):
            Bcat = torch.cat([t.entry.B.to(dev, dt) * t.coef for t in ts], dim=1)
            Acat = torch.cat([t.entry.A.to(dev, dt) for t in ts], dim=0)
            B, A, S = lowrank_svd(Bcat, Acat, k)
            if _truncates(S, k):
                truncated.append(module)
            B, A = _finish_svd(B, A, k, ctx.svd_clamp, ctx.out_dtype)
            diff, ref = _intended_error(B, A, 1.0, ts, dev, ref=float(torch.linalg.vector_norm(S)))
            target.add(diff, ref)
        else:
            generator = _generators(ctx.seed, module, method)
            deltas = [_dense(t.entry, dt, dev) for t in ts]
            w = torch.tensor([t.weight for t in ts], dtype=dt, device=dev)
            merged = merge_tensors(MERGE[method], deltas, w, density=ctx.density,
                                   majority_sign_method=ctx.majority_sign_method, generator=generator)
            merged = _from_layout(merged, ts[0].entry)
            U, S, Vh = torch.linalg.svd(merged, full_matrices=False)
            kk = min(k, S.numel())
            if _truncates(S, kk):
                truncated.append(module)
            B, A = _finish_svd(U[:, :kk] * S[:kk], Vh[:kk], k, ctx.svd_clamp, ctx.out_dtype)
            product = (B.double() @ A.double())
            target.add(float(torch.linalg.matrix_norm(product - merged.double())),
                       float(torch.linalg.matrix_norm(merged.double())))
            del merged, deltas
            diff, ref = _intended_error(B, A, 1.0, ts, dev)
        intended.add(diff, ref)
        factors[module] = (B, A)

    biases = _exact_biases(ctx)
    ranks = {m: B.shape[1] for m, (B, _) in factors.items()}
    config = _exact_config(ctx.adapters[0].config, ranks, bool(biases))
    result = _assemble(config, ctx, factors, biases)
    notes = ctx.notes
    if method == "cat":
        notes.append(f"cat: exact (rank per module = sum of the sources' ranks; relative error "
                     f"{_fmt(target.relative)} is float arithmetic)")
    elif method in ("svd", "linear"):
        if method == "linear":
            notes.append("linear in exact semantics is svd: the best rank-k approximation of the intended delta "
                         "(PEFT's linear, which combines A and B separately and adds cross terms B_i A_j, is "
                         "semantics='peft'); use cat to keep the delta exactly")
        if len(ctx.adapters) == 1:
            notes.append(f"one source: a rank reduction from r={_max_rank(ctx.adapters[0])} to {k}, the best rank-{k} "
                         "approximation of its delta" + (f" times {ctx.weights[0]:g}" if ctx.weights[0] != 1 else ""))
        notes.append(f"{method}: rank {k}; relative error vs the intended delta {_fmt(target.relative)}"
                     + (f" (truncation in {len(truncated)} of {len(factors)} modules; rank >= the sum of the source "
                        "ranks is exact)" if truncated else " (no truncation)")
                     + (f"; svd_clamp {ctx.svd_clamp} applied" if ctx.svd_clamp is not None else ""))
    else:
        base = method.removesuffix("_svd")
        notes.append(f"{method}: in exact semantics {base} and {base}_svd are the same operation: "
                     f"{MERGE[method]} (merge_utils semantics, density {ctx.density}"
                     + (f", majority_sign_method {ctx.majority_sign_method}" if "ties" in method else "")
                     + f") of the sources' dense deltas s_i B_i A_i with weights w_i, then truncated SVD to rank {k}; "
                     f"relative error vs that pruned delta {_fmt(target.relative)}, vs the unpruned intended delta "
                     f"{_fmt(intended.relative)}")
        if MERGE[method] in RANDOM:
            notes.append(f"DARE masks: per-module CPU generators seeded with module_seed({ctx.seed}, module)")
    notes.extend(_peft_differences(ctx))
    return CombineResult(result, notes, method, "exact", int(config["r"]), intended.relative, target.relative,
                         ctx.seed)


def _truncates(S: torch.Tensor, k: int) -> bool:
    """Whether singular values beyond the k-th carry more than rounding (relative 1e-5)."""
    return S.numel() > k and bool(S[k] > 1e-5 * S[0])


def _finish_svd(B: torch.Tensor, A: torch.Tensor, k: int, clamp: float | None,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign convention, clamp, zero padding to rank k, and the one cast to the storage dtype."""
    B, A = fix_signs(B, A)
    if clamp is not None:
        B, A = clamp_factors(B, A, clamp)
    B, A = pad_rank(B, A, k)
    return B.to(dtype), A.to(dtype)


def _exact_biases(ctx: _Context) -> dict[str, torch.Tensor]:
    if not any(t.entry.lora_bias is not None for ts in ctx.terms.values() for t in ts):
        return {}
    biases = {}
    for module, ts in ctx.terms.items():
        if ts[0].entry.kind == "embedding":
            raise CombineError(f"module {module} is an embedding and the result needs lora_bias=True, which PEFT "
                               "does not support for embeddings; combine the embedding LoRA separately")
        out = ts[0].entry.B.shape[0]
        bias = torch.zeros(out, dtype=torch.float64, device=ctx.device)
        for t in ts:
            if t.entry.lora_bias is not None:
                bias += t.entry.lora_bias.to(ctx.device, torch.float64) * t.coef
        biases[module] = bias
    return biases


def _exact_config(first: dict[str, Any], ranks: dict[str, int], bias: bool) -> dict[str, Any]:
    """Scaling 1 everywhere: r = lora_alpha = the commonest rank, patterns (escaped full module paths)
    for the modules whose rank differs; no source pattern survives."""
    counts = Counter(ranks.values())
    r = max(counts, key=lambda v: (counts[v], v))
    pattern = {re.escape(m): rm for m, rm in ranks.items() if rm != r}
    config = copy.deepcopy(first)
    config.update(r=r, lora_alpha=r, use_rslora=False, use_dora=False, lora_bias=bias, rank_pattern=pattern,
                  alpha_pattern=dict(pattern), target_modules=sorted(ranks), layers_to_transform=None,
                  layers_pattern=None, exclude_modules=None)
    if config.get("init_lora_weights") not in (True, False, "gaussian"):
        config["init_lora_weights"] = True  # the result is plain LoRA: no PiSSA/OLoRA/... init on load
    return config


def _assemble(config: dict[str, Any], ctx: _Context, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
              biases: dict[str, torch.Tensor]) -> AdapterTensors:
    out = AdapterTensors(config, replacements=dict(ctx.replacements))
    for module, (B, A) in factors.items():
        first = ctx.terms[module][0].entry
        r, alpha, scaling = module_scaling(config, module)
        if r != B.shape[1]:
            raise AssertionError(f"{module}: config rank {r} but factors of rank {B.shape[1]}")
        bias = biases.get(module)
        out.modules[module] = ModuleAdapter(
            module, first.kind, r, alpha, scaling, fan_in_fan_out=first.fan_in_fan_out,
            A=A.to("cpu", ctx.out_dtype).contiguous(), B=B.to("cpu", ctx.out_dtype).contiguous(),
            lora_bias=None if bias is None else bias.to("cpu", ctx.out_dtype))
    return out


def _peft_differences(ctx: _Context) -> list[str]:
    """Exact semantics: where PEFT's add_weighted_adapter would give something else for these sources."""
    notes = []
    first = ctx.adapters[0].config
    if first.get("use_rslora"):
        notes.append("the first source uses rsLoRA: PEFT would keep use_rslora in the result and over-scale it by "
                     "sqrt(new rank) (peft issue 3449); this result has use_rslora false and scaling 1")
    if ctx.method in FACTOR_METHODS:
        notes.append(f"PEFT's {ctx.method} combines A and B separately, adding cross terms B_i A_j; "
                     "semantics='peft' reproduces it")
    if any(a.config.get("rank_pattern") for a in ctx.adapters) and ctx.method in FACTOR_METHODS:
        notes.append("sources with rank_pattern: PEFT's result for this method cannot be reloaded (peft issue 3737)")
    if any(t.entry.lora_bias is not None for ts in ctx.terms.values() for t in ts):
        notes.append("LoRA biases combined as sum w_i s_i b_i; PEFT would drop them (peft issue 3761)")
    return notes


# --------------------------------------------------------------------------- peft semantics


def _peft_target_modules(adapters: Sequence[AdapterTensors]) -> Any:
    targets: list[Any] = [a.config.get("target_modules") for a in adapters]
    kinds = {type(t) for t in targets}
    if len(kinds) > 1:
        raise CombineError("PEFT's add_weighted_adapter refuses sources whose target_modules mix a regex string and "
                           "a list (as here); semantics='exact' has no such limit")
    if isinstance(targets[0], str):
        return "|".join(f"({t})" for t in targets)
    if isinstance(targets[0], (list, tuple, set)):
        union: set[str] = set()
        for t in targets:
            union |= set(t)
        return sorted(union)
    raise CombineError(f"PEFT's add_weighted_adapter refuses target_modules of type {type(targets[0]).__name__}")


def _peft_new_rank(ctx: _Context, method: str) -> int:
    ranks = [_max_rank(a) for a in ctx.adapters]
    if method in FACTOR_METHODS:
        if len(set(ranks)) != 1:
            raise CombineError(
                f"{method} under peft semantics needs equal ranks (PEFT compares each source's r, or its largest "
                f"rank_pattern value): got {ranks}. Use svd or cat, or semantics='exact'")
        return ranks[0]
    if method == "cat":
        return sum(ranks)
    return ctx.rank or max(ranks)


def _peft_svd(delta: torch.Tensor, new_rank: int, clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    full = max(delta.shape) <= FULL_SVD_LIMIT
    U, S, Vh = torch.linalg.svd(delta, full_matrices=full)
    U = U[:, :new_rank]
    S = S[:new_rank]
    U = U @ torch.diag(S)
    Vh = Vh[:new_rank, :]
    if clamp is not None:
        hi = quantile(torch.cat([U.flatten(), Vh.flatten()]), clamp)
        U = U.clamp(-hi, hi)
        Vh = Vh.clamp(-hi, hi)
    return U, Vh


def _combine_peft(ctx: _Context, version: str) -> CombineResult:
    """LoraModel.add_weighted_adapter of peft `version`, module by module (peft/tuners/lora/model.py)."""
    method = ctx.method
    notes = ctx.notes
    saved = [set(a.config.get("modules_to_save") or ()) for a in ctx.adapters]
    shared = {m for i, a in enumerate(saved) for b in saved[i + 1:] for m in a & b}
    if shared:
        raise CombineError("PEFT's add_weighted_adapter refuses sources that share modules_to_save "
                           f"({', '.join(sorted(shared))}); semantics='exact' carries identical replacements over")
    if len(ctx.adapters) == 1 and method != "linear":
        notes.append(f"one source: PEFT's add_weighted_adapter ignores {method} and uses linear")
        method = "linear"
    new_rank = _peft_new_rank(ctx, method)
    first = ctx.adapters[0].config
    config = copy.deepcopy(first)
    config.update(r=new_rank, lora_alpha=new_rank, target_modules=_peft_target_modules(ctx.adapters),
                  alpha_pattern={}, rank_pattern={})
    rslora = bool(config.get("use_rslora"))
    in_memory_scaling = new_rank / math.sqrt(new_rank) if rslora else 1.0
    double = _peft_double_scales(version)
    dev = ctx.device
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ts in ctx.terms.items():
        if method == "cat":
            A = torch.cat([t.entry.A.to(dev, torch.float32) * t.weight * t.entry.scaling for t in ts], dim=0)
            B = torch.cat([t.entry.B.to(dev, torch.float32) for t in ts], dim=1)
            B, A = pad_rank(B, A, new_rank)
        elif method in SVD_METHODS:
            generator = _generators(ctx.seed, module, method)
            deltas = [_dense(t.entry, torch.float32, dev) for t in ts]
            w = torch.tensor([t.weight * t.entry.scaling if double else t.weight for t in ts]).to(dev)
            merged = merge_tensors(MERGE[method], deltas, w, density=ctx.density,
                                   majority_sign_method=ctx.majority_sign_method, generator=generator)
            merged = _from_layout(merged, ts[0].entry)
            B, A = _peft_svd(merged, new_rank, ctx.svd_clamp)
            B, A = pad_rank(B, A, new_rank)
        else:
            ranks = {t.source: t.entry.r for t in ts}
            if len(set(ranks.values())) > 1:
                raise CombineError(
                    f"{method} under peft semantics stacks the sources' factors, so every module needs equal ranks: "
                    f"module {module} has " + ", ".join(f"rank {r} in source {s}" for s, r in ranks.items())
                    + " (PEFT fails here with a torch.stack size error). Use svd or cat, or semantics='exact'")
            generator = _generators(ctx.seed, module, method)
            wA, wB = [], []
            for t in ts:
                ws = t.weight * t.entry.scaling
                sign = 1 if ws >= 0 else -1
                wA.append(math.sqrt(abs(ws)) * sign)
                wB.append(math.sqrt(abs(ws)))
            kwargs: dict[str, Any] = dict(density=ctx.density, majority_sign_method=ctx.majority_sign_method,
                                          generator=generator)
            A = merge_tensors(MERGE[method], [t.entry.A.to(dev, torch.float32) for t in ts],
                              torch.tensor(wA).to(dev), **kwargs)
            B = merge_tensors(MERGE[method], [t.entry.B.to(dev, torch.float32) for t in ts],
                              torch.tensor(wB).to(dev), **kwargs)
        factors[module] = (B, A)

    # PEFT's config says r = new_rank everywhere; modules whose factors have another rank (linear family
    # with rank_pattern sources) get patterns so the result loads with PEFT's in-memory scaling.
    mismatched = {m: B.shape[1] for m, (B, _) in factors.items() if B.shape[1] != new_rank}
    if mismatched:
        config["rank_pattern"] = {re.escape(m): r for m, r in mismatched.items()}
        config["alpha_pattern"] = {re.escape(m): in_memory_scaling * (math.sqrt(r) if rslora else r)
                                   for m, r in mismatched.items()}
    biases: dict[str, torch.Tensor] = {}
    if config.get("lora_bias"):
        biases = {m: torch.zeros(B.shape[0]) for m, (B, _) in factors.items()}
    result = _assemble(config, ctx, factors, biases)

    errors = _Errors()
    for module, ts in ctx.terms.items():
        entry = result.modules[module]
        errors.add(*_intended_error(entry.B, entry.A, entry.scaling, ts, dev))
    x = errors.relative
    notes.append(f"peft semantics (peft {version}, {method}): relative error {_fmt(x)} of the delta PEFT applies "
                 "vs the intended sum_i w_i s_i B_i A_i over all modules")
    notes.extend(_peft_notes(ctx, method, version, new_rank, rslora, in_memory_scaling, double, mismatched))
    return CombineResult(result, notes, method, "peft", new_rank, x, None, ctx.seed)


def _peft_notes(ctx: _Context, method: str, version: str, new_rank: int, rslora: bool, scaling: float,
                double: bool, mismatched: dict[str, int]) -> list[str]:
    notes = []
    if method in FACTOR_METHODS:
        notes.append(f"{method}: PEFT combines A and B separately (A_new from sign(w_i s_i) sqrt|w_i s_i| A_i, B_new "
                     "from sqrt|w_i s_i| B_i), so B_new A_new contains cross terms B_i A_j (i != j) that no source has")
        if MERGE[method] != "task_arithmetic":
            notes.append(f"{method}: pruning (density {ctx.density}) and sign election act on the A and B factors "
                         "separately, not on the delta")
    elif method in SVD_METHODS:
        notes.append(f"{method}: PEFT forms each module's dense delta and takes a full SVD, truncated to rank "
                     f"{new_rank}" + (f", clamped at quantile {ctx.svd_clamp}" if ctx.svd_clamp is not None else ""))
        if double:
            notes.append(f"peft {version} (< 0.21) applies each source's scaling twice in the SVD family: the "
                         "result is sum w_i s_i^2 B_i A_i")
    else:
        notes.append("cat: exact apart from the points below" + (
            f"; PEFT allocates rank {new_rank} (the sum of the sources' largest ranks) and leaves unused rows zero"
            if any(sum(t.entry.r for t in ts) < new_rank for ts in ctx.terms.values()) else ""))
    if rslora:
        notes.append(f"the first source has use_rslora=True and PEFT keeps it: the result (r = lora_alpha = "
                     f"{new_rank}) is applied with scaling {new_rank}/sqrt({new_rank}) = {scaling:.4g} instead of 1 "
                     "(peft issue 3449)")
    if mismatched:
        some = ", ".join(f"{m} (rank {r})" for m, r in list(mismatched.items())[:3])
        notes.append(f"PEFT's config says r={new_rank} but {len(mismatched)} modules hold another rank ({some}...): "
                     "PEFT cannot reload its own result (peft issue 3737); rank_pattern/alpha_pattern entries were "
                     "added so this one loads with PEFT's in-memory scaling")
    if any(t.entry.lora_bias is not None for ts in ctx.terms.values() for t in ts):
        notes.append("the sources' LoRA biases are dropped, as PEFT does (peft issue 3761): "
                     + ("the result's biases are zero" if ctx.adapters[0].config.get("lora_bias")
                        else "the result has none") + "; semantics='exact' combines them (cat, svd, linear)")
    if MERGE[method] in RANDOM:
        notes.append(f"DARE masks: per-module CPU generators seeded with module_seed({ctx.seed}, module); PEFT gives "
                     "the same masks when torch.manual_seed(module_seed(seed, name)) runs before each module")
    return notes


__all__ = ["combine", "CombineResult", "METHODS", "module_seed", "quantile", "lowrank_svd",
           "lowrank_norm", "merge_tensors"]
