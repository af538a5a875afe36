"""The blob store interface every backend (local directory now, S3 later) implements.

Blobs are immutable and named by the sha256 of their bytes, so identical files across revisions and
repositories are stored once and a re-push of unchanged files transfers nothing. The methods that
can be written once in terms of the primitives (`put_file`, `missing`, `verify`, `rehash`, `copy_to`,
`remove_temp_files`) live here so every backend shares the same integrity checks.

Integrity bookkeeping is the service's (registry/service/integrity.py); a store only offers what it
needs: a `fingerprint` that changes whenever the stored file does (so a verification can be trusted
until then), and `quarantine`, which takes a corrupt blob out of the store without destroying it.

Progress callbacks receive the number of bytes just processed (an increment, like `tqdm.update`).
"""
from __future__ import annotations

import os
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from registry.atomic import fsync
from registry.errors import InsufficientStorageError
from registry.params import temp_name
from registry.store.digests import CHUNK_SIZE, Digest, format_digest, new_hasher, validate_digest
from registry.store.errors import BlobDigestMismatch, BlobNotFound, CorruptBlob

Progress = Callable[[int], None]


@dataclass(frozen=True)
class BlobInfo:
    """What a put returns: the blob's name, its length in bytes, and whether this put stored it (False: the
    store held it already)."""

    digest: Digest
    size: int
    created: bool = field(default=True, compare=False)  # how this put went, not what the blob is


def file_fingerprint(st: os.stat_result) -> str:
    """What identifies one version of a file's bytes on disk: inode, size and mtime in nanoseconds. A write,
    truncation or replacement changes it; what changes only the inode's metadata does not: the store's own
    `touch` (it moves the access time, for gc's grace period), a hard link to the blob (a snapshot), a
    chmod. So a push naming a blob never cuts a download of it or voids its verification. Bit rot on the
    medium changes nothing, which is what the periodic scrub is for."""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def read_chunks(f: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield a binary file's contents in chunks (the stream form put_stream takes)."""
    while chunk := f.read(chunk_size):
        yield chunk


class BlobStore(ABC):
    """A content-addressed, sha256-named store of immutable blobs.

    Guarantees every backend keeps: a digest is validated before use (`InvalidDigest`); a blob is
    visible under its name only once its full bytes are stored and checked; a put of content already
    present rewrites nothing but marks the blob used (touch), so a concurrent gc that spares blobs
    touched within a grace period does not delete what a push is about to reference.
    """

    # ----- primitives each backend provides -------------------------------------------------

    @abstractmethod
    def put_stream(self, chunks: Iterable[bytes], expected: str | None = None,
                   progress: Progress | None = None) -> BlobInfo:
        """Store the concatenation of `chunks`, hashing as it is written.

        With `expected`, content that hashes differently raises `BlobDigestMismatch` and nothing is
        stored. If the blob already exists it is not rewritten; its mtime is refreshed.
        """

    @abstractmethod
    def exists(self, digest: str) -> bool:
        """Whether the store holds a blob under `digest`."""

    @abstractmethod
    def size(self, digest: str) -> int:
        """The blob's length in bytes; `BlobNotFound` if absent."""

    @abstractmethod
    def open(self, digest: str) -> BinaryIO:
        """A binary file object positioned at the blob's start; `BlobNotFound` if absent.

        Reads are not verified (that would cost a full pass): use `verify` or `copy_to` for that.
        """

    @abstractmethod
    def path(self, digest: str) -> Path | None:
        """The blob's file on local disk, for zero-copy consumers; None for remote backends."""

    @abstractmethod
    def delete(self, digest: str, missing_ok: bool = False) -> None:
        """Remove a blob. Only gc should call this, after checking nothing references it."""

    @abstractmethod
    def iter_digests(self) -> Iterator[Digest]:
        """Every stored blob's digest (for gc and audits); stray files are skipped."""

    @abstractmethod
    def touch(self, digest: str) -> None:
        """Mark the blob recently used, for gc's grace period, without changing its bytes' fingerprint."""

    @abstractmethod
    def mtime(self, digest: str) -> float:
        """When the blob was last stored or touched (seconds since the epoch), as gc compares to its grace."""

    @abstractmethod
    def stale_temp_files(self, older_than: float) -> list[Path]:
        """Leftovers of killed writers not modified for at least `older_than` seconds.

        A live writer keeps its temp file's mtime fresh, so a grace period longer than the slowest
        expected pause between chunks spares it; `older_than=0` lists every temp file.
        """

    # ----- shared behaviour ------------------------------------------------------------------

    def put_file(self, path: Path, expected: str | None = None, progress: Progress | None = None) -> BlobInfo:
        """Store a file's contents, streaming it while hashing.

        When `expected` is given and already stored, the file is only hashed (never written or
        uploaded) to confirm it matches: a re-push of unchanged files transfers nothing.
        """
        path = Path(path)
        if expected is not None and self.exists(validate_digest(expected)):
            actual, size = _hash_file(path, progress)
            if actual != expected:
                raise BlobDigestMismatch(expected, actual, size, source=path)
            try:
                self.touch(expected)
                return BlobInfo(expected, size)
            except BlobNotFound:
                pass  # gc removed it between exists() and touch(): store it after all
        with open(path, "rb") as f:
            return self._put_stream_from(read_chunks(f), expected, progress, source=path)

    def put_reader(self, source: BinaryIO, progress: Progress | None = None) -> BlobInfo:
        """Store what `source` holds from its position on, named by the digest of the bytes stored (one read
        pass: the hash is of what was written, never of an earlier read). Backends may read it faster."""
        return self.put_stream(read_chunks(source), None, progress)

    def adopt(self, path: Path, expected: str) -> BlobInfo:
        """Store the file at `path` as blob `expected`, taking the file over: `path` is gone afterwards,
        stored or not, unless the disk was full (InsufficientStorageError: it stays for a retry). A
        backend that can move a file into place (store/local.py) stores it without a second copy; this
        default copies it (put_file) and then drops it."""
        try:
            info = self.put_file(Path(path), expected=expected)
        except InsufficientStorageError:
            raise
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        Path(path).unlink(missing_ok=True)
        return info

    def _put_stream_from(self, chunks: Iterable[bytes], expected: str | None, progress: Progress | None,
                         source: Path) -> BlobInfo:
        """put_stream, with a mismatch error that names the file it came from."""
        try:
            return self.put_stream(chunks, expected, progress)
        except BlobDigestMismatch as e:
            raise BlobDigestMismatch(e.expected, e.actual, e.size, source=source) from None

    def missing(self, digests: Iterable[str]) -> list[Digest]:
        """The digests not in the store, in first-seen order without duplicates.

        Every digest is validated first, so one bad name fails the whole request rather than being
        reported as merely missing.
        """
        wanted = list(dict.fromkeys(validate_digest(d) for d in digests))
        return [d for d in wanted if not self.exists(d)]

    def verify(self, digest: str) -> bool:
        """Rehash the stored bytes: True if they still match their name."""
        return self.rehash(digest)[0] == digest

    def rehash(self, digest: str, progress: Progress | None = None) -> tuple[Digest, int]:
        """What the stored bytes of `digest` hash to, and how many there are (one read pass)."""
        digest = validate_digest(digest)
        hasher = new_hasher()
        size = 0
        with self.open(digest) as f:
            for chunk in read_chunks(f):
                hasher.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(len(chunk))
        return format_digest(hasher.hexdigest()), size

    def fingerprint(self, digest: str) -> str | None:
        """A string that changes whenever the stored blob's file changes (`file_fingerprint`); None when
        the backend cannot tell, so every read must be verified. `BlobNotFound` if absent."""
        self.size(digest)
        return None

    def quarantine(self, digest: str) -> bool:
        """Take a corrupt blob out of the store (no longer served, listed or counted as present) while
        keeping its bytes for inspection; a later put of the right bytes stores the blob again. True if
        this call moved it. Backends without a quarantine area delete it."""
        if not self.exists(digest):
            return False
        self.delete(digest, missing_ok=True)
        return True

    def is_quarantined(self, digest: str) -> bool:
        """Whether a copy of `digest` sits in the quarantine area."""
        return False

    def iter_quarantined(self) -> Iterator[Digest]:
        """The digests of the quarantined copies."""
        return iter(())

    def copy_to(self, digest: str, dst: Path, progress: Progress | None = None) -> None:
        """Write the blob to `dst`, verifying it on the way; `CorruptBlob` if it does not match.

        The bytes go to a temp file beside `dst` (same filesystem, so the final rename is atomic)
        and are renamed over `dst` only after the hash checked: a corrupt blob or a crash never
        leaves a wrong or partial `dst`. An existing `dst` file is replaced.
        """
        digest = validate_digest(digest)
        dst = Path(dst)
        tmp = dst.with_name(temp_name(dst.name, f"tmp-{secrets.token_hex(8)}"))  # fits NAME_MAX
        hasher = new_hasher()
        with self.open(digest) as src:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with open(fd, "wb") as out:
                    for chunk in read_chunks(src):
                        hasher.update(chunk)
                        out.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
                actual = format_digest(hasher.hexdigest())
                if actual != digest:
                    raise CorruptBlob(digest, actual, where=self.path(digest))
                os.replace(tmp, dst)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        fsync(dst.parent)

    def remove_temp_files(self, older_than: float) -> list[Path]:
        """Delete the temp files `stale_temp_files` lists; returns those removed."""
        removed = []
        for p in self.stale_temp_files(older_than):
            try:
                p.unlink()
            except FileNotFoundError:
                continue  # its writer finished or another gc got there first
            removed.append(p)
        return removed


def _hash_file(path: Path, progress: Progress | None) -> tuple[Digest, int]:
    """Digest and size of a file in one read pass."""
    hasher = new_hasher()
    size = 0
    with open(path, "rb") as f:
        for chunk in read_chunks(f):
            hasher.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return format_digest(hasher.hexdigest()), size
