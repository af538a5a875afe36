"""Files in and out of the blob store: a folder's files stored, a manifest's files written back.

Pushes store files here; commits, conversions and snapshots write them back out, verified (a blob
found corrupt on the way out is quarantined: registry/service/integrity.py).
"""
from __future__ import annotations

import os
from pathlib import Path

from converters import source_files

from .. import failpoints
from ..api import Progress
from ..errors import InsufficientStorageError, IntegrityError, InvalidCheckpointError
from ..manifest import Manifest, check_relpath
from ..store.base import BlobStore
from ..store.errors import BlobNotFound, CorruptBlob
from .integrity import IntegrityMixin


class StoringHasher:
    """A manifest's hash pass that is also the push's write pass (build_manifest's `hash_file`).

    Each file is opened as the manifest's own pass opens it (converters/source_files.open_checked: no link
    followed) and streamed into the store, which hashes exactly the bytes it writes and names the blob by
    them: every byte of a local push is read and hashed once, and the store still never holds a blob whose
    bytes differ from its name. A file that a writer changes while it is stored (its size, mtime or ctime move)
    fails the push (InvalidCheckpointError naming it): what was validated is not what was read. `stored` maps
    each digest to whether this push wrote it (False: already stored); `_store_files` then skips them. Blobs
    are published before the revision is committed, as they always were: a killed push leaves only
    unreferenced blobs, which gc reclaims; a push that its tag may refuse does not come here
    (push.py: _one_pass_unless_refusable), so a refused push writes nothing.
    """

    def __init__(self, store: BlobStore, progress: Progress | None) -> None:
        self.store, self.progress = store, progress
        self.stored: dict[str, bool] = {}

    def __call__(self, path: Path) -> tuple[str, int]:
        def on_chunk(n: int) -> None:
            failpoints.hit("push:blob-write")
            if self.progress is not None:
                self.progress(n)
        with os.fdopen(source_files.open_checked(path), "rb", buffering=0) as f:
            before = _version(os.fstat(f.fileno()))
            try:
                info = self.store.put_reader(f, on_chunk)
            except InsufficientStorageError as exc:  # the digest is not known until the bytes are in: name the file
                raise InsufficientStorageError(f"{exc} (storing {path})", f"blob of {path}") from None
            source = os.fstat(f.fileno())
        after = _version(source)
        if not info.created and _is_blob(self.store, info.digest, source):
            before, after = before[:2], after[:2]  # the store touched its own blob (our source): ctime moved, not data
        self.stored[info.digest] = self.stored.get(info.digest, False) or info.created
        if before != after or info.size != before[0]:  # a writer changed it: what was validated is not what was stored
            raise InvalidCheckpointError(f"{path} changed while it was being stored (another program is writing "
                                         "it?); push again once nothing writes to the checkpoint")
        return info.digest, info.size


def _is_blob(store: BlobStore, digest: str, source: os.stat_result) -> bool:
    """Whether the file being stored is the stored blob itself (a hard link from a snapshot of this store)."""
    path = getattr(store, "path", None)
    try:
        return path is not None and os.path.samestat(source, os.stat(path(digest)))
    except OSError:
        return False


def _version(st: os.stat_result) -> tuple[int, ...]:
    """What a write to a file changes: its size, its modification and its change time (in ns)."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


class BlobsMixin(IntegrityMixin):
    """Moving a manifest's files between folders and the store."""

    def _one_pass(self, progress: Progress | None) -> StoringHasher | None:
        """The hash pass that stores as it reads (StoringHasher), for a store on this machine; None for a remote
        one (S3: its uploads are hashed by put_file as they go, after the manifest's own pass)."""
        return None if getattr(self.store, "remote", False) else StoringHasher(self.store, progress)

    def _store_files(self, files: list[tuple[str, Path]], manifest: Manifest,
                     progress: Progress | None, stored: StoringHasher | None = None) -> tuple[int, int]:
        """Put every file in the store (new ones written, existing ones touched so gc keeps them). With
        `stored` (the manifest was built by it), its blobs are already in the store: counted, not read again."""
        by_path = {f.path: f for f in manifest.files}
        if stored is not None:
            written = [d for d, created in stored.stored.items() if created]
            sizes = {f.sha256: f.size for f in manifest.files}
            if all(self.store.exists(f.sha256) for f in manifest.files):  # not quarantined or collected meanwhile
                return len(written), sum(sizes.get(d, 0) for d in written)
            progress = None  # what is missing again is written below, without counting twice
        missing = set(self.store.missing(f.sha256 for f in manifest.files))
        written_n, written_bytes = 0, 0
        for rel, full in files:
            entry = by_path[rel]
            if entry.sha256 in missing:
                def on_chunk(n: int, _rel: str = rel) -> None:
                    failpoints.hit("push:blob-write")
                    if progress is not None:
                        progress(n)
                self.store.put_file(full, expected=entry.sha256, progress=on_chunk)
                if getattr(self.store, "remote", False):  # hashed as it was uploaded: no rehash before a redirect
                    self.blob_verified(entry.sha256, self.store.fingerprint(entry.sha256) or "", entry.size)
                missing.discard(entry.sha256)
                written_n += 1
                written_bytes += entry.size
            else:
                self.store.touch(entry.sha256)
                if progress is not None:
                    progress(entry.size)
        return written_n, written_bytes

    def _materialise(self, manifest: Manifest, root: Path, *, link: bool = False) -> None:
        """Write every file of `manifest` under `root` from verified blobs.

        `link`: hard-link the (read-only) blobs instead of copying and rehashing them, for a folder that
        is only read and then deleted, such as the one a commit validates; blobs were verified when stored.
        """
        for entry in manifest.files:
            dst = root / check_relpath(entry.path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            source = self.store.path(entry.sha256) if link else None
            if source is not None:
                try:
                    os.link(source, dst)
                    continue
                except OSError:
                    pass  # another filesystem: copy below
            self._copy_blob(entry.sha256, dst, entry.path)

    def _link_blob(self, digest: str, dst: Path, rel: str) -> None:
        """A snapshot file sharing the blob's storage: a hard link to the (read-only) blob, its bytes checked
        against their name after linking; a verified copy where the store's files cannot be linked to (another
        filesystem, a remote store). A snapshot then costs no second copy of the bytes on disk."""
        try:
            source = self.store.path(digest)
        except BlobNotFound:
            source = None
        if source is not None:
            try:
                os.link(source, dst)
            except OSError:
                pass  # another filesystem, or links not allowed: copy below
            else:
                try:
                    if self._verified_at(digest) == self.store.fingerprint(digest):
                        return  # verified since its bytes last changed (a link does not change them)
                except BlobNotFound:
                    pass  # quarantined or collected meanwhile: check_blob says which
                state = self.check_blob(digest)
                if state == "verified":
                    return
                dst.unlink(missing_ok=True)
                why = "corrupt (quarantined)" if state == "corrupt" else state
                raise IntegrityError(f"{rel}: blob {digest} is {why} in the store and was not served: push the "
                                     "file again to restore it")
        self._copy_blob(digest, dst, rel)

    def _copy_blob(self, digest: str, dst: Path, rel: str) -> None:
        try:
            self.store.copy_to(digest, dst)
        except CorruptBlob as exc:
            try:
                fingerprint = self.store.fingerprint(digest) or ""
                size = self.store.size(digest)
            except BlobNotFound:
                fingerprint, size = "", 0
            self.blob_corrupt(digest, exc.actual, fingerprint, size, f"while writing out {rel}")  # quarantined
            raise IntegrityError(f"{rel}: blob {digest} is corrupt in the store (its bytes hash to {exc.actual}); "
                                 "it was quarantined and not served: push the file again to restore it") from None
