"""Pushing: a checkpoint or base-model folder stored as a new revision, or found already there.

The order of work is what makes a push crash-safe: blobs are written and fsynced first, then one
transaction numbers the revision and moves the refs. A crash before the commit leaves only
unreferenced blobs (gc reclaims them); a crash after it leaves a complete revision. The preparation
(validation, .bin to safetensors, the manifest) is registry/rules.py's, shared with RemoteRegistry.
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

import converters
from converters.base_model import BaseModel
from converters.layout import Checkpoint, is_pickle_file
from converters.validation import validate_checkpoint

from .. import failpoints, rules
from ..api import Kind, Progress, PushResult, RevisionInfo
from ..db.models import ProvenanceRecord, RevisionRecord
from ..errors import BlobsMissingError, IntegrityError, InvalidCheckpointError, NotFoundError
from ..ids import DEFAULT_REF, RepoId, parse_id, parse_ref
from ..manifest import Manifest
from .blobs import StoringHasher
from .events import ref_fields, repo_event, revision_fields
from .reading import ReadingMixin
from .refs import RefsMixin


class PushMixin(RefsMixin, ReadingMixin):
    """push, push_base, push_manifest (the server's commit of uploaded blobs)."""

    def push(self, path: Path | str, repo_id: str, *, tag: str | None = None, force: bool = False,
             message: str | None = None, author: str | None = None, base_model: str | None = None,
             parents: list[dict[str, Any]] | None = None, progress: Progress | None = None,
             provenance: dict[str, Any] | None = None, allow_nonfinite: bool = False,
             base_folder: Path | str | None = None) -> PushResult:
        """Store the checkpoint at `path` as a new revision of adapter `repo_id` (or find it already there).

        `base_model` (a registered base model) is validated against and recorded as the revision's base;
        `base_folder` (a local model folder) is only validated against: there is no revision to record.

        Tensors holding NaN or Inf are refused unless `allow_nonfinite` (then the notices name them).

        `parents` records lineage for results of merges and combinations: the revisions they came
        from, the operation, its parameters, library versions and equivalence figures.
        `provenance` (imports): where the files came from, recorded in the revision's transaction.
        """
        rid = rules.push_target(repo_id, tag)
        checkpoint = converters.detect(Path(path))
        base_rev_id: int | None = None
        if base_model is not None:
            base_rev_id, base_folder = self._base_for_validation(base_model)
        with tempfile.TemporaryDirectory(prefix="swiftreg-push-", dir=self.home) as staging:
            base = BaseModel.open(Path(base_folder)) if base_folder else None
            one_pass = self._one_pass_unless_refusable(rid, "adapter", tag, force, progress)
            prepared = rules.prepare_adapter(checkpoint, Path(staging), base, allow_nonfinite=allow_nonfinite,
                                             hash_file=one_pass)
            manifest, notices = prepared.manifest, prepared.notices
            meta = adapter_meta(converters.inspect(prepared.root).to_dict(), checkpoint)
            existing = None if provenance else self._existing(rid, "adapter", manifest.digest, tag, force)
            if existing is not None:  # its blobs stored again if any went missing (quarantined) since
                written, written_bytes = self._store_files(prepared.files, manifest, progress, one_pass)
                return PushResult(existing, created=False, blobs_written=written, bytes_written=written_bytes,
                                  notices=notices + rules.repush_notices(rid.repo, existing))
            written, written_bytes = self._store_files(prepared.files, manifest, progress, one_pass)
        failpoints.hit("push:after-blobs")
        info, created = self._commit_revision(
            "adapter", rid, manifest, checkpoint.format, meta, tag=tag, force=force, message=message, author=author,
            base_rev_id=base_rev_id, repo_values={"tuner_type": meta.get("tuner_type")}, parents=parents,
            provenance=provenance)
        self._refs_changed()
        return PushResult(info, created=created, blobs_written=written, bytes_written=written_bytes, notices=notices)

    def push_base(self, path: Path | str, repo_id: str, *, tag: str | None = None, force: bool = False,
                  message: str | None = None, parents: list[dict[str, Any]] | None = None,
                  progress: Progress | None = None) -> PushResult:
        """Store a transformers model folder (config.json + safetensors) as a base-model revision."""
        rid = rules.push_target(repo_id, tag)
        one_pass = self._one_pass_unless_refusable(rid, "base", tag, force, progress)
        prepared = rules.prepare_base(path, hash_file=one_pass)
        existing = self._existing(rid, "base", prepared.manifest.digest, tag, force)
        if existing is not None:  # its blobs stored again if any went missing (quarantined) since
            written, written_bytes = self._store_files(prepared.files, prepared.manifest, progress, one_pass)
            return PushResult(existing, False, written, written_bytes,
                              prepared.notices + rules.repush_notices(rid.repo, existing))
        written, written_bytes = self._store_files(prepared.files, prepared.manifest, progress, one_pass)
        info, created = self._commit_base(rid, prepared.manifest, prepared.meta, prepared.config, tag=tag, force=force,
                                          message=message, author=None, parents=parents)
        return PushResult(info, created, written, written_bytes, prepared.notices)

    def push_manifest(self, manifest_json: dict[str, Any], repo_id: str, *, kind: Kind = "adapter",
                      tag: str | None = None, force: bool = False, message: str | None = None,
                      author: str | None = None, base_model: str | None = None,
                      parents: list[dict[str, Any]] | None = None, allow_nonfinite: bool = False) -> PushResult:
        """Commit a revision whose blobs were uploaded separately (the server's push path).

        Every blob must already be in the store; the files are then rebuilt from verified blobs
        and go through exactly the checks a local push makes before the revision is committed.
        """
        rid = rules.push_target(repo_id, tag)
        manifest = Manifest.from_json(manifest_json)
        if not manifest.files:
            raise InvalidCheckpointError("the manifest lists no files")
        absent = self.store.missing(f.sha256 for f in manifest.files)
        if absent:
            raise BlobsMissingError(f"{len(absent)} blobs of this manifest are not uploaded yet", absent)
        pickles = [f.path for f in manifest.files if is_pickle_file(f.path)]
        if pickles:
            raise InvalidCheckpointError(f"pickle files are never stored: {', '.join(pickles[:5])} (convert .bin "
                                         "weights to safetensors before pushing; leave training pickles out)")
        if kind == "adapter":
            existing = self._existing(rid, "adapter", manifest.digest, tag, force)
            if existing is not None:
                return PushResult(existing, False, 0, 0, rules.repush_notices(rid.repo, existing))
        with tempfile.TemporaryDirectory(prefix="swiftreg-commit-", dir=self.home) as tmp:
            root = Path(tmp) / "checkpoint"
            self._materialise(manifest, root, link=True)
            for entry in manifest.files:  # sizes are part of the manifest's identity
                if (root / entry.path).stat().st_size != entry.size:
                    raise InvalidCheckpointError(f"{entry.path}: the manifest says {entry.size} bytes, the blob holds "
                                                 f"{(root / entry.path).stat().st_size}")
            if kind == "base":
                meta, config = rules.base_meta(root)
                info, created = self._commit_base(rid, manifest, meta, config, tag=tag, force=force, message=message,
                                                  author=author, parents=parents)
                return PushResult(info, created, 0, 0)
            checkpoint = converters.detect(root)
            base_rev_id, base_folder = (None, None) if base_model is None else self._base_for_validation(base_model)
            base = BaseModel.open(base_folder) if base_folder else None
            notices = rules.checked(validate_checkpoint(checkpoint, base, allow_nonfinite=allow_nonfinite), rid.repo)
            meta = adapter_meta(converters.inspect(root).to_dict(), checkpoint)
            info, created = self._commit_revision(
                "adapter", rid, manifest, checkpoint.format, meta, tag=tag, force=force, message=message,
                author=author, base_rev_id=base_rev_id, repo_values={"tuner_type": meta.get("tuner_type")},
                parents=parents)
        self._refs_changed()
        return PushResult(info, created, 0, 0, notices)

    # ----- the steps -------------------------------------------------------------------------------------

    def _base_for_validation(self, base_id: str) -> tuple[int, Path]:
        """The base revision an adapter is validated against (its row id, its folder)."""
        rid = parse_id(base_id)
        with self.db.read() as session:
            repo = self._find_repo(session, "base", rid)
            if repo is None:
                raise rules.no_base_model(base_id)
            rev_id = self._revision(session, "base", repo, rid).id
        return rev_id, self.resolve(base_id)

    def _one_pass_unless_refusable(self, rid: RepoId, kind: Kind, tag: str | None, force: bool,
                                   progress: Progress | None) -> StoringHasher | None:
        """The hash pass that stores the files as it reads them (blobs.StoringHasher), unless this push may be
        refused by its content: a tag that already exists (not forced) is refused unless it holds this very
        content, which only the digest tells, and a refused push writes nothing (rules.existing_revision). Then
        the files are hashed first and stored after the check, a second read of each."""
        if tag is not None and not force and self._find_revision(kind, rid, tag) is not None:
            return None
        return self._one_pass(progress)

    def _existing(self, rid: RepoId, kind: Kind, digest: str, tag: str | None, force: bool) -> RevisionInfo | None:
        """The revision already holding this content (tagged if asked), by the shared re-push rule."""
        return rules.existing_revision(rid, kind, digest, tag, force,
                                       find=lambda ref: self._find_revision(kind, rid, ref), tag_revision=self.tag)

    def _find_revision(self, kind: Kind, rid: RepoId, ref: str) -> RevisionInfo | None:
        """The revision of `rid.repo` (of this kind) that `ref` names; None if there is none."""
        with self.db.read() as session:
            repo = self._find_repo(session, kind, rid)
            if repo is None:
                return None
            try:
                rev = self._revision(session, kind, repo, RepoId(rid.namespace, rid.name, parse_ref(ref), True))
            except NotFoundError:
                return None
            return self._info(session, kind, repo, rev)

    def _commit_base(self, rid: RepoId, manifest: Manifest, meta: dict[str, Any], config: dict[str, Any], *,
                     tag: str | None, force: bool, message: str | None, author: str | None,
                     parents: list[dict[str, Any]] | None) -> tuple[RevisionInfo, bool]:
        info, created = self._commit_revision(
            "base", rid, manifest, "transformers", meta, tag=tag, force=force, message=message, author=author,
            base_rev_id=None, repo_values={"architecture": meta.get("architecture"), "config": config,
                                           "fingerprint": meta.get("fingerprint")}, parents=parents)
        self._refs_changed()
        return info, created

    def _commit_revision(self, kind: Kind, rid: RepoId, manifest: Manifest, fmt: str, meta: dict[str, Any], *,
                         tag: str | None, force: bool, message: str | None, author: str | None,
                         base_rev_id: int | None, repo_values: dict[str, Any],
                         parents: list[dict[str, Any]] | None = None,
                         provenance: dict[str, Any] | None = None, branch: str = DEFAULT_REF,
                         expect_head: Callable[[Session, Any], None] | None = None) -> tuple[RevisionInfo, bool]:
        """Number the revision and move the refs, in one transaction under the repository's lock.

        Returns the revision and whether this call created it (False when a concurrent push of the
        same content got there first). `branch`: the branch a new revision moves (a hub commit's; else
        `main`). `expect_head(session, repo)`: a check run under the lock before anything is written
        (a hub commit's parent, registry/service/commits.py), raising to refuse.
        """
        with self.db.write() as session:
            repo = self._lock_or_create(session, kind, rid, **repo_values)
            if expect_head is not None:
                expect_head(session, repo)
            rev = session.scalars(select(RevisionRecord).where(
                self._repo_filter(kind, repo.id), RevisionRecord.digest == manifest.digest)).one_or_none()
            created = rev is None
            new_repo = created and repo.revision_count == 0  # numbers are never reused: no revision ever
            main_change = tag_change = None
            imported = False
            if rev is None:
                absent = self.store.missing(f.sha256 for f in manifest.files)
                if absent:
                    raise IntegrityError(f"blobs {', '.join(absent[:3])} vanished before the commit "
                                         "(a gc with no grace period?); push again")
                repo.revision_count += 1
                rev = RevisionRecord(
                    adapter_id=repo.id if kind == "adapter" else None,
                    base_model_id=repo.id if kind == "base" else None,
                    number=repo.revision_count, digest=manifest.digest, format=fmt, manifest=manifest.to_json(),
                    meta=meta, parents=list(parents or []), base_revision_id=base_rev_id, message=message,
                    author=author or os.environ.get("USER"))
                session.add(rev)
                session.flush()
                main_change = self._set_ref(session, kind, repo, branch, "branch", rev, force=True)
                if kind == "adapter":
                    for key, value in repo_values.items():
                        setattr(repo, key, value)
                    if base_rev_id is not None:
                        repo.base_model_id = session.get(RevisionRecord, base_rev_id).base_model_id  # type: ignore[union-attr]
            if tag is not None:
                tag_change = self._set_ref(session, kind, repo, tag, "tag", rev, force=force)
            if provenance is not None:
                imported = self._record_provenance(session, rev.id, provenance)
            session.flush()
            info = self._info(session, kind, repo, rev)
            self._announce(session, kind, repo, rev, info, new_repo=new_repo, created=created,
                           main_change=main_change, tag=tag, tag_change=tag_change, branch=branch,
                           provenance=provenance if imported else None)
            failpoints.hit("push:before-commit")
            session.flush()
            return info, created

    def _announce(self, session: Session, kind: Kind, repo: Any, rev: RevisionRecord, info: RevisionInfo, *,
                  new_repo: bool, created: bool, main_change: Any, tag: str | None, tag_change: Any, branch: str,
                  provenance: dict[str, Any] | None) -> None:
        """The events of a commit, in the commit's transaction (service/events.py): repo.created,
        revision.created (with the refs it moved), tag.created / tag.moved, import.completed."""
        fields = revision_fields(info)
        if new_repo:
            repo_event(session, "repo.created", kind, repo,
                       {**fields, "tuner_type": (info.meta or {}).get("tuner_type")})
        if created:
            refs = []
            if main_change is not None:
                refs += ref_fields(branch, "branch", main_change[1], rev)["updated_refs"]
            if tag_change is not None and tag is not None:
                refs += ref_fields(tag, "tag", tag_change[1], rev)["updated_refs"]
            repo_event(session, "revision.created", kind, repo, {**fields, "updated_refs": refs})
        if tag_change is not None and tag is not None:
            repo_event(session, f"tag.{tag_change[0]}", kind, repo, {**ref_fields(tag, "tag", tag_change[1], rev),
                                                                     **fields})
        if provenance is not None:
            repo_event(session, "import.completed", kind, repo, {**fields, "source": {
                k: provenance.get(k) for k in ("hub", "endpoint", "repo", "requested_revision", "commit",
                                               "subfolder")}, "new_revision": created})

    def _record_provenance(self, session: Session, revision_id: int, p: dict[str, Any]) -> bool:
        """One provenance row (none if this revision already records the same hub commit); whether it was new."""
        return self.db.insert_ignore(
            session, ProvenanceRecord, revision_id=revision_id, hub=p["hub"], endpoint=p["endpoint"],
            source_repo=p["repo"], requested_revision=p.get("requested_revision"), source_commit=p["commit"],
            subfolder=p.get("subfolder") or "", imported_at=datetime.now().astimezone())


def adapter_meta(summary: dict[str, Any], checkpoint: Checkpoint) -> dict[str, Any]:
    """The revision metadata of an adapter checkpoint (tuner, rank, alpha, targets, dominant dtype, sizes)."""
    adapters = summary["adapters"]
    first = adapters[0]
    dtypes: dict[str, int] = {}
    for a in adapters:
        for k, v in a["dtypes"].items():
            dtypes[k] = dtypes.get(k, 0) + v
    return {
        "format": checkpoint.format,
        "tuner_type": first["tuner_type"],
        "r": first["r"],
        "lora_alpha": first["lora_alpha"],
        "target_modules": first["target_modules"],
        "dtype": max(dtypes, key=dtypes.__getitem__) if dtypes else None,
        "parameters": sum(a["parameters"] for a in adapters),
        "tensors": sum(a["tensors"] for a in adapters),
        "adapters": adapters,
    }
