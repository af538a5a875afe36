"""Files in and out of the blob store: a folder's files stored, a manifest's files written back.

Pushes store files here; commits, conversions and snapshots write them back out, verified (a blob
found corrupt on the way out is quarantined: registry/service/integrity.py).
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import failpoints
from ..api import Progress
from ..errors import IntegrityError
from ..manifest import Manifest, check_relpath
from ..store.errors import BlobNotFound, CorruptBlob
from .integrity import IntegrityMixin


class BlobsMixin(IntegrityMixin):
    """Moving a manifest's files between folders and the store."""

    def _store_files(self, files: list[tuple[str, Path]], manifest: Manifest,
                     progress: Progress | None) -> tuple[int, int]:
        """Put every file in the store (new ones written, existing ones touched so gc keeps them)."""
        by_path = {f.path: f for f in manifest.files}
        missing = set(self.store.missing(f.sha256 for f in manifest.files))
        written, written_bytes = 0, 0
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
                written += 1
                written_bytes += entry.size
            else:
                self.store.touch(entry.sha256)
                if progress is not None:
                    progress(entry.size)
        return written, written_bytes

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
