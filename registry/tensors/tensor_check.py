"""Per-tensor proof of a merge: every merged element within its storage dtype's rounding of W + delta.

An output-level check cannot tell "one module left out" from rounding noise in half precision (issue
18 measured, on an 8-layer bf16 Llama, 0.0091 from the float32 reference for a correct merge and 0.0080
for the same merge with one module left out). This check can: for every merged tensor R it computes, on
the merge's own device, an independent reference of the delta and asks, element by element,

    |R - (W + sign * s * B @ A)|  <=  bound
    bound = hu(R) * (1 + 8u + 8u * 2^(p+1))  +  (2 * gamma_(r+1) + 8u) * s * max_i ||b_i|| * max_j ||a_j||

hu(R) is half the spacing of the storage dtype at R (the most round-to-nearest can move a value, p its
precision in bits: bf16 8, fp16 11, fp32 24); u is the compute dtype's unit roundoff (2^-24 for
float32) and gamma_n = n*u / (1 - n*u) the classical bound on an n-term dot product in any order
(Higham, Accuracy and Stability, 3.1), so B @ A may be summed in any order, with or without FMA, on
any device; the s * ||b_i|| ||a_j|| term (Cauchy-Schwarz on sum_k |b_ik a_kj|) bounds that
accumulation error for the merge's product and the reference's alike; the 8u terms cover the
scaling, the float32 add and the check's own arithmetic (|R| < 2^(p+1) * hu(R)). A correct merge
always passes, whatever its summation order; a wrong one fails wherever its error exceeds half a
storage ulp: a module left out (R = W) fails at every element whose delta exceeds half an ulp of
W, a transposed delta or a scaling off by 2 likewise. (Where no element of a delta reaches half an
ulp of its weight, the correctly rounded merge *is* W, and leaving the module out is not wrong.)

Independent of the merge: the reference re-derives the scaling from adapter_config.json (PEFT's
rule: lora_alpha / r, or / sqrt(r) with rsLoRA, rank_pattern/alpha_pattern first match), the layout
(transposed for embeddings and fan_in_fan_out) and forms the product the other way round
((B*s) @ A, in row blocks), and the pass checks at the end that every LoRA module of the adapter
file was checked exactly once.

Also here: `compare_checkpoints`, two checkpoint folders compared tensor by tensor in ulps of their
storage dtype (CPU vs CUDA merges).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: Bits of precision (implicit bit included) and the exponent mask of each storage dtype's bit pattern.
_FORMAT: dict[torch.dtype, tuple[int, torch.dtype, int]] = {
    torch.bfloat16: (8, torch.int16, 0x7F80),
    torch.float16: (11, torch.int16, 0x7C00),
    torch.float32: (24, torch.int32, 0x7F800000),
    torch.float64: (53, torch.int64, 0x7FF0000000000000),
}
#: How far (in ulps of the storage dtype) a merge on CUDA may land from the same merge on the CPU. Both
#: compute B @ A with their BLAS in float32 (PEFT's own formulation on each device, so each equals PEFT's
#: merge_and_unload there), and the two GEMMs may sum the r terms in different orders and with or without
#: FMA: the float32 products then differ by a few float32 ulps, which after the add and the one rounding to
#: bf16/fp16 changes an element only where it lies next to a rounding boundary, by one ulp. In float32
#: storage the same few-ulp difference survives the add: 2 is the practical bound there (the rigorous one is
#: the per-tensor check's own, (2 gamma_(r+1)) s ||b_i|| ||a_j||). Bit-exactness across devices would need a
#: formulation with a fixed reduction order (r separate rank-1 updates, no FMA), which PEFT's GEMM is not.
MAX_GPU_ULPS = 2
#: Rows per block of the check: about 1 MB of float32 per block on the CPU (it stays in cache).
CPU_BLOCK_ELEMENTS = 256 << 10
GPU_BLOCK_ELEMENTS = 64 << 20


def precision_bits(dtype: torch.dtype) -> int:
    """Significand bits of a float dtype, implicit bit included (bf16 8, fp16 11, fp32 24, fp64 53)."""
    return _FORMAT[dtype][0]


def half_ulp(values: Tensor, out_dtype: torch.dtype = torch.float32, out: Tensor | None = None) -> Tensor:
    """Half the spacing of `values`' own dtype at each element: the most round-to-nearest moves a value into it.

    Read from the bit pattern (the exponent field alone is the power of two of the element's binade);
    zeros and subnormals get the subnormal spacing, Inf and NaN give Inf and NaN.
    """
    bits, int_dtype, mask = _FORMAT[values.dtype]
    binade = (values.view(int_dtype) & mask).view(values.dtype)
    tiny = torch.finfo(values.dtype).tiny
    result = out if out is not None else torch.empty(values.shape, dtype=out_dtype, device=values.device)
    result.copy_(binade)
    result.clamp_(min=tiny)
    return result.mul_(2.0 ** -bits)


def _unit_roundoff(dtype: torch.dtype) -> float:
    return 2.0 ** -precision_bits(dtype)


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


# ----- the reference: scaling and layout from the adapter's own config, re-derived here --------------

def reference_scaling(config: dict[str, Any], module: str) -> float:
    """PEFT's scaling for `module` (FORMATS.md, "Math PEFT uses"), derived here independently of the merge."""
    def first(pattern: dict[str, Any] | None) -> Any:
        for key, value in (pattern or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return None

    r = first(config.get("rank_pattern")) or config["r"]
    alpha = first(config.get("alpha_pattern"))
    if alpha is None:
        alpha = config.get("lora_alpha", r)
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else float(r))


@dataclass
class Reference:
    """One module's delta as the check forms it: rows of `left @ right`, times `sign`."""

    module: str
    left: Tensor    # (rows of W, r): B * s, or A^T for a transposed layout
    right: Tensor   # (r, cols of W): A, or (B * s)^T
    rank: int
    scaling: float
    norm_bound: Tensor  # s * max_i ||b_i|| * max_j ||a_j|| (0-dim, on the device), bounding sum_k |s b_ik a_kj|


def reference_for(config: dict[str, Any], module: str, A: Tensor, B: Tensor, *, embedding: bool,
                  dtype: torch.dtype, device: torch.device) -> Reference:
    """The check's own view of a LoRA module's delta (see the module docstring for why it is separate)."""
    s = reference_scaling(config, module)
    a = A.to(device=device, dtype=dtype)
    b = B.to(device=device, dtype=dtype)
    bs = b * s
    transposed = embedding or bool(config.get("fan_in_fan_out"))
    # Kept on the device: reading it back would make the CPU wait for the GPU once per module.
    norm = (torch.linalg.vector_norm(b, dim=1).amax() * torch.linalg.vector_norm(a, dim=0).amax() * s
            if a.numel() and b.numel() else torch.zeros((), dtype=dtype, device=device))
    if transposed:
        return Reference(module, a.T, bs.T, a.shape[0], s, norm)
    return Reference(module, bs, a, a.shape[0], s, norm)


# ----- the check of one tensor ------------------------------------------------------------------

def _value(worst: Tensor | float | None) -> float:
    """A ratio as a float; NaN (a non-finite merged value) counts as infinitely far."""
    value = 0.0 if worst is None else float(worst)
    return value if math.isfinite(value) else math.inf


@dataclass
class TensorCheck:
    """What the per-tensor check found over a whole merge (or one folder)."""

    tensors_checked: int = 0
    modules_checked: list[str] = field(default_factory=list)
    worst_ratio: float = 0.0       # max over elements of |error| / bound; <= 1 passes
    worst_tensor: str | None = None
    failures: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)   # changed tensors this rule does not cover (why)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"tensors_checked": self.tensors_checked, "worst_ratio": self.worst_ratio,
                "worst_tensor": self.worst_tensor, "failures": self.failures[:20],
                "not_checked": self.not_checked[:20], "passed": self.passed,
                "bound": "half an ulp of the storage dtype at each merged element + the float32 accumulation "
                         "bound of the rank-r product (registry/tensors/tensor_check.py)"}


class TensorChecker:
    """Checks merged tensors one at a time (or one block of rows at a time) against `Reference`s."""

    def __init__(self, compute: torch.dtype = torch.float32, sign: int = 1) -> None:
        self.compute = compute
        self.sign = sign
        self.result = TensorCheck()
        self._scratch: dict[tuple[str, str], Tensor] = {}
        self._pending: list[tuple[str, str, Tensor | float | None]] = []
        #: Modules not to check, with why: an adapter holding NaN or Inf makes W + delta itself non-finite, and a
        #: merge without --safe writes what it is told (refusing that is `safe`'s job, not the check's).
        self.skip: dict[str, str] = {}

    def exempt(self, adapter: Any) -> None:
        """Exempt the modules whose LoRA factors hold NaN or Inf (read once, before the pass)."""
        for m in adapter.modules.values():
            if m.kind in ("linear", "embedding") and m.A is not None and m.B is not None and not (
                    bool(torch.isfinite(m.A).all()) and bool(torch.isfinite(m.B).all())):
                self.skip[m.module] = "its adapter factors hold NaN or Inf"

    def wants(self, module: str) -> bool:
        return module not in self.skip

    def _buffer(self, name: str, numel: int, device: torch.device) -> Tensor:
        key = (name, str(device))
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < numel:
            self._scratch.pop(key, None)
            buf = torch.empty(numel, dtype=self.compute, device=device)
            self._scratch[key] = buf
        return buf[:numel]

    def prepare(self, ref: Reference) -> Tensor:
        """The reference delta of a whole tensor, (B*s) @ A (or its transposed layout), in one product: a matmul
        by blocks of rows is several times slower on the CPU (0.5 s against 0.06 s for 5632 x 2048)."""
        rows, cols = ref.left.shape[0], ref.right.shape[1]
        out = self._buffer("delta", rows * cols, ref.left.device).view(rows, cols)
        return torch.matmul(ref.left, ref.right, out=out)

    def block_ratio(self, ref: Reference, rows: slice, W: Tensor, R: Tensor, delta: Tensor | None = None) -> Tensor:
        """max |R - (W + sign * delta)| / bound over one block of rows (W and R: those rows, storage dtypes).

        `delta`: `prepare(ref)`, when the caller checks a whole tensor block by block. A 0-dim tensor on R's
        device: on CUDA nothing waits for it until `finish`."""
        n, width = R.shape[0], R.shape[1]
        u = _unit_roundoff(self.compute)
        p = precision_bits(R.dtype)
        err = self._buffer("err", n * width, R.device).view(n, width)
        if delta is None:
            torch.matmul(ref.left[rows], ref.right, out=err)
        else:
            err.copy_(delta[rows])
        if self.sign > 0:
            err.add_(W)
        else:
            err.sub_(W).neg_()
        err.sub_(R).abs_()               # |ref - R|, computed in the compute dtype
        bound = half_ulp(R, self.compute, out=self._buffer("bound", n * width, R.device).view(n, width))
        constant = (ref.norm_bound * (2 * _gamma(ref.rank + 1, u) + 8 * u)).clamp_(min=torch.finfo(R.dtype).tiny)
        bound.mul_(1 + 8 * u + 8 * u * 2.0 ** (p + 1)).add_(constant)
        return err.div_(bound).amax()

    def check(self, key: str, ref: Reference, W: Tensor, R: Tensor) -> bool:
        """The whole tensor, in row blocks. Records the result; returns whether it passed."""
        per_block = CPU_BLOCK_ELEMENTS * torch.get_num_threads() if R.device.type == "cpu" else GPU_BLOCK_ELEMENTS
        step = max(1, per_block // max(1, R.shape[1]))
        worst: Tensor | None = None
        delta = self.prepare(ref)
        for i in range(0, R.shape[0], step):
            j = min(i + step, R.shape[0])
            ratio = self.block_ratio(ref, slice(i, j), W[i:j], R[i:j], delta)
            worst = ratio if worst is None else torch.maximum(worst, ratio)
        self.record(key, ref.module, worst)
        return _value(worst) <= 1.0

    def record(self, key: str, module: str, worst: Tensor | float | None) -> None:
        """Note one tensor's worst ratio; a tensor on the GPU is read only in `finish`."""
        self._pending.append((key, module, worst))

    def _settle(self) -> None:
        res = self.result
        for key, module, worst in self._pending:
            value = _value(worst)
            res.tensors_checked += 1
            res.modules_checked.append(module)
            if value > res.worst_ratio or res.worst_tensor is None:
                res.worst_ratio, res.worst_tensor = value, key
            if not value <= 1.0:
                res.failures.append(f"{key} (module {module}): an element is {value:.3g} times its rounding bound "
                                    "away from base + delta")
        self._pending.clear()

    def finish(self, expected_modules: list[str]) -> TensorCheck:
        """Every module the adapter file holds must have been checked exactly once."""
        self._settle()
        seen: dict[str, int] = {}
        for module in self.result.modules_checked:
            seen[module] = seen.get(module, 0) + 1
        for module, why in self.skip.items():
            self.result.not_checked.append(f"{module} ({why})")
        for module in expected_modules:
            if module in self.skip:
                continue
            if seen.get(module, 0) != 1:
                self.result.failures.append(f"module {module}: merged {seen.get(module, 0)} times, expected once "
                                            "(left out of the merge?)")
        return self.result


def lora_modules(adapter: Any) -> list[str]:
    """The adapter's plain LoRA modules (linear and embedding, no DoRA): what the per-tensor rule covers."""
    return [m.module for m in adapter.modules.values()
            if m.kind in ("linear", "embedding") and m.magnitude is None]


def module_reference(adapter: Any, module: str, compute: torch.dtype, device: torch.device) -> Reference:
    m = adapter.modules[module]
    return reference_for(adapter.config, module, m.A, m.B, embedding=m.kind == "embedding", dtype=compute,
                         device=device)


def not_covered(adapter: Any) -> list[str]:
    """Changed tensors the per-tensor rule leaves to the output check, with the reason."""
    out = []
    for m in adapter.modules.values():
        if m.kind == "peft":
            out.append(f"{m.module} ({m.peft_type}: merged by peft's own layer)")
        elif m.kind == "shira":
            out.append(f"{m.module} (SHiRA)")
        elif m.magnitude is not None:
            out.append(f"{m.module} (DoRA)")
        if m.lora_bias is not None:
            out.append(f"{m.module}.bias (lora_bias)")
    out += [f"{key} (replaced by the adapter's copy)" for key in adapter.replacements]
    return out


# ----- a finished folder -------------------------------------------------------------------------

def check_merged(base_dir: str | Path, adapter: Any, merged_dir: str | Path, *, device: str | torch.device = "cpu",
                 compute: torch.dtype = torch.float32, sign: int = 1) -> TensorCheck:
    """The per-tensor check of a merged folder already on disk (the same rule as the one fused into the merge).

    Tensors the adapter does not change must be bit-identical to the base's (unless the dtype changed)."""
    from safetensors import safe_open

    from .merge import plan_merge

    dev = torch.device(device)
    plan = plan_merge(base_dir, adapter)
    merged_keys = _keys(Path(merged_dir))
    checker = TensorChecker(compute, sign)
    checker.exempt(adapter)
    covered = set(lora_modules(adapter))
    base_files = {e.name: shard.header.path for shard in plan.shards for e in shard.header.tensors}
    for key, path in base_files.items():
        if key not in merged_keys:
            checker.result.failures.append(f"{key}: missing from the merged checkpoint")
            continue
        with safe_open(str(path), "pt") as fb, safe_open(str(merged_keys[key]), "pt") as fm:
            W, R = fb.get_tensor(key), fm.get_tensor(key)
        op = plan.ops.get(key)
        module = op.module.module if op is not None and op.module is not None else None
        if module in covered and op is not None and checker.wants(module):
            if op.replacement is not None:  # the adapter's saved copy of the layer, then its LoRA on top
                W = op.replacement.to(W.dtype)
            if R.shape != W.shape or not R.is_floating_point():
                checker.result.failures.append(f"{key}: shape {tuple(R.shape)} {R.dtype}, base {tuple(W.shape)}")
                continue
            ref = module_reference(adapter, module, compute, dev)
            checker.check(key, ref, W.to(dev), R.to(dev))
        elif op is None and R.dtype == W.dtype and not torch.equal(R, W):
            checker.result.failures.append(f"{key}: not changed by the adapter, but differs from the base")
    for extra in sorted(set(merged_keys) - set(base_files))[:5]:
        checker.result.failures.append(f"{extra}: in the merged checkpoint but not in the base")
    checker.result.not_checked += not_covered(adapter)
    return checker.finish(sorted(covered))


def _keys(folder: Path) -> dict[str, Path]:
    from safetensors import safe_open

    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            found.update({k: path for k in f.keys()})
    return found


# ----- two folders, in ulps ------------------------------------------------------------------------

@dataclass
class CheckpointDiff:
    """Two checkpoints compared tensor by tensor (e.g. a merge on CUDA against the same merge on the CPU)."""

    tensors: int = 0
    differing: int = 0             # tensors not bit-identical
    elements_differing: int = 0
    max_ulps: float = 0.0          # in the storage dtype: |a - b| / ulp(b), worst element
    max_abs: float = 0.0
    worst_key: str | None = None
    mismatched: list[str] = field(default_factory=list)   # keys only on one side, or shapes/dtypes differing

    @property
    def identical(self) -> bool:
        return self.differing == 0 and not self.mismatched

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "identical": self.identical}


def compare_checkpoints(left: str | Path, right: str | Path) -> CheckpointDiff:
    """Same keys, shapes and dtypes, and how many ulps of the storage dtype apart the values are (right is the
    reference whose ulp is used)."""
    from safetensors import safe_open

    a, b = _keys(Path(left)), _keys(Path(right))
    diff = CheckpointDiff(mismatched=sorted(set(a) ^ set(b)))
    for key in sorted(set(a) & set(b)):
        with safe_open(str(a[key]), "pt") as fa, safe_open(str(b[key]), "pt") as fb:
            x, y = fa.get_tensor(key), fb.get_tensor(key)
        diff.tensors += 1
        if x.dtype != y.dtype or x.shape != y.shape:
            diff.mismatched.append(key)
            continue
        if torch.equal(x, y):
            continue
        diff.differing += 1
        if not y.is_floating_point() or y.dtype not in _FORMAT:
            diff.elements_differing += int((x != y).sum())
            diff.worst_key = diff.worst_key or key
            continue
        d = (x.double() - y.double()).abs()
        diff.elements_differing += int((d > 0).sum())
        ulps = float((d / (2 * half_ulp(y, torch.float64))).max())
        if ulps > diff.max_ulps:
            diff.max_ulps, diff.worst_key = ulps, key
        diff.max_abs = max(diff.max_abs, float(d.max()))
    return diff
