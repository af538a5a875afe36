"""Shards: the files an upload defines (each a list of xorb chunk ranges, with its sha256) and its new xorbs.

Layout (all integers little-endian; every record 48 bytes):

    header      32-byte tag "HFRepoMetaData\\0" + 17 fixed bytes, version u64 (2), footer size u64
    files       per file: hash(32) flags u32 n u32 pad u64; n segments: xorb(32) flags u32 bytes u32
                first-chunk u32 end-chunk u32; n verification entries: range hash(32) pad(16) when
                flags bit 31; a metadata extension: sha256(32) pad(16) when flags bit 30
                ... then a bookend record (hash all 0xff)
    xorbs       per xorb: hash(32) flags u32 n u32 bytes u32 bytes-on-disk u32; n chunks: hash(32)
                offset u32 size u32 flags u32 pad u32 ... then a bookend
    lookups     (answers only) xorb and chunk lookup tables: truncated hash u64 + indices
    footer      (answers only; an upload has footer size 0) 200 bytes, see `dedup_answer`

`parse` reads an upload; `dedup_answer` writes what the global dedup query answers: a shard of whole xorbs
with no file, with the lookup tables hf_xet's shard reader uses to find a chunk.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from ..errors import XetError
from . import hashing

TAG = b"HFRepoMetaData\x00" + bytes([85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169])
VERSION = 2
FOOTER_VERSION = 1
FOOTER_SIZE = 200
RECORD = 48
BOOKEND = b"\xff" * 32
WITH_VERIFICATION = 1 << 31
WITH_METADATA_EXT = 1 << 30
GLOBAL_DEDUP_FLAG = 1 << 31
MAX_SHARD_BYTES = 64 << 20
_FILE_HEAD = struct.Struct("<32sIIQ")
_SEGMENT = struct.Struct("<32sIIII")
_XORB_HEAD = struct.Struct("<32sIIII")
_CHUNK = struct.Struct("<32sIIII")


#: A shard that does not parse (the message says where).
ShardError = XetError


@dataclass(frozen=True)
class Segment:
    xorb: bytes
    size: int        # unpacked bytes of chunks [start, end)
    start: int
    end: int


@dataclass
class FileInfo:
    hash: bytes
    segments: list[Segment]
    verification: list[bytes] = field(default_factory=list)
    sha256: str | None = None        # "sha256:<hex>" from the metadata extension

    @property
    def size(self) -> int:
        return sum(s.size for s in self.segments)


@dataclass(frozen=True)
class XorbChunk:
    hash: bytes
    offset: int      # uncompressed offset in the xorb
    size: int
    flags: int


@dataclass
class XorbInfo:
    hash: bytes
    chunks: list[XorbChunk]
    size: int        # uncompressed bytes


@dataclass
class Shard:
    files: list[FileInfo]
    xorbs: list[XorbInfo]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def record(self, what: str) -> bytes:
        if self.pos + RECORD > len(self.data):
            raise ShardError(f"the shard ends inside {what} at byte {self.pos}")
        raw = self.data[self.pos:self.pos + RECORD]
        self.pos += RECORD
        return raw

    def room(self, n: int, what: str) -> None:
        if self.pos + n * RECORD > len(self.data):
            raise ShardError(f"{what} at byte {self.pos} names {n} entries, more than the shard holds")


def parse(data: bytes) -> Shard:
    """The files and xorbs of an uploaded shard; ShardError naming the first thing that is wrong."""
    if len(data) > MAX_SHARD_BYTES:
        raise ShardError(f"the shard is {len(data)} bytes, over {MAX_SHARD_BYTES}")
    if len(data) < 48 or data[:32] != TAG:
        raise ShardError("not a shard: the header tag is missing")
    version, footer_size = struct.unpack_from("<QQ", data, 32)
    if version != VERSION:
        raise ShardError(f"shard header version {version} (only {VERSION} is known)")
    if footer_size > len(data) - 48:
        raise ShardError("the shard's footer size exceeds the shard")
    r = _Reader(data[:len(data) - footer_size] if footer_size else data)
    r.pos = 48
    files: list[FileInfo] = []
    while True:
        fhash, flags, n, _ = _FILE_HEAD.unpack(r.record("a file record"))
        if fhash == BOOKEND:
            break
        r.room(n, "a file record")
        segments = []
        for _ in range(n):
            xh, _xf, size, start, end = _SEGMENT.unpack(r.record("a file segment"))
            if end <= start:
                raise ShardError(f"file {hashing.to_hex(fhash)}: a segment of chunks [{start}, {end}) is empty")
            segments.append(Segment(xh, size, start, end))
        info = FileInfo(fhash, segments)
        if flags & WITH_VERIFICATION:
            r.room(n, "a file's verification entries")
            info.verification = [r.record("a verification entry")[:32] for _ in range(n)]
        if flags & WITH_METADATA_EXT:
            info.sha256 = "sha256:" + hashing.to_hex(r.record("a file's metadata extension")[:32])
        files.append(info)
    xorbs: list[XorbInfo] = []
    while True:
        xh, _xf, n, size, _disk = _XORB_HEAD.unpack(r.record("a xorb record"))
        if xh == BOOKEND:
            break
        r.room(n, "a xorb record")
        chunks = [XorbChunk(*_CHUNK.unpack(r.record("a xorb chunk"))[:4]) for _ in range(n)]
        xorbs.append(XorbInfo(xh, chunks, size))
    return Shard(files, xorbs)


def dedup_answer(xorbs: list[tuple[bytes, list[tuple[bytes, int]], int]], valid_for: float = 86400.0) -> bytes:
    """A shard listing whole xorbs `(hash, [(chunk hash, size)], bytes stored)` with no file, its xorb and chunk
    lookup tables and its footer: the global dedup query's answer."""
    out = bytearray(TAG + struct.pack("<QQ", VERSION, FOOTER_SIZE))
    file_info_offset = len(out)
    out += _FILE_HEAD.pack(BOOKEND, 0, 0, 0)
    xorb_info_offset = len(out)
    xorb_lookup: list[tuple[int, int]] = []
    chunk_lookup: list[tuple[int, int, int]] = []
    index = stored = on_disk = 0
    for xh, chunks, disk in sorted(xorbs, key=lambda x: struct.unpack("<4Q", x[0])):
        total = sum(size for _, size in chunks)
        xorb_lookup.append((struct.unpack_from("<Q", xh)[0], index))
        out += _XORB_HEAD.pack(xh, 0, len(chunks), total, disk)
        offset = 0
        for i, (ch, size) in enumerate(chunks):
            out += _CHUNK.pack(ch, offset, size, GLOBAL_DEDUP_FLAG if hashing.dedup_eligible(ch) else 0, 0)
            chunk_lookup.append((struct.unpack_from("<Q", ch)[0], index, i))
            offset += size
        index += 1 + len(chunks)
        stored += total
        on_disk += disk
    out += _XORB_HEAD.pack(BOOKEND, 0, 0, 0, 0)
    xorb_lookup_offset = len(out)
    for key, idx in xorb_lookup:
        out += struct.pack("<QI", key, idx)
    chunk_lookup_offset = len(out)
    for key, idx, i in sorted(chunk_lookup, key=lambda e: e[0]):
        out += struct.pack("<QII", key, idx, i)
    footer_offset = len(out)
    now = int(time.time())
    out += struct.pack("<9Q", FOOTER_VERSION, file_info_offset, xorb_info_offset, xorb_lookup_offset, 0,
                       xorb_lookup_offset, len(xorb_lookup), chunk_lookup_offset, len(chunk_lookup))
    out += bytes(32)  # no HMAC key: chunk hashes as they are
    out += struct.pack("<2Q6Q4Q", now, now + int(valid_for), *([0] * 6), on_disk, 0, stored, footer_offset)
    return bytes(out)
