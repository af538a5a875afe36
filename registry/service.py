"""Every registry operation, once: push, pull, resolve, tag, log, gc, base models.

The CLI calls this directly on the embedded registry; the server (a later issue) calls it behind
HTTP. Order of work in a push is what makes it crash-safe: blobs are written and fsynced first,
then one transaction numbers the revision and moves the refs. A crash before the commit leaves
only unreferenced blobs (gc reclaims them); a crash after it leaves a complete revision.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

import converters
from converters.base_model import BaseModel
from converters.layout import PICKLE_SUFFIXES, Checkpoint
from converters.safetensors_io import read_header
from converters.validation import validate_checkpoint

from . import constants, failpoints
from .db import engine as db
from .db.models import AdapterRecord, BaseModelRecord, DerivedRecord, ProvenanceRecord, RefRecord, RevisionRecord
from .errors import (
    AmbiguousRefError, BlobsMissingError, IntegrityError, InvalidCheckpointError, NotFoundError, RefExistsError,
    RegistryError,
)
from .ids import DEFAULT_REF, RepoId, check_tag, parse_id
from .manifest import Manifest, build_manifest, check_relpath, collect_files
from .snapshots import SnapshotCache, copy_snapshot
from .store import BlobStore, LocalBlobStore
from .store.errors import CorruptBlob, StoreError

if TYPE_CHECKING:
    from .hubs import ImportResult

#: Bumped whenever the converters could write different bytes for the same input, so derived
#: conversions recorded by an older swiftreg are redone rather than reused.
CONVERTER_VERSION = "1"
_stat = os.stat
Kind = Literal["adapter", "base"]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class RevisionInfo:
    repo: str
    kind: Kind
    number: int
    digest: str
    format: str
    tags: list[str]
    branches: list[str]
    created_at: datetime
    message: str | None
    author: str | None
    meta: dict[str, Any]
    manifest: dict[str, Any]
    base_model: str | None = None
    parents: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)  # hub imports it came from (hubs/)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["created_at"] = self.created_at.isoformat()
        return d


@dataclass(frozen=True)
class PushResult:
    revision: RevisionInfo
    created: bool          # False: identical content was already a revision
    blobs_written: int
    bytes_written: int
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RepoInfo:
    repo: str
    kind: Kind
    tuner_type: str | None
    revisions: int
    main: int | None
    updated_at: datetime | None
    base_model: str | None
    source: dict[str, Any] | None = None  # provenance of the main revision, when it was imported

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return d


@dataclass(frozen=True)
class GcResult:
    blobs_removed: int
    bytes_removed: int
    temp_files_removed: int
    blobs_kept: int


def default_database_url(home: Path) -> str:
    return db.sqlite_url(home / "registry.db")


class Registry:
    """A registry on this machine: a database (SQLite by default) and a local blob store."""

    def __init__(self, home: Path | str | None = None, database_url: str | None = None,
                 store: BlobStore | None = None) -> None:
        self.home = Path(home) if home is not None else constants.home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url or constants.database_url() or default_database_url(self.home)
        self.engine: Engine = db.make_engine(self.database_url)
        self.store = store or LocalBlobStore(self.home / "blobs")
        self.snapshots = SnapshotCache(self.home / "snapshots")
        self._schema_ready = False
        # resolve() memo: (id, format) -> (folder, refs stamp or None when the ref is immutable).
        # Mutable refs are trusted only while the refs stamp is unchanged, and only for a SQLite
        # registry, whose every writer is on this machine and touches the stamp after each ref change.
        self._memo: dict[tuple[str, str | None], tuple[Path, str, tuple[int, int] | None]] = {}
        self._stamp_path = str(self.home / "refs.stamp")
        self._memo_mutable = self.engine.dialect.name == "sqlite"
        self._visible: set[tuple[str, tuple[str, ...]]] = set()  # blob_in_namespaces' yes answers

    # ----- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    def _ready(self) -> Engine:
        if not self._schema_ready:
            db.ensure_schema(self.engine)
            self._schema_ready = True
        return self.engine

    def _write(self):  # type: ignore[no-untyped-def]
        return db.write_session(self._ready())

    def _stamp(self) -> tuple[int, int]:
        try:
            st = _stat(self._stamp_path)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def _refs_changed(self) -> None:
        """Tell every process's resolve() memo that tags or branches moved (a new file: a new inode)."""
        fd, tmp = tempfile.mkstemp(prefix=".refs.stamp.", dir=self.home)
        os.write(fd, str(time.time_ns()).encode())
        os.close(fd)
        os.replace(tmp, self._stamp_path)

    def _read(self):  # type: ignore[no-untyped-def]
        return db.read_session(self._ready())

    @staticmethod
    def _repo_filter(kind: Kind, repo_id: int):  # type: ignore[no-untyped-def]
        column = RevisionRecord.adapter_id if kind == "adapter" else RevisionRecord.base_model_id
        return column == repo_id

    @staticmethod
    def _ref_filter(kind: Kind, repo_id: int):  # type: ignore[no-untyped-def]
        column = RefRecord.adapter_id if kind == "adapter" else RefRecord.base_model_id
        return column == repo_id

    @staticmethod
    def _model(kind: Kind) -> type[AdapterRecord] | type[BaseModelRecord]:
        return AdapterRecord if kind == "adapter" else BaseModelRecord

    def _find_repo(self, session: Session, kind: Kind, rid: RepoId, *, lock: bool = False):  # type: ignore[no-untyped-def]
        model = self._model(kind)
        query = select(model).where(model.namespace == rid.namespace, model.name == rid.name)
        if lock and session.bind is not None and session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        return session.scalars(query).one_or_none()

    def _repo_or_fail(self, session: Session, kind: Kind, rid: RepoId):  # type: ignore[no-untyped-def]
        repo = self._find_repo(session, kind, rid)
        if repo is None:
            what = "adapter" if kind == "adapter" else "base model"
            raise NotFoundError(f"no {what} {rid.repo} in this registry")
        return repo

    def _lock_or_create(self, session: Session, kind: Kind, rid: RepoId, **values: Any):  # type: ignore[no-untyped-def]
        """The repository row, locked for this transaction; created if new, race-free on both databases."""
        model = self._model(kind)
        dialect = session.get_bind().dialect.name
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)
        now = datetime.now().astimezone()
        session.execute(insert.values(namespace=rid.namespace, name=rid.name, revision_count=0, created_at=now,
                                      **values).on_conflict_do_nothing())
        return self._find_repo(session, kind, rid, lock=True)

    def _revision(self, session: Session, kind: Kind, repo, rid: RepoId) -> RevisionRecord:  # type: ignore[no-untyped-def]
        ref = rid.ref
        where = self._repo_filter(kind, repo.id)
        if ref.kind == "number":
            rev = session.scalars(select(RevisionRecord).where(where, RevisionRecord.number == ref.number)).one_or_none()
            if rev is None:
                raise NotFoundError(f"{rid.repo} has no revision {ref.number} (it has {repo.revision_count})")
            return rev
        if ref.kind == "digest":
            matches = session.scalars(select(RevisionRecord).where(
                where, RevisionRecord.digest.startswith(ref.value, autoescape=True)).limit(3)).all()
            if not matches:
                raise NotFoundError(f"{rid.repo} has no revision with digest {ref.value}")
            if len(matches) > 1:
                raise AmbiguousRefError(
                    f"{ref.value} matches revisions {', '.join(str(m.number) for m in matches)} of {rid.repo}; "
                    "give more hex digits")
            return matches[0]
        found = session.scalars(select(RefRecord).where(
            self._ref_filter(kind, repo.id), RefRecord.name == ref.value)).one_or_none()
        if found is None:
            raise NotFoundError(f"{rid.repo} has no tag or branch {ref.value!r}")
        return session.get(RevisionRecord, found.revision_id)

    def _info(self, session: Session, kind: Kind, repo, rev: RevisionRecord) -> RevisionInfo:  # type: ignore[no-untyped-def]
        refs = session.scalars(select(RefRecord).where(RefRecord.revision_id == rev.id)).all()
        base = None
        if kind == "adapter" and rev.base_revision_id is not None:
            base_rev = session.get(RevisionRecord, rev.base_revision_id)
            base_repo = session.get(BaseModelRecord, base_rev.base_model_id)
            base = f"{base_repo.namespace}/{base_repo.name}@{base_rev.number}"
        return RevisionInfo(
            repo=f"{repo.namespace}/{repo.name}", kind=kind, number=rev.number, digest=rev.digest, format=rev.format,
            tags=sorted(r.name for r in refs if r.kind == "tag"),
            branches=sorted(r.name for r in refs if r.kind == "branch"),
            created_at=rev.created_at, message=rev.message, author=rev.author, meta=rev.meta,
            manifest=rev.manifest, base_model=base, parents=list(rev.parents or []),
            provenance=_provenance(session, rev.id))

    # ----- push -----------------------------------------------------------------------------------

    def push(self, path: Path | str, repo_id: str, *, tag: str | None = None, force: bool = False,
             message: str | None = None, author: str | None = None, base_model: str | None = None,
             parents: list[dict[str, Any]] | None = None, progress: Progress | None = None,
             provenance: dict[str, Any] | None = None) -> PushResult:
        """Store the checkpoint at `path` as a new revision of adapter `repo_id` (or find it already there).

        `parents` records lineage for results of merges and combinations: the revisions they came
        from, the operation, its parameters, library versions and equivalence figures.
        `provenance` (imports): where the files came from, recorded in the revision's transaction.
        """
        rid = parse_id(repo_id, allow_ref=False)
        if tag is not None:
            check_tag(tag)
        source = Path(path)
        checkpoint = converters.detect(source)
        base_rev_id, base_folder = None, None
        if base_model is not None:
            base_rev_id, base_folder = self._base_for_validation(base_model)
        report = validate_checkpoint(checkpoint, BaseModel.open(base_folder) if base_folder else None)
        if not report.ok:
            raise InvalidCheckpointError(
                f"{source} is not a valid adapter checkpoint: " + "; ".join(str(p) for p in report.errors[:5])
                + (f" (and {len(report.errors) - 5} more)" if len(report.errors) > 5 else ""), report.errors)
        notices = [str(p) for p in report.problems if p.severity == "warning"]
        with tempfile.TemporaryDirectory(prefix="swiftreg-push-", dir=self.home) as staging:
            root = self._storable_form(checkpoint, Path(staging), notices)
            files, skipped = collect_files(root)
            if skipped:
                notices.append("left out pickle files (never stored): " + ", ".join(skipped))
            manifest = build_manifest(files)
            meta = _adapter_meta(converters.inspect(root).to_dict(), checkpoint)
            existing = None if provenance else self._existing(rid, manifest.digest, tag, force)
            if existing is not None:
                return PushResult(existing, created=False, blobs_written=0, bytes_written=0, notices=notices)
            written, written_bytes = self._store_files(files, manifest, progress)
        failpoints.hit("push:after-blobs")
        info, created = self._commit_revision(
            "adapter", rid, manifest, checkpoint.format, meta, tag=tag, force=force, message=message, author=author,
            base_rev_id=base_rev_id, repo_values={"tuner_type": meta.get("tuner_type")}, parents=parents,
            provenance=provenance)
        self._refs_changed()
        return PushResult(info, created=created, blobs_written=written, bytes_written=written_bytes, notices=notices)

    def push_manifest(self, manifest_json: dict[str, Any], repo_id: str, *, kind: Kind = "adapter",
                      tag: str | None = None, force: bool = False, message: str | None = None,
                      author: str | None = None, base_model: str | None = None,
                      parents: list[dict[str, Any]] | None = None) -> PushResult:
        """Commit a revision whose blobs were uploaded separately (the server's push path).

        Every blob must already be in the store; the files are then rebuilt from verified blobs
        and go through exactly the checks a local push makes before the revision is committed.
        """
        rid = parse_id(repo_id, allow_ref=False)
        if tag is not None:
            check_tag(tag)
        manifest = Manifest.from_json(manifest_json)
        if not manifest.files:
            raise InvalidCheckpointError("the manifest lists no files")
        absent = self.store.missing(f.sha256 for f in manifest.files)
        if absent:
            raise BlobsMissingError(f"{len(absent)} blobs of this manifest are not uploaded yet", absent)
        pickles = [f.path for f in manifest.files if f.path.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise InvalidCheckpointError(f"pickle files are never stored: {', '.join(pickles[:5])} (convert .bin "
                                         "weights to safetensors before pushing; leave training pickles out)")
        if kind == "adapter":
            existing = self._existing(rid, manifest.digest, tag, force)
            if existing is not None:
                return PushResult(existing, False, 0, 0)
        with tempfile.TemporaryDirectory(prefix="swiftreg-commit-", dir=self.home) as tmp:
            root = Path(tmp) / "checkpoint"
            self._materialise(manifest, root, link=True)
            for entry in manifest.files:  # sizes are part of the manifest's identity
                if (root / entry.path).stat().st_size != entry.size:
                    raise InvalidCheckpointError(f"{entry.path}: the manifest says {entry.size} bytes, the blob holds "
                                                 f"{(root / entry.path).stat().st_size}")
            if kind == "base":
                meta, config = _base_meta(root)
                info, created = self._commit_revision(
                    "base", rid, manifest, "transformers", meta, tag=tag, force=force, message=message, author=author,
                    base_rev_id=None, repo_values={"architecture": meta.get("architecture"), "config": config,
                                                   "fingerprint": meta.get("fingerprint")}, parents=parents)
                self._refs_changed()
                return PushResult(info, created, 0, 0)
            checkpoint = converters.detect(root)
            base_rev_id, base_folder = (None, None) if base_model is None else self._base_for_validation(base_model)
            report = validate_checkpoint(checkpoint, BaseModel.open(base_folder) if base_folder else None)
            if not report.ok:
                raise InvalidCheckpointError(
                    f"{rid.repo}: not a valid adapter checkpoint: " + "; ".join(str(p) for p in report.errors[:5]),
                    report.errors)
            meta = _adapter_meta(converters.inspect(root).to_dict(), checkpoint)
            info, created = self._commit_revision(
                "adapter", rid, manifest, checkpoint.format, meta, tag=tag, force=force, message=message,
                author=author, base_rev_id=base_rev_id, repo_values={"tuner_type": meta.get("tuner_type")},
                parents=parents)
        self._refs_changed()
        return PushResult(info, created, 0, 0, [str(p) for p in report.problems if p.severity == "warning"])

    def _storable_form(self, checkpoint: Checkpoint, staging: Path, notices: list[str]) -> Path:
        """The folder to store: the checkpoint itself, or a safetensors copy when it holds .bin weights."""
        if not any(a.weights_format == "bin" for a in checkpoint.adapters):
            return checkpoint.path
        result = converters.convert(checkpoint.path, staging / "checkpoint", checkpoint.format)
        notices.append("legacy .bin weights were read with weights_only=True and stored as safetensors")
        notices.extend(result.notices)
        return result.destination

    def _existing(self, rid: RepoId, digest: str, tag: str | None, force: bool) -> RevisionInfo | None:
        with self._read() as session:
            repo = self._find_repo(session, "adapter", rid)
            if repo is None:
                return None
            rev = session.scalars(select(RevisionRecord).where(
                RevisionRecord.adapter_id == repo.id, RevisionRecord.digest == digest)).one_or_none()
            if rev is None:
                if tag is not None and not force:
                    self._check_tag_free(session, repo, tag)  # refuse before writing a single blob
                return None
        if tag is not None:
            self.tag(f"{rid.repo}@{rev.number}", tag, force=force)
        with self._read() as session:
            return self._info(session, "adapter", self._find_repo(session, "adapter", rid),
                              session.get(RevisionRecord, rev.id))

    def _check_tag_free(self, session: Session, repo: AdapterRecord, tag: str) -> None:
        ref = session.scalars(select(RefRecord).where(RefRecord.adapter_id == repo.id,
                                                      RefRecord.name == tag)).one_or_none()
        if ref is not None:
            current = session.get(RevisionRecord, ref.revision_id)
            raise RefExistsError(f"tag {tag!r} of {repo.namespace}/{repo.name} already points to revision "
                                 f"{current.number}; tags are immutable (use --force to move it)")

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

    def _commit_revision(self, kind: Kind, rid: RepoId, manifest: Manifest, fmt: str, meta: dict[str, Any], *,
                         tag: str | None, force: bool, message: str | None, author: str | None,
                         base_rev_id: int | None, repo_values: dict[str, Any],
                         parents: list[dict[str, Any]] | None = None,
                         provenance: dict[str, Any] | None = None) -> tuple[RevisionInfo, bool]:
        """Number the revision and move the refs, in one transaction under the repository's lock.

        Returns the revision and whether this call created it (False when a concurrent push of the
        same content got there first).
        """
        with self._write() as session:
            repo = self._lock_or_create(session, kind, rid, **repo_values)
            rev = session.scalars(select(RevisionRecord).where(
                self._repo_filter(kind, repo.id), RevisionRecord.digest == manifest.digest)).one_or_none()
            created = rev is None
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
                self._set_ref(session, kind, repo, DEFAULT_REF, "branch", rev, force=True)
                if kind == "adapter":
                    for key, value in repo_values.items():
                        setattr(repo, key, value)
                    if base_rev_id is not None:
                        repo.base_model_id = session.get(RevisionRecord, base_rev_id).base_model_id
            if tag is not None:
                self._set_ref(session, kind, repo, tag, "tag", rev, force=force)
            if provenance is not None:
                _record_provenance(session, rev.id, provenance)
            failpoints.hit("push:before-commit")
            session.flush()
            return self._info(session, kind, repo, rev), created

    def _set_ref(self, session: Session, kind: Kind, repo, name: str, ref_kind: str,  # type: ignore[no-untyped-def]
                 rev: RevisionRecord, *, force: bool) -> None:
        ref = session.scalars(select(RefRecord).where(
            self._ref_filter(kind, repo.id), RefRecord.name == name)).one_or_none()
        if ref is None:
            session.add(RefRecord(adapter_id=repo.id if kind == "adapter" else None,
                                  base_model_id=repo.id if kind == "base" else None,
                                  name=name, kind=ref_kind, revision_id=rev.id))
            return
        if ref.kind != ref_kind:
            raise RefExistsError(f"{repo.namespace}/{repo.name}@{name} is a {ref.kind}, not a {ref_kind}")
        if ref.revision_id == rev.id:
            return
        if ref_kind == "tag" and not force:
            current = session.get(RevisionRecord, ref.revision_id)
            raise RefExistsError(f"tag {name!r} of {repo.namespace}/{repo.name} already points to revision "
                                 f"{current.number}; tags are immutable (use --force to move it)")
        ref.revision_id = rev.id
        ref.updated_at = datetime.now().astimezone()

    # ----- refs -------------------------------------------------------------------------------------

    def tag(self, repo_id: str, tag: str, *, force: bool = False) -> RevisionInfo:
        rid = parse_id(repo_id)
        check_tag(tag)
        kind = self._kind_of(rid)
        with self._write() as session:
            repo = self._find_repo(session, kind, rid, lock=True) or self._repo_or_fail(session, kind, rid)
            rev = self._revision(session, kind, repo, rid)
            self._set_ref(session, kind, repo, tag, "tag", rev, force=force)
            session.flush()
            info = self._info(session, kind, repo, rev)
        self._refs_changed()
        return info

    def untag(self, repo_id: str, tag: str) -> None:
        self._delete_ref(repo_id, tag, only_tags=True)

    def remove_ref(self, repo_id: str, *, force: bool = False) -> None:
        """`rm ns/name@ref`: drop a tag or branch; revisions stay (they are immutable)."""
        rid = parse_id(repo_id)
        if not rid.explicit_ref or rid.ref.kind != "name":
            raise RegistryError(f"rm removes a tag or branch: name it, as in {rid.repo}@v1")
        if rid.ref.value == DEFAULT_REF and not force:
            raise RegistryError(f"removing {rid.repo}@main leaves the repository without a default; "
                                "pass --force if you mean it")
        self._delete_ref(repo_id, rid.ref.value, only_tags=False)

    def _delete_ref(self, repo_id: str, name: str, *, only_tags: bool) -> None:
        rid = parse_id(repo_id)
        kind = self._kind_of(rid)
        with self._write() as session:
            repo = self._repo_or_fail(session, kind, rid)
            ref = session.scalars(select(RefRecord).where(
                self._ref_filter(kind, repo.id), RefRecord.name == name)).one_or_none()
            if ref is None:
                raise NotFoundError(f"{rid.repo} has no tag or branch {name!r}")
            if only_tags and ref.kind != "tag":
                raise RegistryError(f"{rid.repo}@{name} is a {ref.kind}, not a tag")
            session.delete(ref)
        self._refs_changed()

    def _kind_of(self, rid: RepoId) -> Kind:
        with self._read() as session:
            if self._find_repo(session, "adapter", rid) is not None:
                return "adapter"
            if self._find_repo(session, "base", rid) is not None:
                return "base"
        raise NotFoundError(f"no adapter or base model {rid.repo} in this registry")

    # ----- reading ------------------------------------------------------------------------------------

    def show(self, repo_id: str) -> RevisionInfo:
        rid = parse_id(repo_id)
        kind = self._kind_of(rid)
        with self._read() as session:
            repo = self._repo_or_fail(session, kind, rid)
            return self._info(session, kind, repo, self._revision(session, kind, repo, rid))

    def log(self, repo_id: str) -> list[RevisionInfo]:
        rid = parse_id(repo_id, allow_ref=False)
        kind = self._kind_of(rid)
        with self._read() as session:
            repo = self._repo_or_fail(session, kind, rid)
            revs = session.scalars(select(RevisionRecord).where(self._repo_filter(kind, repo.id))
                                   .order_by(RevisionRecord.number.desc())).all()
            return [self._info(session, kind, repo, rev) for rev in revs]

    def list(self, namespace: str | None = None) -> list[RepoInfo]:
        out: list[RepoInfo] = []
        with self._read() as session:
            for kind in ("adapter", "base"):
                model = self._model(kind)  # type: ignore[arg-type]
                query = select(model).order_by(model.namespace, model.name)
                if namespace:
                    query = query.where(model.namespace == namespace)
                for repo in session.scalars(query):
                    main = session.scalars(select(RevisionRecord).join(RefRecord, RefRecord.revision_id == RevisionRecord.id)
                                           .where(self._ref_filter(kind, repo.id), RefRecord.name == DEFAULT_REF)).one_or_none()  # type: ignore[arg-type]
                    updated = session.scalar(select(func.max(RevisionRecord.created_at)).where(
                        self._repo_filter(kind, repo.id)))  # type: ignore[arg-type]
                    base = None
                    if kind == "adapter" and repo.base_model_id is not None:
                        b = session.get(BaseModelRecord, repo.base_model_id)
                        base = f"{b.namespace}/{b.name}"
                    source = (_provenance(session, main.id) or [None])[0] if main is not None else None
                    out.append(RepoInfo(f"{repo.namespace}/{repo.name}", kind, getattr(repo, "tuner_type", None),  # type: ignore[arg-type]
                                        repo.revision_count, main.number if main else None, updated, base, source))
        return out

    # ----- materialising --------------------------------------------------------------------------------

    def resolve(self, repo_id: str, format: str | None = None) -> Path:
        """A verified local folder holding `repo_id`'s revision in `format` (its stored format by default).

        Repeated calls for a cached id cost two `stat`s: the answer is remembered, and a tag or
        branch answer is dropped as soon as any ref of this registry changes.
        """
        hit = self._memo.get((repo_id, format))
        if hit is not None:
            path, folder, stamp = hit
            if (stamp is None or stamp == self._stamp()) and os.path.isdir(folder):
                return path
        stamp = self._stamp() if self._memo_mutable else None
        path, immutable = self._resolve(repo_id, format)
        if immutable or self._memo_mutable:
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[(repo_id, format)] = (path, str(path), None if immutable else stamp)
        return path

    def _resolve(self, repo_id: str, format: str | None) -> tuple[Path, bool]:
        rid = parse_id(repo_id)
        with self._read() as session:
            kind: Kind = "adapter"
            repo = self._find_repo(session, "adapter", rid)
            if repo is None:
                kind, repo = "base", self._find_repo(session, "base", rid)
            if repo is None:
                raise NotFoundError(f"no adapter or base model {rid.repo} in this registry")
            rev = self._revision(session, kind, repo, rid)
            rev_id, number, digest, stored_format, manifest = rev.id, rev.number, rev.digest, rev.format, rev.manifest
        target = format or stored_format
        if target not in ("swift", "peft") and target != stored_format:
            raise RegistryError(f"format must be 'swift' or 'peft', not {target!r}")
        folder = self.snapshots.folder(rid.namespace, rid.name, number, target, digest)
        immutable = rid.ref.kind in ("number", "digest")
        if folder.is_dir():
            return folder, immutable
        return self.snapshots.materialise(folder, lambda: self._manifest_for(rev_id, manifest, stored_format, target),
                                          self._copy_blob), immutable

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

    def manifest(self, repo_id: str, format: str | None = None) -> Manifest:
        """The files of `repo_id`'s revision in `format` (stored format by default), copying no file.

        A conversion to another format is derived once and recorded, exactly as resolve() does.
        """
        rid = parse_id(repo_id)
        kind = self._kind_of(rid)
        with self._read() as session:
            rev = self._revision(session, kind, self._repo_or_fail(session, kind, rid), rid)
            rev_id, stored, manifest = rev.id, rev.format, rev.manifest
        target = format or stored
        if target != stored and (kind == "base" or target not in ("swift", "peft")):
            raise RegistryError(f"{rid.repo} is stored as {stored}; it cannot be served as {target!r}")
        return self._manifest_for(rev_id, manifest, stored, target)

    def _copy_blob(self, digest: str, dst: Path, rel: str) -> None:
        try:
            self.store.copy_to(digest, dst)
        except CorruptBlob as exc:
            raise IntegrityError(f"{rel}: blob {digest} is corrupt in the store ({exc}); it was not served") from None

    def _manifest_for(self, rev_id: int, manifest: dict[str, Any], stored: str, target: str) -> Manifest:
        if target == stored:
            return Manifest.from_json(manifest)
        with self._read() as session:
            derived = session.scalars(select(DerivedRecord).where(
                DerivedRecord.revision_id == rev_id, DerivedRecord.target_format == target,
                DerivedRecord.converter_version == CONVERTER_VERSION)).one_or_none()
            if derived is not None:
                return Manifest.from_json(derived.manifest)
        return self._derive(rev_id, Manifest.from_json(manifest), target)

    def _derive(self, rev_id: int, source: Manifest, target: str) -> Manifest:
        """Convert a revision once, store the output's blobs, and record it in `derived`."""
        with tempfile.TemporaryDirectory(prefix="swiftreg-derive-", dir=self.home) as tmp:
            original = Path(tmp) / "original"
            self._materialise(source, original)
            converted = converters.convert(original, Path(tmp) / "converted", target).destination  # type: ignore[arg-type]
            files, _ = collect_files(converted)
            manifest = build_manifest(files)
            self._store_files(files, manifest, None)
        dialect = self.engine.dialect.name
        with self._write() as session:
            insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(DerivedRecord)
            session.execute(insert.values(revision_id=rev_id, target_format=target,
                                          converter_version=CONVERTER_VERSION, digest=manifest.digest,
                                          manifest=manifest.to_json(),
                                          created_at=datetime.now().astimezone()).on_conflict_do_nothing())
        return manifest

    def pull(self, repo_id: str, output: Path | str | None = None, format: str | None = None, *,
             overwrite: bool = False) -> Path:
        """Materialise a revision; with `output`, copy it there (atomically) and return that path."""
        snapshot = self.resolve(repo_id, format)
        if output is None:
            return snapshot
        return copy_snapshot(snapshot, Path(output), overwrite=overwrite)

    def verify(self, repo_id: str) -> list[str]:
        """Digests of the revision's blobs whose stored bytes no longer match (empty: all good)."""
        info = self.show(repo_id)
        return [f["sha256"] for f in info.manifest["files"] if not self.store.verify(f["sha256"])]

    def blob_in_namespaces(self, digest: str, namespaces: list[str]) -> bool:
        """Whether a revision (or a conversion of one) in these namespaces names the blob.

        Blob routes are addressed by digest alone; a token scoped to some namespaces may read, or
        build a revision on, only the blobs its namespaces already hold, so knowing a digest from
        elsewhere grants nothing. Revisions are never deleted, so a yes is remembered for good.
        """
        wanted = sorted(set(namespaces))
        key = (digest, tuple(wanted))
        if key in self._visible:
            return True
        with self._read() as session:
            for model, column in ((AdapterRecord, RevisionRecord.adapter_id),
                                  (BaseModelRecord, RevisionRecord.base_model_id)):
                rows = session.execute(
                    select(RevisionRecord.id, RevisionRecord.manifest).join(model, column == model.id)
                    .where(model.namespace.in_(wanted))).all()
                ids = [row.id for row in rows]
                manifests = [row.manifest for row in rows]
                for start in range(0, len(ids), 500):
                    manifests += session.scalars(select(DerivedRecord.manifest).where(
                        DerivedRecord.revision_id.in_(ids[start:start + 500]))).all()
                if any(f.get("sha256") == digest for m in manifests for f in m.get("files", ())):
                    if len(self._visible) > 65536:
                        self._visible.clear()
                    self._visible.add(key)
                    return True
        return False

    # ----- hub imports (registry/hubs/) ---------------------------------------------------------------

    def import_from(self, source: str, repo_id: str, *, tag: str | None = None, base_model: str | None = None,
                    subfolder: str | None = None, message: str | None = None,
                    progress: Progress | None = None) -> ImportResult:
        """Import an adapter from the Hugging Face Hub (`hf://owner/name[@rev]`) or ModelScope (`ms://...`).

        Downloaded with the hub's own client (its usual variables apply), then pushed like any
        checkpoint, with its provenance recorded in the same transaction. See registry/hubs/.
        """
        from .hubs import import_into

        return import_into(self, source, repo_id, tag=tag, base_model=base_model, subfolder=subfolder,
                           message=message, progress=progress)

    def find_import(self, repo_id: str, hub: str, source_repo: str, commit: str,
                    subfolder: str = "") -> RevisionInfo | None:
        """The revision of `repo_id` already imported from this hub commit, if any."""
        rid = parse_id(repo_id, allow_ref=False)
        with self._read() as session:
            repo = self._find_repo(session, "adapter", rid)
            if repo is None:
                return None
            rev = session.scalars(select(RevisionRecord).join(
                ProvenanceRecord, ProvenanceRecord.revision_id == RevisionRecord.id).where(
                RevisionRecord.adapter_id == repo.id, ProvenanceRecord.hub == hub,
                ProvenanceRecord.source_repo == source_repo, ProvenanceRecord.source_commit == commit,
                ProvenanceRecord.subfolder == subfolder).limit(1)).one_or_none()
            return None if rev is None else self._info(session, "adapter", repo, rev)

    # ----- base models -----------------------------------------------------------------------------------

    def push_base(self, path: Path | str, repo_id: str, *, tag: str | None = None, force: bool = False,
                  message: str | None = None, parents: list[dict[str, Any]] | None = None,
                  progress: Progress | None = None) -> PushResult:
        """Store a transformers model folder (config.json + safetensors) as a base-model revision."""
        rid = parse_id(repo_id, allow_ref=False)
        if tag is not None:
            check_tag(tag)
        root = Path(path)
        meta, config = _base_meta(root)
        files, skipped = collect_files(root)
        manifest = build_manifest(files)
        with self._read() as session:
            repo = self._find_repo(session, "base", rid)
            if repo is not None:
                rev = session.scalars(select(RevisionRecord).where(
                    RevisionRecord.base_model_id == repo.id, RevisionRecord.digest == manifest.digest)).one_or_none()
                if rev is not None:
                    if tag:
                        self.tag(f"{rid.repo}@{rev.number}", tag, force=force)
                    return PushResult(self.show(f"{rid.repo}@{rev.number}"), False, 0, 0)
        written, written_bytes = self._store_files(files, manifest, progress)
        info, created = self._commit_revision(
            "base", rid, manifest, "transformers", meta, tag=tag, force=force, message=message, author=None,
            base_rev_id=None, repo_values={"architecture": meta.get("architecture"), "config": config,
                                           "fingerprint": meta.get("fingerprint")}, parents=parents)
        self._refs_changed()
        notices = ["left out pickle files (never stored): " + ", ".join(skipped)] if skipped else []
        return PushResult(info, created, written, written_bytes, notices)

    def _base_for_validation(self, base_id: str) -> tuple[int, Path]:
        rid = parse_id(base_id)
        with self._read() as session:
            repo = self._find_repo(session, "base", rid)
            if repo is None:
                raise NotFoundError(f"no base model {rid.repo} in this registry (push it with `swiftreg base push`)")
            rev_id = self._revision(session, "base", repo, rid).id
        return rev_id, self.resolve(base_id)

    # ----- garbage collection ------------------------------------------------------------------------------

    def gc(self, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcResult:
        """Delete blobs no revision or derived conversion references and that are older than the grace.

        A push touches every blob it relies on before it commits, so a push running now is safe
        as long as it commits within the grace period.
        """
        with self._read() as session:
            referenced = {f["sha256"] for (m,) in session.execute(select(RevisionRecord.manifest))
                          for f in m.get("files", [])}
            referenced |= {f["sha256"] for (m,) in session.execute(select(DerivedRecord.manifest))
                           for f in m.get("files", [])}
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
        return GcResult(removed, removed_bytes, len(temps), kept)


    # ----- jobs and nightly validation (issue 6; the substance is in registry/jobs/) ---------------------

    def submit_job(self, kind: str, params: dict[str, Any], *, key: str | None = None, backend: str = "queue",
                   ray_address: str | None = None) -> Any:
        """Record a job (idempotent with `key`); run it now with backend inline or ray. Returns its JobInfo."""
        from .jobs import api

        return api.submit(self, kind, params, key=key, backend=backend, ray_address=ray_address)

    def job(self, job_id: int) -> Any:
        from .jobs.api import queue_of

        return queue_of(self).get(job_id)

    def jobs(self, *, status: str | None = None, kind: str | None = None, namespaces: list[str] | None = None,
             limit: int = 100) -> list[Any]:
        from .jobs.api import queue_of

        return queue_of(self).list(status=status, kind=kind, namespaces=namespaces, limit=limit)

    def cancel_job(self, job_id: int) -> Any:
        from .jobs.api import queue_of

        return queue_of(self).cancel(job_id)

    def validate_all(self, **options: Any) -> Any:
        """Validate every adapter revision (see registry/jobs/api.py validate_all); a ValidationReport."""
        from .jobs import api

        return api.validate_all(self, **options)

    def validation_history(self, repo_id: str, check_kind: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Every recorded check of a revision, newest first (validate-all, push --check)."""
        from .jobs.history import history

        return history(self, repo_id, check_kind=check_kind, limit=limit)

    # ----- validation runs (e.g. `push --check vllm`) -----------------------------------------------------

    def record_validation(self, repo_id: str, check_kind: str, *, passed: bool, metrics: dict[str, Any],
                          library_versions: dict[str, Any]) -> int:
        """Record a check's verdict on a revision in `validation_runs` (the revision row stays immutable)."""
        from .db.models import ValidationRunRecord

        rid = parse_id(repo_id)
        kind = self._kind_of(rid)
        with self._write() as session:
            rev = self._revision(session, kind, self._repo_or_fail(session, kind, rid), rid)
            now = datetime.now().astimezone()
            run = ValidationRunRecord(revision_id=rev.id, check_kind=check_kind, metrics=metrics, passed=passed,
                                      library_versions=library_versions, started_at=now, finished_at=now)
            session.add(run)
            session.flush()
            return run.id

    def check_serving(self, repo_id: str, target: str = "vllm", *, max_lora_rank: int = 16,
                      served_model: str | None = None, record: bool = True) -> dict[str, Any]:
        """Can `target` serve this revision (registry/vllm_checks.py)? The verdict, recorded in validation_runs.

        `served_model`: the model the engine serves (a registry base id, or a folder on this machine),
        compared with the base the revision records.
        """
        from .vllm_checks import CHECK_KIND, check_revision, library_versions, served_base

        if target != "vllm":
            raise RegistryError(f"serving checks know the target 'vllm', not {target!r}")
        info, _folder, verdict = check_revision(self, repo_id, max_lora_rank=max_lora_rank,
                                                served=served_base(self, served_model) if served_model else None)
        data = {"revision": f"{info.repo}@{info.number}", "digest": info.digest, **verdict.to_dict(),
                "recorded": record}
        data["path"] = data["revision"]  # the snapshot path is this machine's business
        if record:
            self.record_validation(data["revision"], CHECK_KIND, passed=verdict.ok, library_versions=library_versions(),
                                   metrics={"reasons": data["reasons"], "notes": data["notes"],
                                            "max_lora_rank": max_lora_rank, "served_model": served_model})
        return data


def _provenance(session: Session, revision_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(ProvenanceRecord).where(ProvenanceRecord.revision_id == revision_id)
                           .order_by(ProvenanceRecord.id)).all()
    return [{"hub": r.hub, "endpoint": r.endpoint, "repo": r.source_repo, "requested_revision": r.requested_revision,
             "commit": r.source_commit, "subfolder": r.subfolder,
             "imported_at": r.imported_at.isoformat() if r.imported_at else None} for r in rows]


def _record_provenance(session: Session, revision_id: int, p: dict[str, Any]) -> None:
    """One provenance row (none if this revision already records the same hub commit)."""
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ProvenanceRecord)
    session.execute(insert.values(
        revision_id=revision_id, hub=p["hub"], endpoint=p["endpoint"], source_repo=p["repo"],
        requested_revision=p.get("requested_revision"), source_commit=p["commit"], subfolder=p.get("subfolder") or "",
        imported_at=datetime.now().astimezone()).on_conflict_do_nothing())


def _adapter_meta(summary: dict[str, Any], checkpoint: Checkpoint) -> dict[str, Any]:
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
        "dtype": max(dtypes, key=dtypes.get) if dtypes else None,  # type: ignore[arg-type]
        "parameters": sum(a["parameters"] for a in adapters),
        "tensors": sum(a["tensors"] for a in adapters),
        "adapters": adapters,
    }


def _base_meta(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import hashlib
    import json

    if not (root / "config.json").is_file():
        raise RegistryError(f"{root} has no config.json: a base model is a transformers model folder")
    try:
        config = json.loads((root / "config.json").read_text())
    except ValueError as exc:
        raise RegistryError(f"{root / 'config.json'} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise RegistryError(f"{root / 'config.json'} must hold a JSON object")
    shards = sorted(root.glob("*.safetensors"))
    if not shards:
        raise RegistryError(f"{root} has no *.safetensors weights; convert pytorch_model.bin to safetensors first")
    shapes = []
    dtypes: dict[str, int] = {}
    parameters = 0
    for shard in shards:
        for t in read_header(shard).tensors:
            shapes.append((t.name, t.dtype, list(t.shape)))
            dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
            parameters += t.numel
    fingerprint = "sha256:" + hashlib.sha256(json.dumps(sorted(shapes)).encode()).hexdigest()
    architectures = config.get("architectures") or [config.get("model_type")]
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if architecture is not None and not (isinstance(architecture, str) and len(architecture) <= 200):
        raise RegistryError(f"{root / 'config.json'}: the architecture must be a class name of at most 200 characters")
    return {"format": "transformers", "architecture": architecture,
            "model_type": config.get("model_type"), "tensors": len(shapes), "parameters": parameters,
            "dtype": max(dtypes, key=dtypes.get) if dtypes else None,  # type: ignore[arg-type]
            "fingerprint": fingerprint}, config

