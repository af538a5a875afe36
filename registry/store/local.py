"""The blob store on a local directory, laid out so `ls` can read it.

    root/sha256/ab/cdef...      a blob: the first two hex characters pick the folder (at most 256),
                                the remaining 62 are the file name; mode 0o444
    root/tmp/.tmp-<random>      a write in progress (or the leftover of a killed writer)

A write streams into `root/tmp/` while hashing (the digest is not known until the last byte, so the
final folder cannot be chosen up front; `root/tmp/` is on the same filesystem, so publishing is
still one atomic link), fsyncs, checks the digest, hard-links the file to its final name and fsyncs
that folder. `os.link` fails instead of overwriting, so when two processes store the same blob at
once the first link wins and the second simply drops its temp file: both succeed and one correct
file remains. A final name never holds partial bytes: it only ever appears fully written.
"""
from __future__ import annotations

import errno
import os
import secrets
import time
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from registry.atomic import fsync
from registry.store.base import BlobInfo, BlobStore, Progress
from registry.store.digests import ALGORITHM, Digest, digest_hex, format_digest, new_hasher, validate_digest
from registry.store.errors import BlobDigestMismatch, BlobNotFound, StoreError

TEMP_PREFIX = ".tmp-"
BLOB_MODE = 0o444
_HEX = frozenset("0123456789abcdef")
#: errno values meaning "this filesystem cannot hard-link": fall back to rename.
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


class LocalBlobStore(BlobStore):
    """Blobs as read-only files under `root`; see the module docstring for the layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.blob_dir = self.root / ALGORITHM
        self.tmp_dir = self.root / "tmp"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    # ----- layout ----------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        """Where a blob lives. Validation first: only 64 lowercase hex ever reach the path."""
        hexdigest = digest_hex(digest)
        return self.blob_dir / hexdigest[:2] / hexdigest[2:]

    def _existing(self, digest: str) -> Path:
        path = self._blob_path(digest)
        if not path.is_file():
            raise BlobNotFound(digest, self.root)
        return path

    # ----- writes ----------------------------------------------------------------------------

    def put_stream(self, chunks: Iterable[bytes], expected: str | None = None,
                   progress: Progress | None = None) -> BlobInfo:
        if expected is not None:
            validate_digest(expected)  # before consuming a byte of the stream
        tmp = self.tmp_dir / f"{TEMP_PREFIX}{secrets.token_hex(12)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            hasher = new_hasher()
            size = 0
            with open(fd, "wb") as f:
                for chunk in chunks:
                    if not chunk:
                        continue
                    hasher.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
                f.flush()
                os.fchmod(f.fileno(), BLOB_MODE)
                os.fsync(f.fileno())
            actual = format_digest(hasher.hexdigest())
            if expected is not None and actual != expected:
                raise BlobDigestMismatch(expected, actual, size)
            self._publish(tmp, actual)
        finally:
            tmp.unlink(missing_ok=True)  # published blobs are a second link: this drops only the temp name
        return BlobInfo(actual, size)

    def _publish(self, tmp: Path, digest: Digest) -> None:
        """Give a fully written, fsynced, checked temp file its final name, atomically."""
        final = self._blob_path(digest)
        self._ensure_dir(final.parent)
        while True:
            try:
                os.link(tmp, final)
            except FileExistsError:
                try:
                    self.touch(digest)  # already stored (maybe by a concurrent writer): keep it, mark it used
                    return
                except BlobNotFound:
                    continue  # gc removed it between our link and touch: link ours instead
            except FileNotFoundError:
                if not tmp.exists():
                    raise StoreError(f"the temp file of blob {digest} ({tmp}) was removed while it was "
                                     f"being written (a gc with too short a grace period?); push it again",
                                     digest) from None
                raise
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
                # No hard links here: rename, after a check. Two writers racing past the check both
                # rename identical, complete files, so the result is still one correct blob.
                if final.exists():
                    self.touch(digest)
                    return
                os.replace(tmp, final)
            break
        fsync(final.parent)

    def _ensure_dir(self, shard: Path) -> None:
        """Create a blob's two-hex-char folder, durably, if it is new."""
        try:
            shard.mkdir()
        except FileExistsError:
            return
        fsync(shard.parent)

    def delete(self, digest: str, missing_ok: bool = False) -> None:
        path = self._blob_path(digest)
        try:
            path.unlink()  # permission comes from the folder, so the 0o444 mode does not block it
        except FileNotFoundError:
            if not missing_ok:
                raise BlobNotFound(digest, self.root) from None

    def touch(self, digest: str) -> None:
        try:
            os.utime(self._blob_path(digest))
        except FileNotFoundError:
            raise BlobNotFound(digest, self.root) from None

    # ----- reads -----------------------------------------------------------------------------

    def exists(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def size(self, digest: str) -> int:
        return self._stat(digest).st_size

    def mtime(self, digest: str) -> float:
        return self._stat(digest).st_mtime

    def _stat(self, digest: str) -> os.stat_result:
        try:
            return os.stat(self._blob_path(digest))
        except FileNotFoundError:
            raise BlobNotFound(digest, self.root) from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self._blob_path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(digest, self.root) from None

    def path(self, digest: str) -> Path:
        """The blob's file (callers may read it, never write it); `BlobNotFound` if absent."""
        return self._existing(digest)

    def iter_digests(self) -> Iterator[Digest]:
        """Stored digests in sorted order; anything that is not a blob file is skipped."""
        for shard in sorted(os.scandir(self.blob_dir), key=lambda e: e.name):
            if not (len(shard.name) == 2 and _HEX.issuperset(shard.name)
                    and shard.is_dir(follow_symlinks=False)):
                continue
            for entry in sorted(os.scandir(shard.path), key=lambda e: e.name):
                if (len(entry.name) == 62 and _HEX.issuperset(entry.name)
                        and entry.is_file(follow_symlinks=False)):
                    yield format_digest(shard.name + entry.name)

    def stale_temp_files(self, older_than: float) -> list[Path]:
        now = time.time()
        stale = []
        for entry in os.scandir(self.tmp_dir):
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue  # its writer just published or failed
            if older_than <= 0 or age >= older_than:
                stale.append(Path(entry.path))
        return sorted(stale)
