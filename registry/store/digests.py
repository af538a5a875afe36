"""Digest strings: the only way a blob is named, so they are validated strictly.

A digest is `sha256:` followed by exactly 64 lowercase hex characters. Anything else (uppercase,
wrong length, another algorithm, a trailing newline, `../`) is refused with `InvalidDigest`, because
a digest becomes a file name in the local store and an object key in S3.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TypeAlias

from registry.store.errors import InvalidDigest

#: A validated "sha256:<64 lowercase hex>" string. An alias, not a class: digests travel through
#: JSON, SQL and URLs as plain strings.
Digest: TypeAlias = str

ALGORITHM = "sha256"
PREFIX = ALGORITHM + ":"
#: Read/write granularity for hashing and copying: large enough to amortise syscalls, small enough
#: to keep memory flat on multi-GB checkpoints.
CHUNK_SIZE = 8 * 1024 * 1024

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(value: object) -> bool:
    """True when `value` is exactly a well-formed sha256 digest string."""
    return isinstance(value, str) and _DIGEST_RE.fullmatch(value) is not None


def validate_digest(value: object) -> Digest:
    """Return `value` unchanged if it is a well-formed digest, else raise `InvalidDigest`."""
    if not is_digest(value):
        raise InvalidDigest(value)
    return value  # type: ignore[return-value]


def digest_hex(value: object) -> str:
    """The 64 hex characters of a validated digest (what the store lays out on disk)."""
    return validate_digest(value)[len(PREFIX):]


def format_digest(hexdigest: str) -> Digest:
    """Build a digest string from a hashlib hexdigest."""
    return validate_digest(PREFIX + hexdigest)


def new_hasher() -> "hashlib._Hash":
    """A fresh hasher for the store's one algorithm."""
    return hashlib.sha256()


def sha256_file(path: Path | str) -> Digest:
    """The digest of a file's contents, read in CHUNK_SIZE pieces so memory stays flat."""
    hasher = new_hasher()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)
    return format_digest(hasher.hexdigest())
