"""Garbage collection: blobs no revision or derived conversion names, and abandoned partial uploads, once
older than a grace period."""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from ..api import GcResult
from ..db.models import DerivedRecord, RevisionRecord
from ..store.errors import StoreError
from ..store.uploads import UploadArea
from .core import RegistryCore


class GcMixin(RegistryCore):
    """gc."""

    def gc(self, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcResult:
        """Delete blobs no revision or derived conversion references and that are older than the grace.

        A push touches every blob it relies on before it commits, so a push running now is safe
        as long as it commits within the grace period.
        """
        with self.db.read() as session:
            manifests: list[dict[str, Any]] = [*session.scalars(select(RevisionRecord.manifest)),
                                               *session.scalars(select(DerivedRecord.manifest))]
        referenced = {f["sha256"] for m in manifests for f in m.get("files", [])}
        cutoff = time.time() - grace_seconds
        removed = removed_bytes = kept = 0
        for digest in list(self.store.iter_digests()):
            if digest in referenced:
                kept += 1
                continue
            try:
                if self.store.mtime(digest) > cutoff:
                    kept += 1
                    continue
                size = self.store.size(digest)
                if not dry_run:
                    self.store.delete(digest, missing_ok=True)
            except StoreError:  # deleted meanwhile by another gc
                continue
            removed += 1
            removed_bytes += size
        temps = [] if dry_run else self.store.remove_temp_files(grace_seconds)
        partials = UploadArea.beside(self.store, self.home).sweep(grace_seconds, dry_run=dry_run)
        return GcResult(removed, removed_bytes, len(temps), kept, partials)
