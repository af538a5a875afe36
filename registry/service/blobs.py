"""Files in and out of the blob store: a folder's files stored, a manifest's files written back.

Pushes store files here; commits, conversions and snapshots write them back out, verified.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import failpoints
from ..api import Progress
from ..errors import IntegrityError
from ..manifest import Manifest, check_relpath
from ..store.errors import CorruptBlob
from .core import RegistryCore


class BlobsMixin(RegistryCore):
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

    def _copy_blob(self, digest: str, dst: Path, rel: str) -> None:
        try:
            self.store.copy_to(digest, dst)
        except CorruptBlob as exc:
            raise IntegrityError(f"{rel}: blob {digest} is corrupt in the store ({exc}); it was not served") from None
