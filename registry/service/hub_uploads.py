"""Hub LFS uploads straight into the blob store: signed upload hrefs, whole and multipart objects, verified.

A Hugging Face client uploads an LFS object with no Authorization header (huggingface_hub 2.4.0
`lfs.py`: the PUTs to the batch's hrefs and the multipart completion POST carry none), so the href is
the credential: `Signer` signs (kind, owner, token id, oid, size, chunk size, part, expiry) with this
registry's secret (SWIFTREG_HUB_UPLOAD_KEY, else `hub-upload.key` in its home, 0600, made on first use;
every server process on the home shares it). A href replayed for another object, size, part or owner fails
its signature; an expired one is refused.

Where the bytes go: the owner's folder of the resumable-upload area (store/uploads.py), as
`<hex>.partial` under the blob's per-blob lock, so `UploadArea.sweep` (the server's upload TTL, and
`Registry.gc` with its grace) removes what a killed client left, parts included, and the owner's quota
counts them. A whole object (basic transfer) is appended from byte 0; a multipart object's parts are
written at their offsets (part n at (n-1) * chunk size) into the same file, so parts finished by a
killed client stay on disk until the upload expires. Completion hands the file to `store.adopt`, which
hashes it where it lies and links it in (local store) or stores it (object storage); bytes that do not
hash to the oid store nothing. No object counts as present before that check.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import atomic, constants
from ..store.base import BlobInfo
from ..store.uploads import Upload, UploadArea

#: Objects up to this size go in one PUT (basic transfer); larger ones in parts of `CHUNK_BYTES`.
MULTIPART_THRESHOLD = 64 << 20
CHUNK_BYTES = 64 << 20
#: The most parts an object is cut into (the chunk grows past CHUNK_BYTES for objects over 640 GiB).
MAX_PARTS = 10_000
#: How long a signed upload href is valid, in seconds (it must outlast the upload of every part).
HREF_SECONDS = 2 * 3600
KEY_FILE = "hub-upload.key"


def chunk_size(size: int) -> int | None:
    """The part size an object of `size` bytes is uploaded in; None: one PUT (basic transfer)."""
    if size <= MULTIPART_THRESHOLD:
        return None
    return max(CHUNK_BYTES, -(-size // MAX_PARTS))


def part_count(size: int, chunk: int) -> int:
    return max(1, -(-size // chunk))


@dataclass(frozen=True)
class Grant:
    """What a signed href allows: one object (`oid`, `size`) uploaded by `owner` (auth.upload_owner) for
    token `token_id`, whole (`chunk` None) or in parts of `chunk` bytes, until `expires` (Unix time)."""

    owner: str
    token_id: int
    oid: str
    size: int
    chunk: int | None
    expires: int

    def fields(self, part: int | None = None) -> str:
        return "|".join(str(v) for v in ("lfs-upload", self.owner, self.token_id, self.oid, self.size,
                                         self.chunk or 0, part or 0, self.expires))


class Signer:
    """HMAC-SHA256 signatures of upload grants with this registry's secret."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def of_home(cls, home: Path) -> Signer:
        """The signer of the registry at `home`: SWIFTREG_HUB_UPLOAD_KEY (hex) when set, else its key file,
        created (0600, atomically) on first use."""
        configured = constants.hub_upload_key()
        if configured is not None:
            try:
                return cls(bytes.fromhex(configured))
            except ValueError:
                raise ValueError("SWIFTREG_HUB_UPLOAD_KEY must be hex (e.g. `openssl rand -hex 32`)") from None
        return cls(atomic.secret_key(Path(home) / KEY_FILE))

    def sign(self, grant: Grant, part: int | None = None) -> str:
        return hmac.new(self._key, grant.fields(part).encode(), hashlib.sha256).hexdigest()

    def valid(self, grant: Grant, signature: str, part: int | None = None, now: float | None = None) -> str | None:
        """None when `signature` is this grant's (and part's) and it has not expired; else why not."""
        if not hmac.compare_digest(self.sign(grant, part), signature):
            return "the upload link's signature does not match this object (a link is valid for one object only)"
        if (now if now is not None else time.time()) > grant.expires:
            return "the upload link has expired: ask the batch endpoint again"
        return None

    def etag(self, grant: Grant, part: int, length: int) -> str:
        """The ETag a part PUT answers: bound to the grant, the part and its length (checked at completion)."""
        return hmac.new(self._key, f"etag|{grant.fields(part)}|{length}".encode(), hashlib.sha256).hexdigest()[:32]


def grant_for(owner: str, token_id: int, oid: str, size: int, seconds: int = HREF_SECONDS) -> Grant:
    """A fresh grant for uploading one object: parts when it is over MULTIPART_THRESHOLD."""
    return Grant(owner, token_id, oid, size, chunk_size(size), int(time.time()) + seconds)


def part_range(grant: Grant, part: int) -> tuple[int, int]:
    """(offset, length) of part `part` (1-based) of the grant's object."""
    assert grant.chunk is not None
    offset = (part - 1) * grant.chunk
    return offset, max(0, min(grant.chunk, grant.size - offset))


class PartWriter:
    """The bytes of one part written at their offset into the object's partial file, under its lock."""

    def __init__(self, upload: Upload, offset: int) -> None:
        self.upload, self.offset, self.written = upload, offset, 0
        self._fd = os.open(upload.path, os.O_WRONLY | os.O_CREAT, 0o600)

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            n = os.pwrite(self._fd, view, self.offset + self.written)
            self.written += n
            view = view[n:]

    def close(self) -> None:
        try:
            os.close(self._fd)
        finally:
            self.upload.close()


def start_whole(area: UploadArea, digest: str, wait: float) -> Upload | None:
    """The partial upload of `digest`, emptied (a basic PUT sends the whole object from byte 0); None when
    another writer holds it past `wait` seconds."""
    upload = area.open(digest, wait)
    if upload is not None and upload.held:
        upload.held = 0
        upload.rollback()  # truncates to `held`: 0
    return upload


def start_part(area: UploadArea, digest: str, offset: int, wait: float) -> PartWriter | None:
    """A writer of one part of `digest` at `offset`; None when another writer holds the object past `wait`."""
    upload = area.open(digest, wait)
    if upload is None:
        return None
    try:
        return PartWriter(upload, offset)
    except BaseException:
        upload.close()
        raise


def finish(area: UploadArea, digest: str, size: int, wait: float) -> BlobInfo | str:
    """Store the partial of `digest` as the blob once it holds `size` bytes: hashed where it lies
    (`BlobDigestMismatch`: nothing stored, the partial dropped). A string says why it cannot finish yet."""
    upload = area.open(digest, wait)
    if upload is None:
        return "another writer holds this object: retry"
    try:
        held = upload.held
        if held != size:
            return f"the parts uploaded hold {held} bytes, the object {size}: upload the missing parts"
        return upload.finish()
    finally:
        upload.close()


def checked_parts(signer: Signer, grant: Grant, parts: Iterable[tuple[int, str]]) -> str | None:
    """None when `parts` are exactly parts 1..n of the grant's object, each with the ETag its PUT answered."""
    assert grant.chunk is not None
    wanted = part_count(grant.size, grant.chunk)
    seen: dict[int, str] = {}
    for number, etag in parts:
        if not 1 <= number <= wanted:
            return f"part {number} is not a part of this object (it has {wanted})"
        seen[number] = etag.strip('"')
    missing = [n for n in range(1, wanted + 1) if n not in seen]
    if missing:
        return f"parts {', '.join(map(str, missing[:5]))} are not listed ({wanted} parts make this object)"
    for number, etag in seen.items():
        if not hmac.compare_digest(etag, signer.etag(grant, number, part_range(grant, number)[1])):
            return f"part {number}'s ETag is not the one its upload answered"
    return None
