"""Deleting revisions: one at a time (`rm --revision`) or by a repository's retention rule, never one that
something still needs.

A revision is needed while a tag or branch points at it, while another revision's lineage names it (a
merge or combination made from it, which `unmerge` reads; an adapter validated against a base revision),
or while a queued or running job names it by number or digest. Deleting one writes its record to
`revision_deletions` (what, when, by whom, why) in the same transaction that removes its row and the rows
that hang off it (derived forms, validation history, provenance); the database's immutability trigger
allows the delete only with that record (migration 0005). Its snapshot folders go with it; its blobs are
reclaimed by the next gc, once no other revision names them. Revision numbers are never reused.
"""
from __future__ import annotations

import builtins
import getpass
import shutil
from datetime import datetime, timedelta
from typing import Any, Iterator

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..api import Kind, RetentionPolicy, RetentionReport, RevisionInfo
from ..db.models import (
    DerivedRecord,
    JobRecord,
    ProvenanceRecord,
    RetentionPolicyRecord,
    RevisionDeletionRecord,
    RevisionRecord,
    ValidationRunRecord,
)
from ..errors import InvalidIdError, RegistryError, RevisionInUseError
from ..ids import parse_id
from .reading import ReadingMixin

#: Job states in which a job may still read the revisions it names.
ACTIVE_JOBS = ("queued", "running")


class RetentionMixin(ReadingMixin):
    """delete_revision, set_retention, retention, apply_retention."""

    def delete_revision(self, repo_id: str, *, reason: str = "rm --revision",
                        deleted_by: str | None = None) -> RevisionInfo:
        """Delete the revision `repo_id` names, on the record; RevisionInUseError names what still needs it."""
        rid = parse_id(repo_id)
        if not rid.explicit_ref:
            raise InvalidIdError(f"name the revision to delete: {rid.repo}@NUMBER (a number or sha256 digest)")
        kind = self._kind_of(rid)
        with self.db.write() as session:
            repo = self._find_repo(session, kind, rid, lock=True) or self._repo_or_fail(session, kind, rid)
            rev = self._revision(session, kind, repo, rid)
            info = self._info(session, kind, repo, rev)
            needs = self._needs(session, kind, info, rev)
            if needs:
                raise RevisionInUseError(
                    f"{info.repo}@{info.number} is still needed by {', '.join(needs)}: move or remove those first "
                    "(a lineage link keeps the revisions a merge or combination was made from, for unmerge)", needs)
            self._delete_revision_rows(session, kind, info, rev, reason, deleted_by)
        self._drop_snapshots(info)
        self._refs_changed()
        return info

    def set_retention(self, repo_id: str, keep_last: int | None, *, keep_tagged: bool = True) -> RetentionPolicy | None:
        """Set (or with None remove) the repository's rule; it is enforced by gc and apply_retention."""
        rid = parse_id(repo_id, allow_ref=False)
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)
                                      or not 1 <= keep_last <= 1_000_000):
            raise RegistryError(f"keep_last must be a whole number from 1 to 1000000, not {keep_last!r}")
        kind = self._kind_of(rid)
        with self.db.write() as session:
            repo = self._repo_or_fail(session, kind, rid)
            row = self._policy_row(session, kind, repo.id)
            if keep_last is None:
                if row is not None:
                    session.delete(row)
                return None
            if row is None:
                row = RetentionPolicyRecord(adapter_id=repo.id if kind == "adapter" else None,
                                            base_model_id=repo.id if kind == "base" else None)
                session.add(row)
            row.keep_last, row.keep_tagged = keep_last, keep_tagged
            row.updated_at = datetime.now().astimezone()
        return RetentionPolicy(rid.repo, keep_last, keep_tagged)

    def retention(self, repo_id: str) -> RetentionPolicy | None:
        """The repository's retention rule, if any."""
        rid = parse_id(repo_id, allow_ref=False)
        kind = self._kind_of(rid)
        with self.db.read() as session:
            repo = self._repo_or_fail(session, kind, rid)
            row = self._policy_row(session, kind, repo.id)
            return None if row is None else RetentionPolicy(rid.repo, row.keep_last, row.keep_tagged)

    def apply_retention(self, repo_id: str | None = None, *, dry_run: bool = False) -> RetentionReport:
        """Delete what the rules do not keep and nothing needs; report the rest with the reason it stays."""
        deleted: builtins.list[str] = []
        kept: builtins.list[str] = []
        for policy in self._policies(repo_id):
            for info in self._beyond_policy(policy):
                name = f"{info.repo}@{info.number}"
                if dry_run:
                    needs = self._needs_now(name)
                    (kept.append(f"{name}: needed by {', '.join(needs)}") if needs else deleted.append(name))
                    continue
                try:
                    self.delete_revision(name, reason=f"retention: keep the last {policy.keep_last}"
                                         + (" and tagged" if policy.keep_tagged else ""))
                except RevisionInUseError as exc:
                    kept.append(f"{name}: needed by {', '.join(exc.needed_by)}")
                else:
                    deleted.append(name)
        return RetentionReport(deleted, kept, dry_run)

    def forget_derived(self, older_than: float | None = None, *, dry_run: bool = False) -> int:
        """Forget recorded conversions made more than `older_than` seconds ago (all with None); gc then reclaims
        their blobs and the next read converts again (to the same bytes: the converters are deterministic)."""
        query = select(DerivedRecord.id)
        if older_than is not None:
            query = query.where(DerivedRecord.created_at < datetime.now().astimezone() - timedelta(seconds=older_than))
        with self.db.write() as session:
            ids = builtins.list(session.scalars(query))
            if ids and not dry_run:
                session.execute(delete(DerivedRecord).where(DerivedRecord.id.in_(ids)))
        return len(ids)

    # ----- the steps -------------------------------------------------------------------------------------

    def _needs(self, session: Session, kind: Kind, info: RevisionInfo, rev: RevisionRecord) -> builtins.list[str]:
        """Everything that still needs the revision, each named (`tag v1`, `revision team/m@2 (lineage)`, `job 7`)."""
        needs = [f"tag {t}" for t in info.tags] + [f"branch {b}" for b in info.branches]
        for row in session.execute(select(RevisionRecord.id, RevisionRecord.adapter_id, RevisionRecord.base_model_id,
                                          RevisionRecord.number, RevisionRecord.parents,
                                          RevisionRecord.base_revision_id)):
            if row.id == rev.id:
                continue
            made_from = any(isinstance(p, dict) and p.get("repo") == info.repo and p.get("number") == info.number
                            and p.get("kind", kind) == kind for p in (row.parents or []))
            if made_from or row.base_revision_id == rev.id:
                other = self._repo_name(session, row)
                needs.append(f"revision {other}@{row.number} ({'lineage' if made_from else 'validated against it'})")
        for job in session.scalars(select(JobRecord).where(JobRecord.status.in_(ACTIVE_JOBS))):
            if any(_names(text, info) for text in _strings(job.params)):
                needs.append(f"job {job.id} ({job.kind}, {job.status})")
        return needs

    def _delete_revision_rows(self, session: Session, kind: Kind, info: RevisionInfo, rev: RevisionRecord,
                              reason: str, deleted_by: str | None) -> None:
        """The record first (the trigger's permit), then what hangs off the revision, then the revision."""
        session.add(RevisionDeletionRecord(revision_id=rev.id, kind=kind, repo=info.repo, number=info.number,
                                           digest=info.digest, reason=reason[:200],
                                           deleted_by=(deleted_by or _user())[:200],
                                           deleted_at=datetime.now().astimezone()))
        session.flush()
        for model in (DerivedRecord, ValidationRunRecord, ProvenanceRecord):
            session.execute(delete(model).where(model.revision_id == rev.id))
        session.execute(delete(RevisionRecord).where(RevisionRecord.id == rev.id))

    def _drop_snapshots(self, info: RevisionInfo) -> None:
        """The revision's snapshot folders, every format (a resolve() memo re-checks its folder exists)."""
        namespace, name = info.repo.split("/", 1)
        parent = self.snapshots.root / namespace / name
        if parent.is_dir():
            for folder in parent.glob(f"r{info.number}-*"):
                shutil.rmtree(folder, ignore_errors=True)

    def _policy_row(self, session: Session, kind: Kind, repo_id: int) -> RetentionPolicyRecord | None:
        column = RetentionPolicyRecord.adapter_id if kind == "adapter" else RetentionPolicyRecord.base_model_id
        return session.scalars(select(RetentionPolicyRecord).where(column == repo_id)).one_or_none()

    def _policies(self, repo_id: str | None) -> Iterator[RetentionPolicy]:
        if repo_id is not None:
            policy = self.retention(repo_id)
            if policy is None:
                raise RegistryError(f"{parse_id(repo_id, allow_ref=False).repo} has no retention rule "
                                    "(swiftreg retention set NAMESPACE/NAME --keep-last N)")
            yield policy
            return
        with self.db.read() as session:
            rows = session.scalars(select(RetentionPolicyRecord).order_by(RetentionPolicyRecord.id)).all()
            policies = [RetentionPolicy(self._repo_name(session, row), row.keep_last, row.keep_tagged) for row in rows]
        yield from policies

    def _beyond_policy(self, policy: RetentionPolicy) -> builtins.list[RevisionInfo]:
        """The revisions the rule alone would delete: past the newest `keep_last`, untagged if `keep_tagged`."""
        revisions = self.log(policy.repo)  # newest first
        return [info for info in revisions[policy.keep_last:] if not (policy.keep_tagged and info.tags)]

    def _needs_now(self, repo_id: str) -> builtins.list[str]:
        """What needs the revision `repo_id` names, read in a transaction of its own (a dry run)."""
        rid = parse_id(repo_id)
        kind = self._kind_of(rid)
        with self.db.read() as session:
            repo = self._repo_or_fail(session, kind, rid)
            rev = self._revision(session, kind, repo, rid)
            return self._needs(session, kind, self._info(session, kind, repo, rev), rev)

    def _repo_name(self, session: Session, row: Any) -> str:
        """`namespace/name` of the repository a revision or policy row belongs to."""
        kind: Kind = "adapter" if row.adapter_id is not None else "base"
        repo = session.get(self._model(kind), row.adapter_id if kind == "adapter" else row.base_model_id)
        assert repo is not None  # a foreign key
        return f"{repo.namespace}/{repo.name}"


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _names(text: str, info: RevisionInfo) -> bool:
    """Whether `text` names the revision as a pinned id (`ns/name@N` or `ns/name@sha256:...`)."""
    if "@" not in text or not text.startswith(info.repo + "@"):
        return False
    try:
        rid = parse_id(text)
    except InvalidIdError:
        return False
    ref = rid.ref
    return (ref.kind == "number" and ref.number == info.number) or (
        ref.kind == "digest" and info.digest.startswith(ref.value))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a container: not worth failing a deletion for
        return "unknown"
