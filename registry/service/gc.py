"""Garbage collection: retention rules applied, then blobs no revision or derived conversion names, abandoned
partial uploads and the working folders of killed pushes, once older than a grace period."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ..api import GcResult
from ..db.models import DerivedRecord, RevisionRecord
from ..store.errors import StoreError
from ..store.uploads import UploadArea
from ..xet import root_beside
from .retention import RetentionMixin


class GcMixin(RetentionMixin):
    """gc."""

    def gc(self, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcResult:
        """Delete blobs no revision or derived conversion references and that are older than the grace.

        A push touches every blob it relies on before it commits, so a push running now is safe
        as long as it commits within the grace period. Grace 0 is the caller's explicit choice to
        remove every unreferenced blob now, those of pushes in flight included (swiftreg's client
        uploads them again once when its commit answers blobs_missing); since that reaches every
        namespace, the server lets only an admin token without a namespace limit run gc. Partial
        uploads of every owner (registry/store/uploads.py) idle longer than the grace go too.
        """
        retired = self.apply_retention(dry_run=dry_run)  # first: the blobs of revisions it deletes go below
        with self.db.read() as session:
            manifests: list[dict[str, Any]] = [*session.scalars(select(RevisionRecord.manifest)),
                                               *session.scalars(select(DerivedRecord.manifest))]
        referenced = {f["sha256"] for m in manifests for f in m.get("files", [])}
        cutoff = time.time() - grace_seconds
        removed = removed_bytes = kept = young = young_bytes = 0
        for digest in list(self.store.iter_digests()):
            if digest in referenced:
                kept += 1
                continue
            try:
                if self.store.mtime(digest) > cutoff:
                    kept += 1
                    young += 1
                    young_bytes += self.store.size(digest)
                    continue
                size = self.store.size(digest)
                if not dry_run:
                    self.store.delete(digest, missing_ok=True)
            except StoreError:  # deleted meanwhile by another gc
                continue
            removed += 1
            removed_bytes += size
        temps = [] if dry_run else self.store.remove_temp_files(grace_seconds)
        xet_removed = xet_bytes = 0
        if root_beside(self.store, self.home).exists():  # xorbs and shards of Xet uploads (registry/xet/)
            from ..xet.store import XetStore
            xet_removed, xet_bytes = XetStore.beside(self.store, self.home).sweep(referenced, grace_seconds,
                                                                                 dry_run=dry_run)
        partials = UploadArea.beside(self.store, self.home).sweep(grace_seconds, dry_run=dry_run)
        staging, staging_bytes = self._sweep_staging(grace_seconds, dry_run)
        return GcResult(removed, removed_bytes, len(temps), kept, partials, len(retired.deleted), staging,
                        staging_bytes, young, young_bytes, xet_removed, xet_bytes)

    def _sweep_staging(self, grace_seconds: float, dry_run: bool) -> tuple[int, int]:
        """The working folders of killed pushes, commits, conversions and tensor jobs (`HOME/swiftreg-*`)
        in which nothing changed for the grace period: (how many, their bytes)."""
        cutoff = time.time() - grace_seconds
        count = total = 0
        for folder in self.home.glob("swiftreg-*"):
            if not folder.is_dir() or folder.is_symlink():
                continue
            newest, size = _newest_and_size(folder)
            if newest > cutoff and grace_seconds > 0:
                continue  # a live writer touches its files: spared
            if not dry_run:
                shutil.rmtree(folder, ignore_errors=True)
            count += 1
            total += size
        return count, total


def _newest_and_size(folder: Path) -> tuple[float, int]:
    """The latest mtime of anything under `folder` (itself included) and the bytes of its files."""
    newest, size = folder.stat().st_mtime, 0
    for dirpath, dirnames, files in os.walk(folder):
        for name in dirnames + files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            newest = max(newest, st.st_mtime)
            size += st.st_size if name in files else 0
    return newest, size
