"""Merge an adapter into a base checkpoint on disk, or take it back out, one tensor at a time.

    base/ (model.safetensors, or model-0000k-of-0000n.safetensors + model.safetensors.index.json)
      |  read each shard's header; plan which base tensor every adapter module changes (or fail
      |  naming the module: missing tensor, shape of another model, non-finite values)
      v
    for each shard, for each tensor in file order:
        untouched          -> bytes copied in the kernel (copy_file_range), never decoded
        LoRA / DoRA / SHiRA -> read, W + delta in float32 (or float64), rounded once, written
        replaced           -> the adapter's copy (modules_to_save, bias="all", embedding base)
      |
      v
    out/.<name>.*.partial  -- renamed to out/ once every shard and file is written

Nothing ever holds the whole model: the output header is known before any data (shapes do not
change, dtypes are chosen up front), so each tensor is written as soon as it is computed, and peak
memory is a few copies of the largest changed tensor plus the adapter, whatever the shard size.

Every LoRA tensor is checked as it is made (tensor_check.py, `verify=True`): within half an ulp of its
storage dtype (plus the float32 accumulation bound) of W + delta, the delta re-derived from the config;
at the end every module must have been merged once. The check adds one float32 copy of the tensor (its
reference delta) and two cache-sized blocks; a failure raises MergeCheckError and nothing is written.

On CUDA (`device="cuda"`): the maths runs under `exact_math` (no TF32, no reduced-precision reductions),
the adapter's factors are moved to the GPU once, tensors are read into pinned host buffers (three), copied
up and back asynchronously on the current stream, and the writer thread waits on a CUDA event per tensor,
so reading tensor i+1, the GPU's work on tensor i and writing tensor i-1 overlap, and the host waits on the
GPU only when all three buffers are in flight. GPU memory per merged tensor of n elements: W and the
result (2 x n x storage bytes), the product, the scaled block and the sum (3 x 4n), the check's reference,
error and bound (3 x 4n): about 28 n bytes in bf16 (1.3 GB for a 7B model's 11008 x 4096 projection),
plus the adapter; MergeReport.peak_gpu_bytes says what it was. On the CPU, half the cores compute
(device.merge_threads) and a writer thread writes.

The arithmetic is `lora_math`'s, which follows PEFT's operation order, so a float32 merge equals
PEFT's `merge_and_unload()` bit for bit, and a bf16 merge equals PEFT's default (not safe_merge)
merge: `W <- bf16(W + dW_fp32)`, one rounding (FORMATS.md, "Math PEFT uses").

Errors are the worker's (registry/tensors/errors.py), so the CLI prints them as one line:
ShapeMismatchError (a module with no base tensor, or another shape: an adapter for another base),
NonFiniteError (safe=True found NaN/Inf, module named, no output), NotInvertibleError (unmerge of
DoRA or of replaced tensors), and MergeError / MergeOutputError (registry/tensors/errors.py) for the rest.
"""
from __future__ import annotations

import json
import os
import queue
import re
import resource
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from converters import source_files
from converters.safetensors_io import SafetensorsFile, TensorEntry, copy_range, encode_header, read_header

from ..atomic import new_folder, write_all
from .adapter_tensors import AdapterTensors, ModuleAdapter
from .device import compute_dtype, exact_math, merge_threads, pick_device, storage_dtype
from .gpu_faults import on_device
from .errors import (
    MergeCheckError,
    MergeError,
    MergeOutputError,
    NonFiniteError,
    NotInvertibleError,
    ShapeMismatchError,
)
from .lora_math import (
    add_delta,
    bias_delta,
    delta_layout,
    dora_merge,
    lora_delta,
    lora_product,
    shira_add,
    sub_delta,
)
from .tensor_check import TensorCheck, TensorChecker, lora_modules, not_covered, reference_for

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

#: Progress callbacks receive the number of base-checkpoint bytes just processed, one call per
#: tensor (an increment, like `tqdm.update`, the registry's `Progress` convention).
Progress = Callable[[int], None]

#: safetensors dtype names <-> torch dtypes, for the tensors the worker decodes.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
ST_NAMES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}
#: Only these are converted by `dtype=`; integer buffers (position ids) and fp8 keep their dtype.
CONVERTIBLE = frozenset({"F64", "F32", "F16", "BF16"})

#: Other serialisations of the same weights. Copying them beside merged safetensors would leave a
#: stale, unmerged copy that some loaders prefer, so they are left out (and listed in the report).
STALE_WEIGHTS = re.compile(
    r"(^pytorch_model.*\.bin$|^pytorch_model.*\.bin\.index\.json$|^tf_model.*\.h5$|^flax_model.*\.msgpack$"
    r"|^model.*\.onnx$|^rust_model\.ot$|^.*\.gguf$)")


#: An adapter that does not fit this base (a module with no base tensor, or another shape).
BaseMismatchError = ShapeMismatchError


@dataclass
class MergeReport:
    """What a merge or unmerge did, for logs, job results and benchmarks."""

    operation: Literal["merge", "unmerge"]
    base_dir: str
    out_dir: str
    modules_merged: int            # adapter modules applied (LoRA, DoRA, embedding, SHiRA)
    tensors_merged: int            # base tensors changed by a delta (weights and lora_bias biases)
    tensors_replaced: int          # base tensors replaced by the adapter's copy
    tensors_written: int           # every tensor of the output
    tensors_copied: int            # of those, bytes copied untouched (never decoded)
    shards: int
    bytes_written: int             # tensor files, headers included
    seconds: float
    device: str
    dtype: str | None              # storage dtype asked for; None kept each tensor's own
    precision: str                 # compute dtype of the deltas
    peak_rss_bytes: int | None     # the process's high-water mark (ru_maxrss), not just this call's
    skipped_files: list[str] = field(default_factory=list)   # stale weight copies not carried over
    #: The per-tensor check fused into the pass (tensor_check.TensorCheck.to_dict()); None with verify=False.
    verify: dict | None = None
    #: torch.cuda.max_memory_allocated over the merge, on CUDA; None on the CPU.
    peak_gpu_bytes: int | None = None


# ----- planning: which base tensor each adapter tensor changes ---------------------------------

@dataclass
class _Op:
    """What happens to one base tensor."""

    key: str
    module: ModuleAdapter | None = None          # its weight takes this module's delta
    bias_of: ModuleAdapter | None = None         # its bias takes this module's lora_B.bias * scaling
    replacement: Tensor | None = None            # the adapter's own copy replaces it
    replacement_key: str | None = None

    @property
    def name(self) -> str:
        """The adapter-side name to blame in messages."""
        if self.module is not None:
            return self.module.module
        if self.bias_of is not None:
            return self.bias_of.module
        return self.replacement_key or self.key


@dataclass
class _Shard:
    name: str
    header: SafetensorsFile


@dataclass
class MergePlan:
    """The base checkpoint's shards and, per base tensor key, what the adapter does to it."""

    base_dir: Path
    shards: list[_Shard]
    index: dict | None
    ops: dict[str, _Op]
    entries: dict[str, TensorEntry]


def _base_shards(base_dir: Path) -> tuple[list[_Shard], dict | None]:
    index_path = base_dir / INDEX_NAME
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise MergeError(f"{index_path}: not a valid safetensors index ({exc})") from None
        for shard in weight_map.values():
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
                raise MergeError(f"{index_path}: shard name {shard!r} is not a file in the folder")
        shards = []
        for name in sorted(set(weight_map.values())):
            if not (base_dir / name).is_file():
                raise MergeError(f"{index_path}: names shard {name}, which is missing")
            shards.append(_Shard(name, read_header(base_dir / name)))
        held = {e.name: shard.name for shard in shards for e in shard.header.tensors}
        for key, name in weight_map.items():
            if held.get(key) != name:
                raise MergeError(f"{index_path}: says {key} is in {name}, but "
                                 + (f"it is in {held[key]}" if key in held else "no shard holds it"))
        return shards, index
    if (base_dir / SINGLE_NAME).is_file():
        return [_Shard(SINGLE_NAME, read_header(base_dir / SINGLE_NAME))], None
    found = sorted(p.name for p in base_dir.glob("*")) if base_dir.is_dir() else []
    listing = ", ".join(found[:10]) or "nothing"
    raise MergeError(f"{base_dir}: no {SINGLE_NAME} or {INDEX_NAME} (found: {listing}); merging needs a "
                     "safetensors base checkpoint")


def _match(entries: dict[str, TensorEntry], key: str) -> list[str]:
    """Base keys for an adapter-side key: exact, else the unique one that differs by a wrapper prefix
    (`bert.encoder...` for `encoder...`, or the reverse), the rule of converters.base_model."""
    if key in entries:
        return [key]
    return [name for name in entries if name.endswith("." + key) or key.endswith("." + name)]


def _find(entries: dict[str, TensorEntry], key: str, who: str) -> str:
    matches = _match(entries, key)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise BaseMismatchError(f"{who}: the base checkpoint has no tensor {key} (nor one differing only by "
                                "a wrapper prefix): is this adapter for another base model?")
    raise BaseMismatchError(f"{who}: {key} matches several base tensors ({', '.join(sorted(matches)[:4])}); "
                            "cannot tell which one the adapter modifies")


def _replacement_target(key: str) -> str:
    """Adapter keys of replaced tensors keep PEFT's wrapper segment (`q_proj.base_layer.bias`,
    `embed_tokens.base_layer.weight`); the base checkpoint has the plain name."""
    parts = key.split(".")
    if len(parts) >= 3 and parts[-2] == "base_layer":
        return ".".join(parts[:-2] + parts[-1:])
    return key


def _delta_shape(m: ModuleAdapter) -> tuple[int, ...]:
    assert m.A is not None and m.B is not None
    if m.A.ndim != 2 or m.B.ndim != 2 or m.B.shape[1] != m.A.shape[0]:
        raise BaseMismatchError(f"module {m.module}: lora_B {tuple(m.B.shape)} and lora_A {tuple(m.A.shape)} "
                                "are not rank-r factors of a 2-D weight (conv LoRA is not supported)")
    out, inp = m.B.shape[0], m.A.shape[1]
    if m.kind == "embedding":
        return (inp, out)
    return (inp, out) if m.fan_in_fan_out else (out, inp)


def _check_module(m: ModuleAdapter, entry: TensorEntry) -> None:
    if entry.dtype not in CONVERTIBLE:
        raise MergeError(f"module {m.module}: base tensor {entry.name} is {entry.dtype}; only float weights "
                         "can be merged into (dequantize the base first)")
    if m.kind == "peft":
        from .peft_layers import check_layer

        check_layer(m.peft_type, m.module, m.layer, tuple(entry.shape))
        return
    if m.kind == "shira":
        assert m.shira_indices is not None and m.shira_weight is not None
        idx = m.shira_indices
        values = m.shira_weight.numel()
        if len(entry.shape) != 2 or idx.ndim != 2 or idx.shape[0] != 2 or idx.shape[1] != values:
            raise BaseMismatchError(f"module {m.module}: SHiRA indices {tuple(idx.shape)} / weight "
                                    f"{tuple(m.shira_weight.shape)} do not fit base tensor {entry.name} "
                                    f"{entry.shape}")
        if idx.numel() and (int(idx[0].max()) >= entry.shape[0] or int(idx[1].max()) >= entry.shape[1]
                            or int(idx.min()) < 0):
            raise BaseMismatchError(f"module {m.module}: SHiRA indices reach ({int(idx[0].max())}, "
                                    f"{int(idx[1].max())}) but base tensor {entry.name} is {entry.shape}: is "
                                    "this adapter for another base model?")
        return
    shape = _delta_shape(m)
    if tuple(entry.shape) != shape:
        raise BaseMismatchError(f"module {m.module}: the adapter's delta is {shape} but base tensor "
                                f"{entry.name} is {entry.shape}: is this adapter for another base model? "
                                "(shape mismatch)")
    if m.magnitude is not None:
        rows = m.B.shape[0]  # type: ignore[union-attr]
        if m.magnitude.numel() != rows:
            raise BaseMismatchError(f"module {m.module}: DoRA magnitude has {m.magnitude.numel()} values for "
                                    f"{rows} output rows of {entry.name}")


def plan_merge(base_dir: str | Path, adapter: AdapterTensors) -> MergePlan:
    """Read the base checkpoint's headers and map every adapter tensor to the base tensor it changes.

    Raises BaseMismatchError naming the module when a module has no base tensor, matches several, or
    has another shape: the sign of an adapter trained on another base model.
    """
    base_dir = Path(base_dir)
    shards, index = _base_shards(base_dir)
    entries: dict[str, TensorEntry] = {}
    for shard in shards:
        for entry in shard.header.tensors:
            if entry.name in entries:
                raise MergeError(f"{base_dir}: tensor {entry.name} is stored in two shards")
            entries[entry.name] = entry
    ops: dict[str, _Op] = {}

    def op_for(key: str, who: str) -> _Op:
        op = ops.setdefault(key, _Op(key))
        if op.module is not None or op.bias_of is not None:
            raise BaseMismatchError(f"{who}: base tensor {key} is already changed by module {op.name}")
        return op

    for key, tensor in adapter.replacements.items():
        if ".token_adapter." in f".{key}":
            raise MergeError(f"tensor {key}: PEFT trainable tokens (trainable_token_indices) are not "
                             "supported by merge yet (they overwrite chosen embedding rows, indices in the "
                             "config)")
        target = _find(entries, _replacement_target(key), f"replaced tensor {key}")
        entry = entries[target]
        if tuple(tensor.shape) != tuple(entry.shape):
            raise BaseMismatchError(f"replaced tensor {key}: the adapter's copy is {tuple(tensor.shape)} but "
                                    f"base tensor {target} is {entry.shape}: is this adapter for another "
                                    "base model (or a resized vocabulary)?")
        op = ops.setdefault(target, _Op(target))
        if op.replacement is not None:
            raise BaseMismatchError(f"replaced tensor {key}: base tensor {target} is also replaced by "
                                    f"{op.replacement_key}")
        op.replacement, op.replacement_key = tensor, key
    for m in adapter.modules.values():
        weight_key = _find(entries, m.weight_key, f"module {m.module}")
        _check_module(m, entries[weight_key])
        op_for(weight_key, f"module {m.module}").module = m
        if m.lora_bias is not None:
            bias_key = weight_key[: -len("weight")] + "bias" if weight_key.endswith("weight") else None
            if bias_key is None or bias_key not in entries:
                missing = bias_key or m.module + ".bias"
                raise BaseMismatchError(f"module {m.module}: the adapter has lora_B.bias (lora_bias=True) "
                                        f"but the base has no bias {missing} to add it to")
            if tuple(entries[bias_key].shape) != tuple(m.lora_bias.shape):
                raise BaseMismatchError(f"module {m.module}: lora_B.bias is {tuple(m.lora_bias.shape)} but "
                                        f"base tensor {bias_key} is {entries[bias_key].shape} (shape "
                                        "mismatch)")
            bias_op = ops.setdefault(bias_key, _Op(bias_key))
            if bias_op.module is not None or bias_op.bias_of is not None:
                raise BaseMismatchError(f"module {m.module}: base tensor {bias_key} is already changed by "
                                        f"{bias_op.name}")
            bias_op.bias_of = m
    return MergePlan(base_dir, shards, index, ops, entries)


def _check_adapter_finite(adapter: AdapterTensors) -> None:
    for m in adapter.modules.values():
        for what, t in (("lora_A", m.A), ("lora_B", m.B), ("lora_magnitude_vector", m.magnitude),
                        ("lora_B.bias", m.lora_bias), ("shira_weight", m.shira_weight)):
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"module {m.module}: the adapter's {what} holds NaN or Inf; nothing was "
                                     "written")
    if adapter.peft_layers is not None:
        for key, t in adapter.peft_layers.tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"tensor {key}: the adapter's {adapter.peft_type} tensor holds NaN or Inf; "
                                     "nothing was written")
    for key, t in adapter.replacements.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"replaced tensor {key}: the adapter's copy holds NaN or Inf; nothing was "
                                 "written")


# ----- tensor I/O ------------------------------------------------------------------------------

class _Buffers:
    """Reusable flat buffers, grown on demand, kept for a whole merge.

    A fresh 40 MB tensor costs more in page faults than the arithmetic done in it (13 ms against 2 ms
    for B @ A on the 2-core benchmark machine), so the loop computes in the same few buffers tensor
    after tensor. `io` are the two byte buffers tensors are read into and written from.
    """

    def __init__(self, pinned: bool = False) -> None:
        self._store: dict[tuple[str, torch.dtype, str], Tensor] = {}
        # On CUDA a third buffer lets one tensor be read while the GPU computes the next and a third drains.
        self.io = [_IoBuffer(pinned) for _ in range(3 if pinned else 2)]

    def get(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (name, dtype, str(device))
        buf = self._store.get(key)
        if buf is None or buf.numel() < numel:
            self._store.pop(key, None)
            buf = None  # free the old one before allocating the larger
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._store[key] = buf
        return buf[:numel]


class _IoBuffer:
    """A growable byte buffer that holds one tensor as read, then as written.

    Pinned (page-locked) for a CUDA merge, so copies to and from the GPU run asynchronously on the
    stream (torch's caching host allocator keeps a pinned block alive until the copies using it are done).
    """

    def __init__(self, pinned: bool = False) -> None:
        self.pinned = pinned
        self.data = torch.empty(0, dtype=torch.uint8)

    def take(self, nbytes: int) -> Tensor:
        if self.data.numel() < nbytes:
            self.data = torch.empty(0, dtype=torch.uint8)
            self.data = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pinned)
        return self.data[:nbytes]


def _read_into(fd: int, header: SafetensorsFile, entry: TensorEntry, buf: Tensor) -> Tensor:
    """One tensor read with pread (no mmap, so no page of the shard stays mapped) into `buf`."""
    if entry.dtype not in TORCH_DTYPES:
        raise MergeError(f"{header.path}: tensor {entry.name} is {entry.dtype}, which the worker cannot "
                         "decode")
    view = memoryview(buf.numpy())  # type: ignore[arg-type]
    done, offset = 0, header.data_start + entry.begin
    while done < entry.nbytes:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise MergeError(f"{header.path}: file ended while reading tensor {entry.name}")
        done += n
    return buf.view(TORCH_DTYPES[entry.dtype]).reshape(entry.shape)


def _write_tensor(fd: int, tensor: Tensor) -> None:
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    write_all(fd, memoryview(data))  # type: ignore[arg-type]


class _Writer:
    """Appends to one output file, in order, on a background thread.

    write(2) and copy_file_range(2) release the GIL, so the next tensor is read and merged while this
    one is written. I/O buffers travel with their write and come back through `free` once written:
    with two of them, one is filled while the other drains, and memory stays at two tensors.
    """

    def __init__(self, src_fd: int, dst_fd: int, io: list[_IoBuffer]) -> None:
        self.src, self.dst = src_fd, dst_fd
        self.jobs: queue.Queue = queue.Queue(maxsize=len(io))
        self.free: queue.Queue = queue.Queue()
        for buffer in io:
            self.free.put(buffer)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="swiftreg-merge-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            kind, payload, length, buffer, ready = job
            if self.error is None:  # after a failure, keep draining so the producer never blocks
                try:
                    if ready is not None:  # a CUDA event: the copy from the GPU into `payload` is done
                        ready.synchronize()
                    if kind == "copy":
                        copy_range(self.src, self.dst, payload, length)
                    else:
                        _write_tensor(self.dst, payload)
                except BaseException as exc:  # noqa: BLE001 - re-raised by close()
                    self.error = exc
            del payload
            if buffer is not None:
                self.free.put(buffer)

    def buffer(self) -> _IoBuffer:
        return self.free.get()

    def copy(self, offset: int, length: int) -> None:
        self.jobs.put(("copy", offset, length, None, None))

    def write(self, tensor: Tensor, buffer: _IoBuffer | None, ready: Any = None) -> None:
        """Queue `tensor`; `buffer` (the I/O buffer it lives in, if any) is freed once it is written.
        `ready`: a CUDA event the writer waits for first (the asynchronous copy that fills `tensor`)."""
        if self.error is not None:
            raise self.error
        self.jobs.put(("write", tensor, 0, buffer, ready))

    def release(self, buffer: _IoBuffer) -> None:
        self.free.put(buffer)

    def close(self) -> None:
        """Wait for every queued write; re-raise the first error the thread met."""
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _element_size(dtype: str) -> int:
    return torch.empty(0, dtype=TORCH_DTYPES[dtype]).element_size()


def _out_dtype(entry: TensorEntry, target: torch.dtype | None) -> str:
    if target is None or entry.dtype not in CONVERTIBLE:
        return entry.dtype
    return ST_NAMES[target]


# ----- the streaming pass ----------------------------------------------------------------------

#: Deltas are scaled, summed and rounded in row blocks of about this many elements (1 MB of float32
#: each), small enough to stay in cache between the steps.
BLOCK_ELEMENTS = 256 << 10
#: On a GPU, blocks only bound the scratch memory; kernel launches cost more than cache misses.
GPU_BLOCK_ELEMENTS = 64 << 20


@dataclass(frozen=True)
class _Math:
    sign: int                   # +1 merge, -1 unmerge
    compute: torch.dtype        # float32 or float64
    device: torch.device
    checker: TensorChecker | None = None   # the per-tensor check, fused into the pass (tensor_check.py)
    config: dict | None = None             # the adapter's config, from which the check derives its own scaling


def _merge_plain_lora(W: Tensor, m: ModuleAdapter, out_dtype: torch.dtype, calc: _Math,
                      buffers: _Buffers, key: str = "") -> Tensor:
    """W +/- delta for plain LoRA, in reused buffers, written over W's own buffer when the dtype stays.

    Element for element this is `add_delta(W, lora_delta(m))` (or `sub_delta`): the product B @ A
    whole, as PEFT computes it (a blocked matmul might sum in another order), then per block of rows
    the scaling, float(W) +/- that, and one rounding. Scaling, sum and rounding are elementwise, so
    doing them in cache-sized blocks changes no bit; it only saves two passes over memory.

    With `calc.checker`, each block is checked as soon as it is rounded, while W's block is still at
    hand (kept aside when the result overwrites it): the per-tensor check costs no extra read.
    """
    assert m.A is not None and m.B is not None
    device, compute = calc.device, calc.compute
    rows, cols = m.B.shape[0], m.A.shape[1]
    product = lora_product(m, dtype=compute, device=device,
                           out=buffers.get("product", rows * cols, compute, device).view(rows, cols))
    product = product.T if delta_layout(m) else product  # shaped like W now
    in_place = out_dtype == W.dtype and device.type == "cpu"
    result = W if in_place else torch.empty(W.shape, dtype=out_dtype, device=device)
    width = W.shape[1]
    per_block = BLOCK_ELEMENTS * torch.get_num_threads() if device.type == "cpu" else GPU_BLOCK_ELEMENTS
    step = max(1, per_block // max(1, width))
    block = min(W.shape[0], step) * width
    acc_flat = buffers.get("acc", block, compute, device)
    delta_flat = buffers.get("delta", block, compute, device)
    checker = calc.checker if calc.checker is not None and calc.checker.wants(m.module) else None
    ref = None
    if checker is not None:
        assert calc.config is not None
        ref = reference_for(calc.config, m.module, m.A, m.B, embedding=m.kind == "embedding", dtype=compute,
                            device=device)
        kept_flat = buffers.get("kept", block, W.dtype, device) if in_place else None
        reference_delta = checker.prepare(ref)
    worst: Tensor | None = None
    for i in range(0, W.shape[0], step):
        j = min(i + step, W.shape[0])
        acc = acc_flat[: (j - i) * width].view(j - i, width)
        delta = delta_flat[: (j - i) * width].view(j - i, width)
        torch.mul(product[i:j], m.scaling, out=delta)
        acc.copy_(W[i:j])
        if calc.sign > 0:
            acc.add_(delta)
        else:
            acc.sub_(delta)
        before = W[i:j]
        if ref is not None and kept_flat is not None:
            before = kept_flat[: (j - i) * width].view(j - i, width)
            before.copy_(W[i:j])
        result[i:j].copy_(acc)
        if checker is not None and ref is not None:
            ratio = checker.block_ratio(ref, slice(i, j), before, result[i:j], reference_delta)
            worst = ratio if worst is None else torch.maximum(worst, ratio)
    if checker is not None:
        checker.record(key, m.module, worst)
    return result


def _apply(op: _Op, W: Tensor | None, base_dtype: torch.dtype, out_dtype: torch.dtype, calc: _Math,
           buffers: _Buffers) -> Tensor:
    """The new value of one base tensor. W is the stored one; None when the adapter replaces it."""
    m = op.module
    if op.replacement is not None:
        # The adapter's copy, in the dtype the loaded PeftModel holds it (the base's), then any delta.
        W = op.replacement.to(dtype=base_dtype)
        if m is None and op.bias_of is None:
            return W.to(out_dtype)
    elif m is not None and m.kind in ("linear", "embedding") and m.magnitude is None:
        assert W is not None  # from a pinned buffer on CUDA: an asynchronous copy, ordered on the stream
        return _merge_plain_lora(W.to(calc.device, non_blocking=True), m, out_dtype, calc, buffers, op.key)
    assert W is not None
    if m is not None and m.kind == "peft":  # peft's own layer merges it (peft_layers.py), on the CPU
        from .peft_layers import merged

        value = merged(m.layer, W.to("cpu", calc.compute).contiguous(), sign=calc.sign, module=m.module,
                       peft_type=m.peft_type)
        return value.to(out_dtype)
    W = W.to(calc.device)
    add = add_delta if calc.sign > 0 else sub_delta
    if m is not None:
        if m.kind == "shira":
            return shira_add(W, m, sign=calc.sign, dtype=calc.compute, out_dtype=out_dtype)
        delta = lora_delta(m, dtype=calc.compute, device=calc.device)
        if m.magnitude is not None:
            embedding_or_conv1d = m.fan_in_fan_out or m.kind == "embedding"
            return dora_merge(W, delta, m.magnitude, embedding_or_conv1d, out_dtype=out_dtype)
        value = add(W, delta, out_dtype=out_dtype, consume_delta=True)  # W itself stays as it was
        if calc.checker is not None and calc.config is not None and calc.checker.wants(m.module):  # e.g. a saved
            # embedding layer with its LoRA
            calc.checker.check(op.key, reference_for(calc.config, m.module, m.A, m.B, embedding=m.kind == "embedding",
                                                     dtype=calc.compute, device=calc.device), W, value)
        return value
    assert op.bias_of is not None
    bias = bias_delta(op.bias_of, dtype=calc.compute, device=calc.device)
    assert bias is not None
    return add(W, bias, out_dtype=out_dtype)


def _shares_memory(a: Tensor, b: Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _write_shard(plan: MergePlan, shard: _Shard, dst: Path, *, target: torch.dtype | None, calc: _Math,
                 safe: bool, counts: Counter[str], progress: Progress | None, buffers: _Buffers) -> int:
    """Write one output shard: the header first (every size is known), then each tensor in data order."""
    header = shard.header
    out_entries: list[TensorEntry] = []
    cursor = 0
    for e in header.tensors:  # data order
        dtype = _out_dtype(e, target)
        nbytes = e.nbytes if dtype == e.dtype else e.numel * _element_size(dtype)
        out_entries.append(TensorEntry(e.name, dtype, e.shape, cursor, cursor + nbytes))
        cursor += nbytes
    head = encode_header(out_entries, header.metadata)
    src = os.open(header.path, os.O_RDONLY)
    try:
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask decides
        try:
            write_all(dst_fd, head)
            writer = _Writer(src, dst_fd, buffers.io)
            try:
                _stream(plan, header, out_entries, writer, calc=calc, safe=safe, counts=counts,
                        progress=progress, buffers=buffers)
            finally:
                writer.close()
        finally:
            os.close(dst_fd)
    finally:
        os.close(src)
    return len(head) + cursor


def _stream(plan: MergePlan, header: SafetensorsFile, out_entries: list[TensorEntry], writer: _Writer, *,
            calc: _Math, safe: bool, counts: Counter[str], progress: Progress | None, buffers: _Buffers) -> None:
    run: list[int] = []  # [offset, length] of untouched bytes not yet queued for copying
    for e, out in zip(header.tensors, out_entries, strict=True):
        op = plan.ops.get(e.name)
        if op is None and out.dtype == e.dtype:
            if run and run[0] + run[1] == header.data_start + e.begin:
                run[1] += e.nbytes
            else:
                if run:
                    writer.copy(run[0], run[1])
                run = [header.data_start + e.begin, e.nbytes]
            counts["copied"] += 1
        else:
            if run:
                writer.copy(run[0], run[1])
                run = []
            out_dtype = TORCH_DTYPES[out.dtype]
            io = writer.buffer()
            try:
                if op is None:  # only a dtype change
                    value = _read_into(writer.src, header, e, io.take(e.nbytes)).to(out_dtype)
                else:
                    stored = None if op.replacement is not None else _read_into(writer.src, header, e,
                                                                                io.take(e.nbytes))
                    value = _apply(op, stored, TORCH_DTYPES[e.dtype], out_dtype, calc, buffers)
                    del stored
                    counts["replaced"] += op.replacement is not None
                    counts["merged"] += op.module is not None or op.bias_of is not None
                    if safe and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                        raise NonFiniteError(f"module {op.name}: merged tensor {e.name} holds NaN or Inf "
                                             "(safe=True); nothing was written to the destination")
                ready = None
                if value.device.type != "cpu":  # back into the I/O buffer: W's bytes are no longer needed
                    host = io.take(out.nbytes).view(out_dtype).view(out.shape)
                    host.copy_(value, non_blocking=io.pinned)  # stream-ordered after the maths that made it
                    if io.pinned:
                        ready = torch.cuda.Event()
                        ready.record()
                    value = host
            except BaseException:
                writer.release(io)
                raise
            if _shares_memory(value, io.data):
                writer.write(value, io, ready)
            else:
                writer.release(io)
                writer.write(value, None)
            del value
        counts["written"] += 1
        if progress is not None:
            progress(e.nbytes)
    if run:
        writer.copy(run[0], run[1])


def _update_config(path: Path, dtype: torch.dtype) -> None:
    """Set the storage dtype in config.json (and in nested sub-configs that state one)."""
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return  # not ours to repair; the copy stays as it was
    name = str(dtype).removeprefix("torch.")

    def visit(node: dict, top: bool) -> None:
        present = [k for k in ("torch_dtype", "dtype") if k in node]
        for k in present:
            node[k] = name
        if top and not present:
            node["torch_dtype"] = name
        for value in node.values():
            if isinstance(value, dict):
                visit(value, False)

    if isinstance(config, dict):
        visit(config, True)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _copy_others(files: list[source_files.SourceFile], tmp: Path, written: set[str]) -> list[str]:
    """Copy the base folder's other files (those the symlink rule let through) beside the written shards."""
    skipped: list[str] = []
    for found in files:
        top = found.rel.split("/", 1)[0]
        if top in written:
            continue
        if STALE_WEIGHTS.match(top):
            if top not in skipped:
                skipped.append(top)
            continue
        dst = tmp / found.rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        source_files.copy_file(found, dst)
    return skipped


def _prepare_output(base_dir: Path, out_dir: str | Path, overwrite: bool) -> Path:
    dst = Path(out_dir).absolute()
    src = base_dir.absolute()
    if dst == src or src in dst.parents or dst in src.parents:
        raise MergeOutputError(f"{dst}: the output must be a folder outside the base checkpoint (merging "
                               "never works in place)")
    if dst.exists() and not overwrite:
        raise MergeOutputError(f"{dst}: already exists; choose a new path or pass overwrite=True")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return dst


def _run(operation: Literal["merge", "unmerge"], base_dir: str | Path, adapter: AdapterTensors,
         out_dir: str | Path, *, dtype: str | None, device: str | torch.device, precision: str, safe: bool,
         progress: Progress | None, overwrite: bool, verify: bool = True) -> MergeReport:
    start = time.perf_counter()
    base_dir = Path(base_dir)
    target = storage_dtype(dtype)
    compute = compute_dtype(precision)
    dev = pick_device(device)
    if safe:
        _check_adapter_finite(adapter)
    # The symlink rule (converters/source_files.py) on the whole base folder before a byte is read: a
    # Hugging Face cache snapshot is read through its links, a link leading anywhere else is refused.
    base_files = list(source_files.walk(base_dir, hidden=True))
    if dev.type == "cuda":
        with on_device(dev):  # moving the factors can run out of GPU memory too (gpu_faults: a clear error)
            adapter = _factors_on(adapter, dev)
    plan = plan_merge(base_dir, adapter)
    if operation == "unmerge":
        _refuse_uninvertible(plan)
    dst = _prepare_output(base_dir, out_dir, overwrite)
    counts: Counter[str] = Counter()  # merged, replaced, written, copied tensors; bytes written
    buffers = _Buffers(pinned=dev.type == "cuda")
    sign = 1 if operation == "merge" else -1
    checker = TensorChecker(compute, sign) if verify else None
    if checker is not None:
        checker.exempt(adapter)
    calc = _Math(sign, compute, dev, checker, adapter.config)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with exact_math(dev), merge_threads(dev), new_folder(dst) as tmp:
        written_names: set[str] = set()
        for number, shard in enumerate(plan.shards, 1):
            with on_device(dev, shard=shard.name, count=number):  # CUDA OOM / a lost GPU: named, nothing kept
                size = _write_shard(plan, shard, tmp / shard.name, target=target, calc=calc, safe=safe,
                                    counts=counts, progress=progress, buffers=buffers)
            counts["bytes"] += size
            written_names.add(shard.name)
        if plan.index is not None:
            index = dict(plan.index)
            if target is not None:
                metadata = dict(index.get("metadata") or {})
                metadata["total_size"] = sum(e.numel * _element_size(_out_dtype(e, target))
                                             for e in plan.entries.values())
                index["metadata"] = metadata
            if target is None:
                shutil.copyfile(base_dir / INDEX_NAME, tmp / INDEX_NAME)
            else:
                (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            written_names.add(INDEX_NAME)
        skipped = _copy_others(base_files, tmp, written_names)
        if target is not None and (tmp / "config.json").is_file():
            _update_config(tmp / "config.json", target)
        check = _finish_check(checker, adapter, operation)
    return MergeReport(
        operation=operation, base_dir=str(base_dir), out_dir=str(dst),
        modules_merged=len(adapter.modules), tensors_merged=counts["merged"], tensors_replaced=counts["replaced"],
        tensors_written=counts["written"], tensors_copied=counts["copied"], shards=len(plan.shards),
        bytes_written=counts["bytes"], seconds=time.perf_counter() - start, device=str(dev),
        dtype=None if target is None else str(target).removeprefix("torch."),
        precision=str(compute).removeprefix("torch."),
        peak_rss_bytes=_peak_rss(), skipped_files=skipped, verify=None if check is None else check.to_dict(),
        peak_gpu_bytes=torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None)


def _finish_check(checker: TensorChecker | None, adapter: AdapterTensors, operation: str) -> TensorCheck | None:
    """Close the fused per-tensor check; a failure raises here, inside the temporary folder, so nothing is written."""
    if checker is None:
        return None
    check = checker.finish(lora_modules(adapter))
    check.not_checked += not_covered(adapter)
    if not check.passed:
        more = f" (and {len(check.failures) - 1} more)" if len(check.failures) > 1 else ""
        raise MergeCheckError(f"the {operation} failed its per-tensor check: {check.failures[0]}{more}; nothing was "
                              "written")
    return check


def _factors_on(adapter: AdapterTensors, dev: torch.device) -> AdapterTensors:
    """A copy of `adapter` whose LoRA factors live on `dev`, moved once up front (a few MB to a few hundred):
    moving them per module from pageable memory would make the CPU wait for the GPU at every module."""
    moved = {}
    for name, m in adapter.modules.items():
        if m.kind in ("linear", "embedding"):
            m = replace(m, **{f: getattr(m, f).to(dev) for f in ("A", "B", "magnitude", "lora_bias")
                              if getattr(m, f) is not None})
        moved[name] = m
    return replace(adapter, modules=moved)


def _peak_rss() -> int | None:
    try:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    except (OSError, AttributeError):
        return None


def _refuse_uninvertible(plan: MergePlan) -> None:
    from converters.methods import tuners

    for op in plan.ops.values():
        m = op.module
        if m is not None and m.kind == "peft":
            tuner = tuners.peft_tuner(m.peft_type)
            if tuner is not None and tuner.unmerge is not None:
                raise NotInvertibleError(f"module {m.module}: {m.peft_type} cannot be unmerged from merged weights "
                                         f"alone: {tuner.unmerge}")
        if m is not None and m.magnitude is not None:
            raise NotInvertibleError(
                f"module {m.module}: DoRA cannot be unmerged from merged weights alone: the merge scaled "
                "each row by m / ||W + dW||, and that norm of the original W is lost with it")
        if op.replacement is not None:
            raise NotInvertibleError(
                f"replaced tensor {op.replacement_key}: the merge wrote the adapter's own copy over base "
                f"tensor {op.key} (modules_to_save, bias='all' or a saved embedding layer); the original is "
                "gone, so unmerge cannot give it back")


def merge_checkpoint(base_dir: str | Path, adapter: AdapterTensors, out_dir: str | Path, *,
                     dtype: str | None = None, device: str | torch.device = "auto",
                     precision: str = "float32", safe: bool = False, progress: Progress | None = None,
                     overwrite: bool = False, verify: bool = True) -> MergeReport:
    """Write `base_dir` with `adapter` merged in to `out_dir`, streaming tensor by tensor.

    dtype: storage dtype of every float tensor of the output ("bf16", "fp16", "fp32"); None keeps
    each tensor's own (config.json's `torch_dtype`/`dtype` follows a change). precision: compute dtype
    of the deltas and sums ("float32", bit-compatible with PEFT, or "float64"); each merged tensor is
    rounded to its storage dtype once. device: "auto" (CUDA when available), "cpu", "cuda[:N]".
    safe: check the adapter and every merged tensor for NaN/Inf; a failure names the module and
    leaves no output. The output appears atomically (temporary folder renamed into place).
    verify: the per-tensor check (tensor_check.py) fused into the pass, on `device`: every plain LoRA tensor
    within half a storage ulp (plus the float32 accumulation bound) of W + delta, every module merged once;
    a failure raises MergeCheckError and leaves no output. On CUDA the maths runs under `exact_math`.
    """
    return _run("merge", base_dir, adapter, out_dir, dtype=dtype, device=device, precision=precision,
                safe=safe, progress=progress, overwrite=overwrite, verify=verify)


def unmerge_checkpoint(merged_dir: str | Path, adapter: AdapterTensors, out_dir: str | Path, *,
                       dtype: str | None = None, device: str | torch.device = "auto",
                       precision: str = "float32", safe: bool = False, progress: Progress | None = None,
                       overwrite: bool = False, verify: bool = True) -> MergeReport:
    """Subtract exactly the delta `merge_checkpoint` added: `W - delta` formed in `precision`, one rounding.

    In float32 storage this recovers the base to within float32 rounding of W + dW - dW; in bf16 the
    merge's rounding is not undone (a drift of at most about one bf16 ulp per element). Refuses, before
    reading any weight, what the merged weights cannot give back: DoRA modules (the row norms of W + dW
    are lost) and tensors the adapter replaced outright (modules_to_save copies, bias="all" biases,
    saved embedding layers), naming the module.
    """
    return _run("unmerge", merged_dir, adapter, out_dir, dtype=dtype, device=device, precision=precision,
                safe=safe, progress=progress, overwrite=overwrite, verify=verify)


__all__ = [
    "BaseMismatchError", "MergeReport",
    "MergePlan", "plan_merge", "merge_checkpoint", "unmerge_checkpoint",
]
