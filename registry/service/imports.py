"""Hub imports on the embedded registry: the entry point, and the lookup that makes them idempotent.

The substance (downloading with the hub's own client, checking, pushing with provenance) is in
registry/hubs/.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from ..api import Progress, RevisionInfo
from ..db.models import ProvenanceRecord, RevisionRecord
from ..ids import parse_id
from .core import RegistryCore, whole

if TYPE_CHECKING:
    from ..hubs import ImportResult


class ImportsMixin(RegistryCore):
    """import_from, find_import."""

    def import_from(self, source: str, repo_id: str, *, tag: str | None = None,
                    base_model: str | None = None, subfolder: str | None = None, message: str | None = None,
                    progress: Progress | None = None, base_folder: Path | None = None,
                    allow_nonfinite: bool = False) -> ImportResult:
        """Import an adapter from the Hugging Face Hub (`hf://owner/name[@rev]`) or ModelScope (`ms://...`).

        Downloaded with the hub's own client (its usual variables apply), then pushed like any
        checkpoint, with its provenance recorded in the same transaction. See registry/hubs/.
        """
        from ..hubs import import_into

        return import_into(whole(self), source, repo_id, tag=tag, base_model=base_model, base_folder=base_folder,
                           subfolder=subfolder, message=message, progress=progress, allow_nonfinite=allow_nonfinite)

    def find_import(self, repo_id: str, hub: str, source_repo: str, commit: str,
                    subfolder: str = "") -> RevisionInfo | None:
        """The revision of `repo_id` already imported from this hub commit, if any."""
        rid = parse_id(repo_id, allow_ref=False)
        with self.db.read() as session:
            repo = self._find_repo(session, "adapter", rid)
            if repo is None:
                return None
            rev = session.scalars(select(RevisionRecord).join(
                ProvenanceRecord, ProvenanceRecord.revision_id == RevisionRecord.id).where(
                RevisionRecord.adapter_id == repo.id, ProvenanceRecord.hub == hub,
                ProvenanceRecord.source_repo == source_repo, ProvenanceRecord.source_commit == commit,
                ProvenanceRecord.subfolder == subfolder).limit(1)).one_or_none()
            return None if rev is None else self._info(session, "adapter", repo, rev)
