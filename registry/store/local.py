"""The blob store on a local directory, laid out so `ls` can read it.

    root/sha256/ab/cdef...      a blob: the first two hex characters pick the folder (at most 256),
                                the remaining 62 are the file name; mode 0o444
    root/tmp/.tmp-<random>      a write in progress (or the leftover of a killed writer)
    root/quarantine/<64 hex>    a blob found corrupt, moved out of the store (no longer served or
                                counted as present); a re-push of the right bytes stores it again

A write streams into `root/tmp/` while hashing (the digest is not known until the last byte, so the
final folder cannot be chosen up front; `root/tmp/` is on the same filesystem, so publishing is
still one atomic link), fsyncs, checks the digest, hard-links the file to its final name and fsyncs
that folder. `os.link` fails instead of overwriting, so when two processes store the same blob at
once the first link wins and the second simply drops its temp file: both succeed and one correct
file remains. A final name never holds partial bytes: it only ever appears fully written.

A file that is already whole on this filesystem (a finished upload, registry/store/uploads.py) is
`adopt`ed: hashed where it lies and linked to its final name, so storing a blob never needs room for
a second copy. A full filesystem is `InsufficientStorageError`, naming what was being written and the
bytes free, never the store's path (the message can reach an HTTP client).
"""
from __future__ import annotations

import errno
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator

from registry.atomic import fsync, write_all
from registry.errors import InsufficientStorageError
from registry.store.base import BlobInfo, BlobStore, Progress, file_fingerprint
from registry.store.digests import (ALGORITHM, CHUNK_SIZE, Digest, digest_hex, format_digest, new_hasher,
                                    validate_digest)
from registry.store.errors import BlobDigestMismatch, BlobNotFound, StoreError

if TYPE_CHECKING:
    from hashlib import _Hash as Hasher

TEMP_PREFIX = ".tmp-"
BLOB_MODE = 0o444
_HEX = frozenset("0123456789abcdef")
#: errno values meaning "this filesystem cannot hard-link": fall back to rename.
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
#: errno values meaning "this filesystem is full" (no space left, or the writer's disk quota).
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


#: Bytes copied by the kernel between two hash steps of put_reader: large enough to amortise the calls, small
#: enough that the copied run is still in the page cache when it is hashed.
COPY_RUN = 32 << 20


def _copy_run(src: int, dst: int, src_offset: int, dst_offset: int) -> int:
    """Copy up to COPY_RUN bytes from `src` at `src_offset` to `dst` at `dst_offset` in the kernel; 0 at the end."""
    copied = 0
    while copied < COPY_RUN:
        n = os.copy_file_range(src, dst, COPY_RUN - copied, src_offset + copied, dst_offset + copied)
        if n == 0:
            break
        copied += n
    return copied


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer can still put on `folder`'s filesystem."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def disk_full(folder: Path, writing: str, detail: str = "") -> InsufficientStorageError:
    """The refusal for a full filesystem: what was being written and what is free, without the path."""
    try:
        free = f"{free_bytes(folder):,} bytes free"
    except OSError:
        free = "free space unknown"
    return InsufficientStorageError(f"the blob store's filesystem is full ({free}) while writing {writing}"
                                    f"{detail}: free space (or run swiftreg gc) and retry", writing)


class LocalBlobStore(BlobStore):
    """Blobs as read-only files under `root`; see the module docstring for the layout."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.blob_dir = self.root / ALGORITHM
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"  # made on first use
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
            raise self._not_found(digest)
        return path

    def _not_found(self, digest: str) -> BlobNotFound:
        """The error for an absent blob, saying so when it is absent because it was quarantined."""
        return BlobNotFound(digest, self.root, quarantined=self.is_quarantined(digest))

    # ----- writes ----------------------------------------------------------------------------

    def put_stream(self, chunks: Iterable[bytes], expected: str | None = None,
                   progress: Progress | None = None) -> BlobInfo:
        def fill(fd: int, hasher: Hasher) -> int:
            size = 0
            for chunk in chunks:
                if not chunk:
                    continue
                hasher.update(chunk)
                write_all(fd, chunk)
                size += len(chunk)
                if progress is not None:
                    progress(len(chunk))
            return size
        return self._store(fill, expected)

    def put_reader(self, source: BinaryIO, progress: Progress | None = None) -> BlobInfo:
        """Store what `source` (a regular file) holds from its position on, hashing each byte once: COPY_RUN bytes
        at a time are copied into the temp file by the kernel (os.copy_file_range: no pass through Python, a
        reflink where the filesystem shares extents) and then hashed from the temp file while its pages are
        still in memory. The digest is of the bytes the temp file holds, so the blob is named by exactly what is
        stored even if the source changes under the copy. Where the kernel cannot copy (another filesystem on
        an old kernel, a special file), the bytes are read, hashed and written by hand (same guarantee)."""
        def fill(fd: int, hasher: Hasher) -> int:
            src = source.fileno()
            start = os.lseek(src, 0, os.SEEK_CUR)
            buffer = bytearray(CHUNK_SIZE)
            view = memoryview(buffer)
            size = 0
            kernel = True
            while True:
                if kernel:
                    try:
                        copied = _copy_run(src, fd, start + size, size)
                    except OSError as exc:
                        if exc.errno in FULL or size:
                            raise
                        kernel = False  # nothing copied yet: the hand copy below takes over
                        continue
                    if copied == 0:
                        return size
                    done = 0
                    while done < copied:  # hash what the temp file now holds (in the page cache)
                        n = os.preadv(fd, [view[:min(CHUNK_SIZE, copied - done)]], size + done)
                        if n <= 0:
                            raise StoreError("the store's temp file ended early while it was being hashed")
                        hasher.update(view[:n])
                        done += n
                    size += copied
                    if progress is not None:
                        progress(copied)
                else:
                    n = os.preadv(src, [view], start + size)
                    if n == 0:
                        return size
                    chunk = view[:n]
                    hasher.update(chunk)
                    os.lseek(fd, size, os.SEEK_SET)
                    write_all(fd, chunk)
                    size += n
                    if progress is not None:
                        progress(n)
        return self._store(fill, None)

    def _store(self, fill: "Callable[[int, Hasher], int]", expected: str | None) -> BlobInfo:
        """Write a temp file with `fill` (it hashes what it writes, returns the bytes written), check it against
        `expected`, and publish it under the digest of exactly those bytes. Content already stored is not
        fsynced or linked again: the temp file is dropped and the stored blob touched (created=False)."""
        if expected is not None:
            validate_digest(expected)  # before consuming a byte of the stream
        tmp = self.tmp_dir / f"{TEMP_PREFIX}{secrets.token_hex(12)}"
        size = 0
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # read back: put_reader hashes it
        except OSError as exc:
            if exc.errno not in FULL:
                raise
            raise self._full(expected, size) from None
        try:
            hasher = new_hasher()
            try:
                size = fill(fd, hasher)
                actual = format_digest(hasher.hexdigest())
                if expected is not None and actual != expected:
                    raise BlobDigestMismatch(expected, actual, size)
                if self.exists(actual):
                    try:
                        self.touch(actual)  # stored before: these bytes are not needed (no fsync, no link)
                        return BlobInfo(actual, size, created=False)
                    except BlobNotFound:
                        pass  # gc removed it between exists() and touch(): publish ours
                os.fchmod(fd, BLOB_MODE)
                os.fsync(fd)
            finally:
                os.close(fd)
            created = self._publish(tmp, actual)
        except OSError as exc:
            if exc.errno not in FULL:
                raise
            tmp.unlink(missing_ok=True)  # first: the free space reported is what a retry would have
            raise self._full(expected, size) from None
        finally:
            tmp.unlink(missing_ok=True)  # published blobs are a second link: this drops only the temp name
        return BlobInfo(actual, size, created=created)

    def _full(self, digest: str | None, written: int) -> InsufficientStorageError:
        """The refusal for a write of `digest` that found the store's filesystem full."""
        return disk_full(self.tmp_dir, f"blob {digest}" if digest else "a new blob",
                         f" ({written:,} bytes written when it filled)" if written else "")

    def adopt(self, path: Path, expected: str) -> BlobInfo:
        """Store the file at `path` as blob `expected` by linking it into place (no copy): hashed where it
        lies (`BlobDigestMismatch` stores nothing), made read-only, flushed, linked. `path` is gone
        afterwards, unless the filesystem was full (InsufficientStorageError: it stays, whole, for a retry).
        A file on another filesystem is copied (BlobStore.adopt)."""
        validate_digest(expected)
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(f"the upload of blob {expected} was removed before it was stored; upload it again",
                             expected) from None
        keep = False
        try:
            if os.fstat(fd).st_dev != os.stat(self.blob_dir).st_dev:
                os.close(fd)
                fd = -1
                return super().adopt(path, expected)
            hasher = new_hasher()
            size = 0
            while chunk := os.read(fd, CHUNK_SIZE):
                hasher.update(chunk)
                size += len(chunk)
            actual = format_digest(hasher.hexdigest())
            if actual != expected:
                raise BlobDigestMismatch(expected, actual, size)
            if self.exists(expected):
                try:
                    self.touch(expected)  # stored meanwhile (another namespace's upload): this copy is not needed
                    return BlobInfo(expected, size)
                except BlobNotFound:
                    pass  # gc removed it between exists() and touch(): link ours
            os.fchmod(fd, BLOB_MODE)
            os.fsync(fd)
            self._publish(path, actual)
            self.touch(actual)  # the upload may have idled: the stored blob starts its gc grace now
            return BlobInfo(actual, size)
        except OSError as exc:
            if exc.errno not in FULL:
                raise
            keep = True  # the upload stays whole, writable again, for a retry once there is room
            if fd >= 0:
                os.fchmod(fd, 0o600)
            raise self._full(expected, 0) from None
        finally:
            if fd >= 0:
                os.close(fd)
            if not keep:
                path.unlink(missing_ok=True)  # after a link this drops only the upload's name

    def _publish(self, tmp: Path, digest: Digest) -> bool:
        """Give a fully written, fsynced, checked temp file its final name, atomically; False when the blob was
        already there (then it is touched and `tmp` is not used)."""
        final = self._blob_path(digest)
        self._ensure_dir(final.parent)
        while True:
            try:
                os.link(tmp, final)
            except FileExistsError:
                try:
                    self.touch(digest)  # already stored (maybe by a concurrent writer): keep it, mark it used
                    return False
                except BlobNotFound:
                    continue  # gc removed it between our link and touch: link ours instead
            except FileNotFoundError:
                if not tmp.exists():
                    raise StoreError(f"the temp file of blob {digest} ({tmp.name}) was removed while it was "
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
                    return False
                os.replace(tmp, final)
            break
        fsync(final.parent)
        return True

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
        """Mark the blob used now by its access time; its mtime, part of its fingerprint, stays (base.py)."""
        path = self._blob_path(digest)
        try:
            os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns))
        except FileNotFoundError:
            raise BlobNotFound(digest, self.root) from None

    # ----- reads -----------------------------------------------------------------------------

    def exists(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def size(self, digest: str) -> int:
        return self._stat(digest).st_size

    def mtime(self, digest: str) -> float:
        """When the blob was last stored or touched: the later of its modification and access times."""
        st = self._stat(digest)
        return max(st.st_mtime, st.st_atime)

    def _stat(self, digest: str) -> os.stat_result:
        try:
            return os.stat(self._blob_path(digest))
        except FileNotFoundError:
            raise self._not_found(digest) from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self._blob_path(digest), "rb")
        except FileNotFoundError:
            raise self._not_found(digest) from None

    def fingerprint(self, digest: str) -> str:
        return file_fingerprint(self._stat(digest))

    # ----- quarantine ------------------------------------------------------------------------

    def quarantine(self, digest: str) -> bool:
        """Move the blob to `root/quarantine/` (same filesystem: one rename); False if it was not there."""
        target = self.quarantine_dir / digest_hex(digest)
        self._ensure_dir(self.quarantine_dir)
        try:
            os.replace(self._blob_path(digest), target)
        except FileNotFoundError:
            return False  # already moved (a concurrent reader found it too) or never stored
        fsync(self.quarantine_dir)
        fsync(self._blob_path(digest).parent)
        return True

    def is_quarantined(self, digest: str) -> bool:
        return (self.quarantine_dir / digest_hex(digest)).is_file()

    def iter_quarantined(self) -> Iterator[Digest]:
        try:
            entries = sorted(os.scandir(self.quarantine_dir), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            if len(entry.name) == 64 and _HEX.issuperset(entry.name) and entry.is_file(follow_symlinks=False):
                yield format_digest(entry.name)

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
