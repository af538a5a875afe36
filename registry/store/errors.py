"""Every error the blob store raises, as one tree.

    RegistryError
    └── StoreError              400 store_error      anything wrong with a blob or a request to the store
        ├── InvalidDigest       400 invalid_digest   not "sha256:" + 64 lowercase hex (never a path)
        ├── BlobNotFound        404 blob_not_found   the store holds no such blob (also a NotFoundError)
        ├── BlobDigestMismatch  422 digest_mismatch  content does not hash to the digest the caller promised
        └── CorruptBlob         500 corrupt_blob     stored bytes no longer match their name (IntegrityError)

Each message names the blob and says what to do. `StoreError` is a `registry.errors.RegistryError`,
so callers catch every registry error with one clause; code and status are as registry/errors.py
describes (its drawn tree holds this subtree too).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import IntegrityError, NotFoundError, RegistryError


class StoreError(RegistryError, code="store_error"):
    """Base class: `digest` is the blob at fault when there is one."""

    fields: tuple[str, ...] = ("digest",)

    def __init__(self, message: str, digest: str | None = None) -> None:
        self.digest = digest
        super().__init__(message)


class InvalidDigest(StoreError, ValueError, code="invalid_digest", fields=("digest", "value")):
    """A digest string failed strict validation.

    Digests become file names, so anything but the exact form is refused before it reaches a path:
    `sha256:../../etc/passwd` must never be joined onto the store root.
    """

    def __init__(self, value: object) -> None:
        self.value = value
        super().__init__(f"invalid blob digest {value!r}: expected 'sha256:' followed by exactly 64 "
                         f"lowercase hex characters")


class BlobNotFound(StoreError, NotFoundError, code="blob_not_found", status=404):
    """The store has no blob under this digest (never pushed, removed by gc, or `quarantined`: found
    corrupt and moved out of the store)."""

    def __init__(self, digest: str, where: str | Path | None = None, *, quarantined: bool = False) -> None:
        place = f" in {where}" if where is not None else ""
        if quarantined:
            super().__init__(f"blob {digest} was found corrupt (its stored bytes no longer hash to its name) and "
                             f"moved out of the store{place} to quarantine: push the file that holds it (or the "
                             f"revision that names it) again to restore it", digest)
            return
        super().__init__(f"blob {digest} is not in the store{place}: push the file that holds it "
                         f"(or the revision that names it) again", digest)


class BlobDigestMismatch(StoreError, code="digest_mismatch", status=422,
                         fields=("digest", "expected", "actual", "size")):
    """Content handed to put_* hashed to something other than the expected digest; nothing was stored."""

    def __init__(self, expected: str, actual: str, size: int, source: str | Path | None = None) -> None:
        self.expected = expected
        self.actual = actual
        self.size = size
        origin = f" from {source}" if source is not None else ""
        super().__init__(f"content{origin} ({size} bytes) hashes to {actual}, not the expected {expected}; "
                         f"nothing was stored: the file changed or the upload was truncated, push it again",
                         expected)


class CorruptBlob(StoreError, IntegrityError, code="corrupt_blob", status=500, fields=("digest", "actual")):
    """A stored blob's bytes no longer match its name (disk fault, manual edit).

    `.where` (the stored file) stays on the machine that holds it: rebuilt from a payload it is None.
    """

    where: Path | None = None

    def __init__(self, digest: str, actual: str, where: str | Path | None = None) -> None:
        self.actual = actual
        self.where = Path(where) if where is not None else None
        place = f" at {where}" if where is not None else ""
        super().__init__(f"blob {digest}{place} is corrupt: its stored bytes hash to {actual}; "
                         f"re-push the file to restore it, or run gc to drop the damaged copy", digest)
