"""Resumable uploads: the bytes of a blob in transit, kept until the last one arrives.

    <uploads folder>/<owner>/<hex>.partial     the bytes of one blob an owner has sent so far
    <uploads folder>/<owner>/<hex>.lock        its writer lock

An upload belongs to an owner (the server uses the namespaces a token is limited to, see
registry/server/auth.py `upload_owner`): each owner has its own folder, so one owner can neither see,
extend nor complete another's upload of the same blob, and the bytes an owner holds are counted
(`held_bytes`) against its quota. Each writer appends from the offset the area holds, under a
per-blob file lock (so two writers, even in two server processes, never interleave).
`Upload.finish` hands the whole file to `store.adopt(partial, digest)`, which hashes it where it lies
and links it into place: a mismatch stores nothing, the partial is dropped either way, and the blob
is never copied (storing it needs no room for a second copy).

An abandoned partial upload is removed by `UploadArea.sweep`: the server runs it on its own clock
with the upload TTL (registry/server/upkeep.py), and `Registry.gc` with its grace period. A full
filesystem while appending is `InsufficientStorageError`, naming the upload.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import filelock

from registry.atomic import write_all
from registry.store.base import BlobInfo, BlobStore
from registry.store.digests import validate_digest
from registry.store.local import FULL, disk_full

PARTIAL_SUFFIX = ".partial"
#: What an owner's folder may be called (registry/server/auth.py builds the names).
OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


class Upload:
    """One blob's partial upload, held under its lock from `UploadArea.open` until `close`."""

    def __init__(self, store: BlobStore, digest: str, path: Path, lock: filelock.FileLock) -> None:
        self.store, self.digest, self.path, self._lock = store, digest, path, lock
        self.held = _size(path)  #: bytes held when the upload was opened: where the writer must continue
        self._fd: int | None = None

    def append(self, chunk: bytes) -> None:
        """Append `chunk`, unbuffered: every byte appended is in the file, so `offset` is never ahead of it.

        A full filesystem drops what this writer appended (`rollback`, freeing that room for others)
        and raises `InsufficientStorageError`; the upload resumes from `held` once there is room.
        """
        try:
            write_all(self._file(), chunk)
        except OSError as exc:
            if exc.errno not in FULL:
                raise
            self.rollback()
            raise disk_full(self.path.parent, f"upload of blob {self.digest}",
                            f" ({self.held:,} bytes of it held)") from None

    def rollback(self) -> None:
        """Drop what this writer appended: the partial is back at `held` bytes."""
        os.ftruncate(self._file(), self.held)

    def finish(self) -> BlobInfo:
        """Store the blob from the partial, which becomes the stored file (hashed first: `BlobDigestMismatch`
        stores nothing, and drops the partial). A full disk keeps the whole partial: finishing again,
        once there is room, stores it (an empty PATCH at the end does)."""
        self._file()  # an empty blob has no bytes appended, but it has a file
        self._close_file()
        return self.store.adopt(self.path, self.digest)

    def close(self) -> None:
        """Close the file and release the lock (what was appended stays for the writer to resume)."""
        try:
            self._close_file()
        finally:
            self._lock.release()

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return self._fd

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class UploadArea:
    """The partial uploads of one blob store, in one folder; `of(owner)` is one owner's part of it."""

    def __init__(self, store: BlobStore, folder: Path) -> None:
        self.store, self.folder = store, folder

    @classmethod
    def beside(cls, store: BlobStore, home: Path) -> UploadArea:
        """The area of `store`: `uploads/` under a local store's root (one filesystem: a finished upload is
        linked into the store, never copied), else under the registry's home."""
        root = getattr(store, "root", None)
        return cls(store, (Path(root) if root is not None else home) / "uploads")

    def of(self, owner: str) -> UploadArea:
        """The uploads of `owner` (a plain folder name: letters, digits, '.', '_', '-', '+')."""
        if not OWNER.fullmatch(owner):
            raise ValueError(f"invalid upload owner {owner[:80]!r}")
        return UploadArea(self.store, self.folder / owner)

    def partial(self, digest: str) -> Path:
        """Where the bytes of `digest` in transit live (the digest is validated before it names a path)."""
        return self.folder / (validate_digest(digest)[len("sha256:"):] + PARTIAL_SUFFIX)

    def offset(self, digest: str) -> int:
        """How many bytes of `digest` the area holds."""
        return _size(self.partial(digest))

    def open(self, digest: str, wait: float) -> Upload | None:
        """The upload of `digest`, locked for this writer; None when another writer holds it past `wait` seconds."""
        path = self.partial(digest)
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = _lock(path)
        try:
            lock.acquire(timeout=wait)
        except filelock.Timeout:
            return None
        try:
            return Upload(self.store, digest, path, lock)
        except BaseException:
            lock.release()
            raise

    def partials(self) -> list[Path]:
        """The partial uploads of the area: its own and, for the whole area, every owner's."""
        if not self.folder.is_dir():
            return []
        return sorted([*self.folder.glob("*" + PARTIAL_SUFFIX), *self.folder.glob("*/*" + PARTIAL_SUFFIX)])

    def in_progress(self) -> int:
        """How many partial uploads the area holds."""
        return len(self.partials())

    def held_bytes(self, but: str | None = None) -> int:
        """The bytes the area's partial uploads hold (less those of the upload of `but`)."""
        skip = self.partial(but) if but is not None else None
        return sum(_size(p) for p in self.partials() if p != skip)

    def sweep(self, grace_seconds: float, dry_run: bool = False) -> int:
        """Remove the partial uploads untouched for `grace_seconds`, skipping those being written now;
        how many were (with `dry_run`: would be) removed."""
        cutoff = time.time() - grace_seconds
        removed = 0
        for partial in self.partials():
            lock = _lock(partial)
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue  # a writer is appending to it right now
            try:
                if partial.stat().st_mtime > cutoff:
                    continue
                if not dry_run:
                    partial.unlink()
                removed += 1
            except FileNotFoundError:
                continue
            finally:
                lock.release()
        return removed


def _lock(partial: Path) -> filelock.FileLock:
    # thread_local=False: a server acquires it in one worker thread and releases it in another.
    return filelock.FileLock(str(partial.with_suffix(".lock")), thread_local=False)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
