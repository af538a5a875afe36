"""Resumable uploads: the bytes of a blob in transit, kept until the last one arrives.

A blob being uploaded lives in `<uploads folder>/<hex>.partial`. Each writer appends to it from the
offset the area holds, under a per-digest file lock (so two writers, even in two server processes,
never interleave). `Upload.finish` hands the whole file to `store.put_file(partial, expected=digest)`,
which hashes it: a mismatch stores nothing, and the partial is dropped either way.

An abandoned partial upload (a client that never came back) is removed by `UploadArea.sweep`, which
`Registry.gc` runs with its grace period.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import filelock

from registry.atomic import write_all
from registry.store.base import BlobInfo, BlobStore
from registry.store.digests import validate_digest

PARTIAL_SUFFIX = ".partial"


class Upload:
    """One blob's partial upload, held under its lock from `UploadArea.open` until `close`."""

    def __init__(self, store: BlobStore, digest: str, path: Path, lock: filelock.FileLock) -> None:
        self.store, self.digest, self.path, self._lock = store, digest, path, lock
        self.held = _size(path)  #: bytes held when the upload was opened: where the writer must continue
        self._fd: int | None = None

    def append(self, chunk: bytes) -> None:
        """Append `chunk`, unbuffered: every byte appended is in the file, so `offset` is never ahead of it."""
        write_all(self._file(), chunk)

    def rollback(self) -> None:
        """Drop what this writer appended: the partial is back at `held` bytes."""
        os.ftruncate(self._file(), self.held)

    def finish(self) -> BlobInfo:
        """Store the blob from the partial (hashed; `BlobDigestMismatch` stores nothing) and drop the partial."""
        self._file()  # an empty blob has no bytes appended, but it has a file
        self._close_file()
        try:
            return self.store.put_file(self.path, expected=self.digest)
        finally:
            self.path.unlink(missing_ok=True)

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
    """The partial uploads of one blob store, in one folder."""

    def __init__(self, store: BlobStore, folder: Path) -> None:
        self.store, self.folder = store, folder

    @classmethod
    def beside(cls, store: BlobStore, home: Path) -> UploadArea:
        """The area of `store`: `uploads/` under a local store's root (one filesystem: no copy when a blob
        is stored), else under the registry's home."""
        root = getattr(store, "root", None)
        return cls(store, (Path(root) if root is not None else home) / "uploads")

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

    def in_progress(self) -> int:
        """How many partial uploads the area holds."""
        if not self.folder.is_dir():
            return 0
        return sum(1 for _p in self.folder.glob("*" + PARTIAL_SUFFIX))

    def sweep(self, grace_seconds: float, dry_run: bool = False) -> int:
        """Remove the partial uploads untouched for `grace_seconds`, skipping those being written now;
        how many were (with `dry_run`: would be) removed."""
        if not self.folder.is_dir():
            return 0
        cutoff = time.time() - grace_seconds
        removed = 0
        for partial in sorted(self.folder.glob("*" + PARTIAL_SUFFIX)):
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
