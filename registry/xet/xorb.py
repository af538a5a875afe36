"""Xorbs: a run of compressed chunks, each parsed, decompressed and hashed, the whole checked against its name.

A xorb as hf_xet uploads it (`POST /v1/xorbs/default/<hash>`) is its chunks back to back, each an 8-byte
header (version 0, compressed length: 3 bytes little-endian, scheme, uncompressed length: 3 bytes) and
its payload: scheme 0 the bytes as they are, 1 an LZ4 frame, 2 an LZ4 frame of the bytes regrouped by
position mod 4 ("byte grouping 4"). A trailing footer (the "XETBLOB" ident, which no chunk header can
start with) is allowed and ignored: the chunks alone define the xorb's hash. Every chunk is
decompressed and hashed while it is read from a file, so a 64 MiB xorb is never whole in memory.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import lz4.frame
import numpy as np

from ..errors import XetError
from . import hashing

HEADER = 8
FOOTER_IDENT = b"XETBLOB"
MAX_CHUNK = 128 * 1024          # hf_xet's target chunk (64 KiB) times its maximum multiplier (2)
MAX_CHUNKS = 8 * 1024
MAX_XORB_BYTES = 64 * 1024 * 1024 + MAX_CHUNKS * (HEADER + 64)  # 64 MiB of chunks, headers, LZ4 overhead
SCHEMES = {0: "none", 1: "lz4", 2: "bg4-lz4"}
_INDEX = struct.Struct("<32sIII")  # chunk hash, offset of its header, header + payload length, uncompressed size


#: A xorb that does not parse or whose content does not match its name (the message says where).
XorbError = XetError


@dataclass(frozen=True)
class Chunk:
    hash: bytes
    offset: int      # of its header in the xorb
    length: int      # header + payload
    size: int        # uncompressed


def regroup4(data: bytes) -> bytes:
    """Undo byte grouping 4: the input is the bytes at positions 0 mod 4, then 1 mod 4, 2 mod 4, 3 mod 4
    (numpy's strided copies: three times faster than bytearray slice assignment on a 64 KiB chunk)."""
    n = len(data)
    split, rem = divmod(n, 4)
    sizes = [split + (rem > 0), split + (rem > 1), split + (rem > 2), split]
    src = np.frombuffer(data, dtype=np.uint8)
    out: np.ndarray = np.empty(n, dtype=np.uint8)
    start = 0
    for k, size in enumerate(sizes):
        out[k::4] = src[start:start + size]
        start += size
    return out.tobytes()


def decompress(scheme: int, payload: bytes, size: int) -> bytes:
    """The uncompressed bytes of one chunk; XorbError if they are not `size` bytes or do not decompress."""
    try:
        if scheme == 0:
            data = payload
        elif scheme == 1:
            data = lz4.frame.decompress(payload)
        elif scheme == 2:
            data = regroup4(lz4.frame.decompress(payload))
        else:
            raise XorbError(f"unknown compression scheme {scheme}")
    except RuntimeError as exc:  # lz4's error for a damaged frame
        raise XorbError(f"an LZ4 frame does not decompress: {exc}") from None
    if len(data) != size:
        raise XorbError(f"a chunk decompresses to {len(data)} bytes, its header says {size}")
    return data


def _header(raw: bytes, offset: int) -> tuple[int, int, int]:
    version, scheme = raw[0], raw[4]
    length = int.from_bytes(raw[1:4], "little")
    size = int.from_bytes(raw[5:8], "little")
    if version != 0:
        raise XorbError(f"chunk at byte {offset}: header version {version} (only 0 is known)")
    if scheme not in SCHEMES:
        raise XorbError(f"chunk at byte {offset}: unknown compression scheme {scheme}")
    if size > MAX_CHUNK or length > 2 * MAX_CHUNK or size == 0:
        raise XorbError(f"chunk at byte {offset}: sizes out of range ({length} compressed, {size} uncompressed)")
    return scheme, length, size


def iter_chunks(f: BinaryIO, total: int) -> Iterator[tuple[Chunk, bytes]]:
    """Each chunk of the xorb in `f` (`total` bytes) with its uncompressed bytes, its hash computed."""
    offset = 0
    while offset < total:
        raw = f.read(HEADER)
        if raw[:len(FOOTER_IDENT)] == FOOTER_IDENT:
            return
        if len(raw) < HEADER:
            raise XorbError(f"the xorb ends inside a chunk header at byte {offset}")
        scheme, length, size = _header(raw, offset)
        payload = f.read(length)
        if len(payload) < length:
            raise XorbError(f"the xorb ends inside the chunk at byte {offset}")
        data = decompress(scheme, payload, size)
        yield Chunk(hashing.chunk_hash(data), offset, HEADER + length, size), data
        offset += HEADER + length


def verify(f: BinaryIO, total: int, expected: bytes, out: BinaryIO | None = None) -> list[Chunk]:
    """The chunks of the xorb in `f`, each decompressed and hashed (and its bytes written to `out`, when given);
    XorbError unless their xorb hash is `expected`."""
    if total > MAX_XORB_BYTES:
        raise XorbError(f"the xorb is {total} bytes, over the {MAX_XORB_BYTES} a xorb may hold")
    chunks = []
    for chunk, data in iter_chunks(f, total):
        chunks.append(chunk)
        if out is not None:
            out.write(data)
    if not chunks:
        raise XorbError("the xorb holds no chunk")
    if len(chunks) > MAX_CHUNKS:
        raise XorbError(f"the xorb holds {len(chunks)} chunks, over {MAX_CHUNKS}")
    got = hashing.xorb_hash([(c.hash, c.size) for c in chunks])
    if got != expected:
        raise XorbError(f"the xorb's chunks hash to {hashing.to_hex(got)}, not to its name {hashing.to_hex(expected)}")
    return chunks


def read_chunk(f: BinaryIO, chunk: Chunk) -> bytes:
    """The uncompressed bytes of one chunk of a stored (verified) xorb."""
    f.seek(chunk.offset)
    raw = f.read(chunk.length)
    if len(raw) < chunk.length:
        raise XorbError(f"the stored xorb ends inside the chunk at byte {chunk.offset}")
    scheme, length, size = _header(raw[:HEADER], chunk.offset)
    return decompress(scheme, raw[HEADER:], size)


def pack_index(chunks: list[Chunk]) -> bytes:
    return b"".join(_INDEX.pack(c.hash, c.offset, c.length, c.size) for c in chunks)


def unpack_index(raw: bytes) -> list[Chunk]:
    if len(raw) % _INDEX.size:
        raise XorbError("a damaged xorb index")
    return [Chunk(*_INDEX.unpack_from(raw, i)) for i in range(0, len(raw), _INDEX.size)]
