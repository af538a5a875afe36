"""The registry's state and the lookups every operation shares.

`RegistryCore` holds what a `Registry` is made of (its home folder, database handle, blob store and
snapshot cache) and the row lookups the push, refs and reading rooms all need: a repository by id,
the revision a ref names, a revision as a `RevisionInfo`. It also keeps the refs stamp, the file whose
change tells every process's `resolve()` memo that tags or branches moved.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, cast

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from .. import atomic, constants
from ..api import Kind, RevisionInfo
from ..db import Database
from ..db.engine import sqlite_url
from ..db.models import (
    AdapterRecord,
    BaseModelRecord,
    ProvenanceRecord,
    RefClockRecord,
    RefRecord,
    RevisionDeletionRecord,
    RevisionRecord,
)
from ..db.queries import any_of
from ..errors import AmbiguousRefError, NotFoundError
from ..ids import RepoId
from ..snapshots import SnapshotCache
from ..store import BlobStore
from ..store.factory import open_store

if TYPE_CHECKING:
    from . import Registry

_stat = os.stat


def default_database_url(home: Path) -> str:
    """The embedded registry's database: SQLite beside the blobs."""
    return sqlite_url(home / "registry.db")


class RegistryCore:
    """A registry on this machine: a database (SQLite by default) and a local blob store."""

    def __init__(self, home: Path | str | None = None, database_url: str | None = None,
                 store: BlobStore | None = None) -> None:
        self.home = Path(home) if home is not None else constants.home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url or constants.database_url() or default_database_url(self.home)
        self.db = Database(self.database_url)
        self.store = store or open_store(None, self.home)  # SWIFTREG_STORE_URL, else HOME/blobs
        self.snapshots = SnapshotCache(self.home / "snapshots")
        self._stamp_path = str(self.home / "refs.stamp")
        # resolve() memo: (id, format) -> (folder, refs stamp or None when the ref is immutable).
        # Mutable refs are trusted only while the refs stamp is unchanged: on SQLite, whose every writer is on
        # this machine, a file every writer replaces after a ref change; on PostgreSQL, the `ref_clock` row a
        # trigger moves in the transaction of every ref change, read at most every `ref_staleness` seconds.
        self._memo: dict[tuple[str, str | None], tuple[Path, str, tuple[int, int] | None]] = {}
        self._memo_mutable = True
        self._clock_shared = self.db.dialect != "sqlite"
        self._clock_staleness = constants.ref_staleness()
        self._clock_read_at = float("-inf")
        self._clock_version = 0
        self._visible: set[tuple[str, tuple[str, ...]]] = set()  # blob_in_namespaces' yes answers

    def close(self) -> None:
        """Close the database connections."""
        self.db.close()

    # ----- the refs stamp ----------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int]:
        """What changes whenever a tag or branch moves: the stamp file's (inode, mtime) on SQLite; on PostgreSQL
        (0, ref_clock version), the version re-read once `ref_staleness` has passed since the last read."""
        if self._clock_shared:
            now = time.monotonic()
            if now - self._clock_read_at > self._clock_staleness:
                with self.db.read() as session:
                    self._clock_version = session.scalar(select(RefClockRecord.version)
                                                         .where(RefClockRecord.id == 1)) or 0
                self._clock_read_at = now  # the time before the read: the bound is never overstated
            return (0, self._clock_version)
        try:
            st = _stat(self._stamp_path)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def _refs_changed(self) -> None:
        """Tell every process's resolve() memo that tags or branches moved: on SQLite a new stamp file (a new
        inode); on PostgreSQL the trigger has moved `ref_clock`, and this process re-reads it on its next call."""
        if self._clock_shared:
            self._clock_read_at = float("-inf")
            return
        atomic.write_file(self._stamp_path, str(time.time_ns()).encode())

    # ----- lookups -------------------------------------------------------------------------------------

    @staticmethod
    def _repo_filter(kind: Kind, repo_id: int) -> ColumnElement[bool]:
        column = RevisionRecord.adapter_id if kind == "adapter" else RevisionRecord.base_model_id
        return column == repo_id

    @staticmethod
    def _ref_filter(kind: Kind, repo_id: int) -> ColumnElement[bool]:
        column = RefRecord.adapter_id if kind == "adapter" else RefRecord.base_model_id
        return column == repo_id

    @staticmethod
    def _model(kind: Kind) -> Any:
        """The table of this kind of repository (AdapterRecord or BaseModelRecord: the same lookup columns)."""
        return AdapterRecord if kind == "adapter" else BaseModelRecord

    def _find_repo(self, session: Session, kind: Kind, rid: RepoId, *, lock: bool = False) -> Any:
        model = self._model(kind)
        query = select(model).where(model.namespace == rid.namespace, model.name == rid.name)
        if lock and session.bind is not None and session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()
        return session.scalars(query).one_or_none()

    def _repo_or_fail(self, session: Session, kind: Kind, rid: RepoId) -> Any:
        repo = self._find_repo(session, kind, rid)
        if repo is None:
            what = "adapter" if kind == "adapter" else "base model"
            raise NotFoundError(f"no {what} {rid.repo} in this registry")
        return repo

    def _lock_or_create(self, session: Session, kind: Kind, rid: RepoId, **values: Any) -> Any:
        """The repository row, locked for this transaction; created if new, race-free on both databases."""
        self.db.insert_ignore(session, self._model(kind), namespace=rid.namespace, name=rid.name, revision_count=0,
                              created_at=datetime.now().astimezone(), **values)
        return self._find_repo(session, kind, rid, lock=True)

    def _kind_of(self, rid: RepoId) -> Kind:
        with self.db.read() as session:
            if self._find_repo(session, "adapter", rid) is not None:
                return "adapter"
            if self._find_repo(session, "base", rid) is not None:
                return "base"
        raise NotFoundError(f"no adapter or base model {rid.repo} in this registry")

    def _revision(self, session: Session, kind: Kind, repo: Any, rid: RepoId) -> RevisionRecord:
        ref = rid.ref
        where = self._repo_filter(kind, repo.id)
        if ref.kind == "number":
            rev = session.scalars(select(RevisionRecord).where(
                where, RevisionRecord.number == ref.number)).one_or_none()
            if rev is None:
                gone = session.scalars(select(RevisionDeletionRecord).where(
                    RevisionDeletionRecord.repo == rid.repo, RevisionDeletionRecord.number == ref.number)).first()
                if gone is not None:
                    when = aware(gone.deleted_at).strftime("%Y-%m-%d %H:%M UTC")
                    raise NotFoundError(f"{rid.repo}@{ref.number} was deleted on {when} by "
                                        f"{gone.deleted_by or 'someone'} ({gone.reason})")
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
        rev = session.get(RevisionRecord, found.revision_id)
        assert rev is not None  # a foreign key
        return rev

    def _info(self, session: Session, kind: Kind, repo: Any, rev: RevisionRecord) -> RevisionInfo:
        return self._infos(session, kind, repo, [rev])[0]

    def _infos(self, session: Session, kind: Kind, repo: Any, revs: Sequence[RevisionRecord]) -> list[RevisionInfo]:
        """Revisions of one repository as `RevisionInfo`s in three queries whatever their number (refs, base
        revisions, provenance), so a page of `log` costs the same for 10 revisions as for 10,000."""
        return self._infos_of(session, kind, {repo.id: repo}, revs)

    def _infos_of(self, session: Session, kind: Kind, repos: Mapping[int, Any],
                  revs: Sequence[RevisionRecord]) -> list[RevisionInfo]:
        """`_infos` of revisions of several repositories of one kind (`repos`: by id, every one `revs` belong to),
        in the same three queries."""
        ids = [rev.id for rev in revs]
        refs: dict[int, list[RefRecord]] = defaultdict(list)
        for ref in session.scalars(select(RefRecord).where(any_of(session, RefRecord.revision_id, ids))) if ids else ():
            refs[ref.revision_id].append(ref)
        bases: dict[int, str] = {}
        base_ids = {rev.base_revision_id for rev in revs if rev.base_revision_id is not None} if kind == "adapter" \
            else set()
        if base_ids:
            rows = session.execute(
                select(RevisionRecord.id, RevisionRecord.number, BaseModelRecord.namespace, BaseModelRecord.name)
                .join(BaseModelRecord, BaseModelRecord.id == RevisionRecord.base_model_id)
                .where(RevisionRecord.id.in_(base_ids)))
            bases = {row.id: f"{row.namespace}/{row.name}@{row.number}" for row in rows}
        sources = provenances(session, ids)
        names = {repo_id: f"{repo.namespace}/{repo.name}" for repo_id, repo in repos.items()}
        owner = (lambda rev: rev.adapter_id) if kind == "adapter" else (lambda rev: rev.base_model_id)
        return [RevisionInfo(
            repo=names[owner(rev)], kind=kind, number=rev.number, digest=rev.digest, format=rev.format,
            tags=sorted(r.name for r in refs[rev.id] if r.kind == "tag"),
            branches=sorted(r.name for r in refs[rev.id] if r.kind == "branch"),
            created_at=aware(rev.created_at), message=rev.message, author=rev.author, meta=rev.meta,
            manifest=rev.manifest, base_model=bases.get(rev.base_revision_id) if rev.base_revision_id else None,
            parents=list(rev.parents or []), provenance=sources.get(rev.id, [])) for rev in revs]


def aware(when: datetime) -> datetime:
    """A stored timestamp with its zone: SQLite hands back the UTC it was given without one."""
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def whole(part: RegistryCore) -> Registry:
    """The Registry a mixin is part of: registry/jobs/ and registry/hubs/ take the whole registry."""
    return cast("Registry", part)


def provenance(session: Session, revision_id: int) -> list[dict[str, Any]]:
    """The hub imports a revision came from, oldest first."""
    return provenances(session, [revision_id]).get(revision_id, [])


def provenances(session: Session, revision_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """The hub imports of several revisions in one query: revision id -> its imports, oldest first."""
    ids = list(revision_ids)
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    if not ids:
        return out
    rows = session.scalars(select(ProvenanceRecord).where(any_of(session, ProvenanceRecord.revision_id, ids))
                           .order_by(ProvenanceRecord.id)).all()
    for r in rows:
        out[r.revision_id].append({
            "hub": r.hub, "endpoint": r.endpoint, "repo": r.source_repo, "requested_revision": r.requested_revision,
            "commit": r.source_commit, "subfolder": r.subfolder,
            "imported_at": r.imported_at.isoformat() if r.imported_at else None})
    return out
