"""Read and rewrite safetensors files without decoding a single tensor.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the tensor
bytes. Renaming keys only changes the JSON, so a conversion writes a new header and copies the
data section with `os.copy_file_range` (in-kernel, reflinked on filesystems that can), which is
why converting a 300 MB adapter costs about as much as `cp`.

The header is untrusted input: every field is checked before it is used, the length is bounded
before anything is allocated, and offsets must tile the data section exactly, as the reference
implementation requires.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import SafetensorsHeaderError

#: The reference implementation's own bound on the header (safetensors/src/tensor.rs).
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_RANK = 32
MAX_KEY_LENGTH = 4096

#: Bits per element of every dtype name safetensors 0.8 defines.
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "F64": 64, "I64": 64, "U64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2"})
INT_DTYPES = frozenset({"U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"})


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; offsets are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return numel(self.shape)


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class SafetensorsFile:
    """A parsed, validated header and where the data starts."""

    path: Path
    data_start: int
    file_size: int
    metadata: dict[str, str] | None
    tensors: tuple[TensorEntry, ...]  # in data order
    identity: tuple[int, int] | None = None  # (device, inode) of the file the header was read from

    @property
    def by_name(self) -> dict[str, TensorEntry]:
        return {t.name: t for t in self.tensors}

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_start


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path: str | os.PathLike) -> SafetensorsFile:
    """Parse and validate a safetensors header; raise SafetensorsHeaderError on anything off."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            file_size, identity = st.st_size, (st.st_dev, st.st_ino)
            if file_size < 8:
                raise SafetensorsHeaderError(f"file is {file_size} bytes, shorter than the 8-byte length prefix", path)
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES:
                raise SafetensorsHeaderError(
                    f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit", path)
            if header_len > file_size - 8:
                raise SafetensorsHeaderError(
                    f"header length {header_len} runs past the end of the {file_size}-byte file", path)
            raw = f.read(header_len)
    except OSError as exc:
        raise SafetensorsHeaderError(f"cannot read: {exc.strerror or exc}", path) from None
    try:
        text = raw.decode("utf-8")
        if not text.startswith("{"):
            raise ValueError("header does not start with '{'")
        header = json.loads(text, object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SafetensorsHeaderError(f"header is not valid JSON: {str(exc)[:200]}", path) from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError("header is not a JSON object", path)
    return _validate(path, header, data_start=8 + header_len, file_size=file_size, identity=identity)


def _validate(path: Path, header: dict, *, data_start: int, file_size: int,
              identity: tuple[int, int] | None = None) -> SafetensorsFile:
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsHeaderError("__metadata__ must map strings to strings", path)
    entries: list[TensorEntry] = []
    for name, info in header.items():
        where = f"tensor {name[:200]!r}"
        if not name or len(name) > MAX_KEY_LENGTH:
            raise SafetensorsHeaderError(f"{where}: name must be 1 to {MAX_KEY_LENGTH} characters", path)
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsHeaderError(f"{where}: entry must have exactly dtype, shape and data_offsets", path)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise SafetensorsHeaderError(f"{where}: unknown dtype {str(dtype)[:40]!r}", path)
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(_is_int(d) and 0 <= d < 2**64 for d in shape)):
            raise SafetensorsHeaderError(f"{where}: shape must be a list of at most {MAX_RANK} non-negative ints", path)
        running = 1
        for d in shape:  # the reference implementation refuses any product that overflows 64 bits
            running *= d
            if running >= 2**64:
                raise SafetensorsHeaderError(f"{where}: shape {shape} overflows 64 bits", path)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise SafetensorsHeaderError(f"{where}: data_offsets must be two ints", path)
        begin, end = offsets
        if not 0 <= begin <= end:
            raise SafetensorsHeaderError(f"{where}: data_offsets {offsets} are not 0 <= begin <= end", path)
        entry = TensorEntry(name, dtype, tuple(shape), begin, end)
        bits = entry.numel * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != entry.nbytes:
            raise SafetensorsHeaderError(
                f"{where}: {dtype} {list(shape)} needs {bits / 8:g} bytes but data_offsets span {entry.nbytes}", path)
        entries.append(entry)
    entries.sort(key=lambda e: (e.begin, e.end))
    cursor = 0
    for entry in entries:
        if entry.begin != cursor:
            problem = "overlaps the previous tensor" if entry.begin < cursor else "leaves a gap before it"
            raise SafetensorsHeaderError(f"tensor {entry.name!r} at offset {entry.begin} {problem}", path)
        cursor = entry.end
    data_size = file_size - data_start
    if cursor != data_size:
        raise SafetensorsHeaderError(
            f"tensors cover {cursor} bytes but the data section holds {data_size}: "
            "the file is truncated or has trailing bytes", path)
    return SafetensorsFile(path, data_start, file_size, metadata, tuple(entries), identity)


def encode_header(entries: Sequence[TensorEntry], metadata: Mapping[str, str] | None) -> bytes:
    """The length prefix and JSON header for `entries` (offsets taken as given), padded to 8 bytes."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
    body = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Copy `count` bytes at `offset` of src to the current end of dst, in the kernel when it can."""
    dst_offset = os.lseek(dst_fd, 0, os.SEEK_CUR)
    remaining, src_offset = count, offset
    try:
        while remaining:
            done = os.copy_file_range(src_fd, dst_fd, remaining, src_offset, dst_offset)
            if done == 0:
                raise SafetensorsHeaderError(f"source ended {remaining} bytes early while copying")
            remaining -= done
            src_offset += done
            dst_offset += done
        os.lseek(dst_fd, dst_offset, os.SEEK_SET)
        return
    except OSError:
        pass  # cross-device on old kernels, or a filesystem without it: fall back below
    os.lseek(dst_fd, dst_offset, os.SEEK_SET)
    while remaining:
        chunk = os.pread(src_fd, min(remaining, 16 << 20), src_offset)
        if not chunk:
            raise SafetensorsHeaderError(f"source ended {remaining} bytes early while copying")
        write_all(dst_fd, chunk)
        remaining -= len(chunk)
        src_offset += len(chunk)


def write_renamed(
    source: SafetensorsFile,
    destination: str | os.PathLike,
    renames: Iterable[tuple[TensorEntry, str]],
    metadata: Mapping[str, str] | None = None,
    *,
    durable: bool = False,
) -> None:
    """Write `destination` holding the chosen tensors of `source` under new names, bytes untouched.

    Tensors keep their relative data order, so when every tensor is kept the data section is
    copied in one call; dropped tensors just split the copy into runs.
    """
    chosen = sorted(renames, key=lambda pair: pair[0].begin)
    names = [new for _, new in chosen]
    for name in names:
        if not name or name == "__metadata__" or len(name) > MAX_KEY_LENGTH:
            raise SafetensorsHeaderError(f"{name!r} cannot name a tensor in a safetensors file", source.path)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SafetensorsHeaderError(f"two tensors would both be named {dup!r}", source.path)
    out_entries: list[TensorEntry] = []
    runs: list[list[int]] = []  # [source offset, length] of contiguous source data
    cursor = 0
    for entry, new_name in chosen:
        out_entries.append(TensorEntry(new_name, entry.dtype, entry.shape, cursor, cursor + entry.nbytes))
        cursor += entry.nbytes
        if runs and runs[-1][0] + runs[-1][1] == entry.begin:
            runs[-1][1] += entry.nbytes
        elif entry.nbytes:
            runs.append([entry.begin, entry.nbytes])
    header = encode_header(out_entries, source.metadata if metadata is None else metadata)
    src_fd = os.open(source.path, os.O_RDONLY)
    try:
        st = os.fstat(src_fd)
        if source.identity is not None and (st.st_dev, st.st_ino) != source.identity:
            raise SafetensorsHeaderError("changed since its header was read (another file took its place); "
                                         "nothing was copied", source.path)
        dst_fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask decides
        try:
            write_all(dst_fd, header)
            for begin, length in runs:
                copy_range(src_fd, dst_fd, source.data_start + begin, length)
            if durable:
                os.fsync(dst_fd)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
