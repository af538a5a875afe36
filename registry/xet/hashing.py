"""Xet hashes: keyed BLAKE3 over chunk bytes, and the merkle aggregation that names xorbs and files.

A hash is 32 raw bytes. Its text form (URLs, shards' `X-Xet-Hash`) prints the four little-endian 64-bit
words each as 16 hex digits, so each 8-byte group appears byte-reversed (`to_hex` / `from_hex`).

- chunk hash: BLAKE3 keyed with `DATA_KEY` over the chunk's bytes;
- xorb hash: the aggregated node hash of its chunks' (hash, size) list;
- file hash: the aggregated node hash of the file's chunks, keyed-BLAKE3'd once more with a zero key;
- verification (range) hash of a file segment: BLAKE3 keyed with `VERIFICATION_KEY` over its chunk hashes.

The aggregation merges runs of 2..9 entries, cutting after an entry whose hash's last word is 0 mod 4,
each run hashed (`INTERNAL_KEY`) as the text lines "<hex> : <size>\\n", until one node is left.
"""
from __future__ import annotations

from typing import Sequence

import blake3

DATA_KEY = bytes([102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28, 157, 228, 33, 16,
                  155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41])
INTERNAL_KEY = bytes([1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230, 93, 221, 83, 111,
                      55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63])
VERIFICATION_KEY = bytes([127, 24, 87, 214, 206, 86, 237, 102, 18, 127, 249, 19, 231, 165, 195, 243, 164, 205, 38,
                          213, 181, 219, 73, 230, 65, 36, 152, 127, 40, 251, 148, 195])
ZERO = bytes(32)
#: A chunk whose hash's last word is 0 mod this is offered to the global dedup query (besides files' first chunks).
GLOBAL_DEDUP_MODULUS = 1024

Node = tuple[bytes, int]


def to_hex(h: bytes) -> str:
    """The text form of a hash (each 8-byte little-endian word printed as 16 hex digits)."""
    return "".join(h[i:i + 8][::-1].hex() for i in range(0, 32, 8))


def from_hex(text: str) -> bytes:
    """The 32 bytes of a hash's text form; ValueError unless it is 64 hex digits."""
    if len(text) != 64:
        raise ValueError("a xet hash is 64 hex digits")
    raw = bytes.fromhex(text)
    return b"".join(raw[i:i + 8][::-1] for i in range(0, 32, 8))


def chunk_hash(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data, key=DATA_KEY).digest()


def last_word(h: bytes) -> int:
    return int.from_bytes(h[24:32], "little")


def dedup_eligible(h: bytes) -> bool:
    """Whether a chunk hash is one the client may ask the global dedup query about by its value."""
    return last_word(h) % GLOBAL_DEDUP_MODULUS == 0


def _merge(nodes: Sequence[Node]) -> Node:
    text = "".join(f"{to_hex(h)} : {size}\n" for h, size in nodes)
    return blake3.blake3(text.encode("ascii"), key=INTERNAL_KEY).digest(), sum(size for _, size in nodes)


def _cut(nodes: Sequence[Node], start: int) -> int:
    """How many entries from `start` the next merged run takes."""
    left = len(nodes) - start
    if left <= 2:
        return left
    end = min(9, left)
    for i in range(2, end):
        if last_word(nodes[start + i][0]) % 4 == 0:
            return i + 1
    return end


def aggregated(nodes: Sequence[Node]) -> bytes:
    """The aggregated node hash of (hash, size) entries (zeros for none)."""
    if not nodes:
        return ZERO
    level = list(nodes)
    while len(level) > 1:
        merged, i = [], 0
        while i < len(level):
            n = _cut(level, i)
            merged.append(_merge(level[i:i + n]))
            i += n
        level = merged
    return level[0][0]


def xorb_hash(chunks: Sequence[Node]) -> bytes:
    return aggregated(chunks)


def file_hash(chunks: Sequence[Node]) -> bytes:
    if not chunks:
        return ZERO
    return blake3.blake3(aggregated(chunks), key=ZERO).digest()


def range_hash(chunk_hashes: Sequence[bytes]) -> bytes:
    """The verification hash of a run of chunks (a shard's FileVerificationEntry)."""
    return blake3.blake3(b"".join(chunk_hashes), key=VERIFICATION_KEY).digest()
