"""Tags and branches: pointing them at revisions, moving them (branches, `main` included, to any one), removing them.

Revisions are immutable; they are deleted only on the record (retention.py), never by a ref change.
Every change touches the refs stamp so each process's resolve() memo drops its answers for mutable refs.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import rules
from ..api import Kind, RevisionInfo
from ..db.models import RefRecord, RevisionRecord
from ..errors import NotFoundError, RefExistsError, RegistryError
from ..ids import check_tag, parse_id
from .core import RegistryCore
from .events import ref_fields, repo_event, revision_fields


class RefsMixin(RegistryCore):
    """tag, untag, remove_ref, and the one place a ref row is written."""

    def tag(self, repo_id: str, tag: str, *, force: bool = False) -> RevisionInfo:
        """Point tag `tag` at the revision `repo_id` names (a tag moves only with `force`)."""
        return self._point(repo_id, tag, "tag", force=force)

    def branch(self, repo_id: str, branch: str) -> RevisionInfo:
        """Point branch `branch` at the revision `repo_id` names, creating or moving it (`main` included).

        Branches move by nature, so no force is needed; what keeps this from being an accident is that
        the revision is named explicitly. Like every ref change it is one transaction and touches the
        refs stamp, so every resolve() memo and server sees the branch's new revision.
        """
        return self._point(repo_id, branch, "branch", force=True)

    def _point(self, repo_id: str, name: str, kind_of_ref: str, *, force: bool) -> RevisionInfo:
        """Create or move the tag or branch `name` onto the revision `repo_id` names, in one transaction."""
        rid = parse_id(repo_id)
        check_tag(name)
        kind = self._kind_of(rid)
        with self.db.write() as session:
            repo = self._find_repo(session, kind, rid, lock=True) or self._repo_or_fail(session, kind, rid)
            rev = self._revision(session, kind, repo, rid)
            change = self._set_ref(session, kind, repo, name, kind_of_ref, rev, force=force)
            session.flush()
            info = self._info(session, kind, repo, rev)
            if change is not None:  # tag.created / tag.moved (branches too: `ref.kind` says which)
                repo_event(session, f"tag.{change[0]}", kind, repo, {
                    **ref_fields(name, kind_of_ref, change[1], rev), **revision_fields(info)})
        self._refs_changed()
        return info

    def untag(self, repo_id: str, tag: str) -> None:
        """Remove a tag (never a branch)."""
        self._delete_ref(repo_id, tag, only_tags=True)

    def remove_ref(self, repo_id: str, *, force: bool = False) -> None:
        """`rm ns/name@ref`: drop a tag or branch; revisions stay (they are immutable)."""
        rid = rules.ref_to_remove(repo_id, force=force)
        self._delete_ref(repo_id, rid.ref.value, only_tags=False)

    def _delete_ref(self, repo_id: str, name: str, *, only_tags: bool) -> None:
        rid = parse_id(repo_id)
        kind = self._kind_of(rid)
        with self.db.write() as session:
            repo = self._find_repo(session, kind, rid, lock=True) or self._repo_or_fail(session, kind, rid)
            ref = session.scalars(select(RefRecord).where(
                self._ref_filter(kind, repo.id), RefRecord.name == name)).one_or_none()
            if ref is None:
                raise NotFoundError(f"{rid.repo} has no tag or branch {name!r}")
            if only_tags and ref.kind != "tag":
                raise RegistryError(f"{rid.repo}@{name} is a {ref.kind}, not a tag")
            old = session.get(RevisionRecord, ref.revision_id)
            session.delete(ref)
            repo_event(session, "tag.deleted", kind, repo, {**ref_fields(name, ref.kind, old, None),
                                                            "head": old.digest if old else None})
        self._refs_changed()

    def _set_ref(self, session: Session, kind: Kind, repo: Any, name: str, ref_kind: str,
                 rev: RevisionRecord, *, force: bool) -> tuple[str, RevisionRecord | None] | None:
        """Create or move ref `name` inside the caller's transaction, refusing what the ref rules refuse.

        What changed, for the events: ("created", None), ("moved", the revision it left), or None (it was there).
        """
        ref = session.scalars(select(RefRecord).where(
            self._ref_filter(kind, repo.id), RefRecord.name == name)).one_or_none()
        if ref is None:
            session.add(RefRecord(adapter_id=repo.id if kind == "adapter" else None,
                                  base_model_id=repo.id if kind == "base" else None,
                                  name=name, kind=ref_kind, revision_id=rev.id))
            return ("created", None)
        if ref.kind != ref_kind:
            hint = (f"; move a branch with `swiftreg branch {repo.namespace}/{repo.name}@REVISION {name}`"
                    if ref.kind == "branch" else "")
            raise RefExistsError(f"{repo.namespace}/{repo.name}@{name} is a {ref.kind}, not a {ref_kind}{hint}")
        if ref.revision_id == rev.id:
            return None
        if ref_kind == "tag" and not force:
            current = session.get(RevisionRecord, ref.revision_id)
            raise rules.tag_taken(name, f"{repo.namespace}/{repo.name}", current.number)  # type: ignore[union-attr]
        old = session.get(RevisionRecord, ref.revision_id)
        ref.revision_id = rev.id
        ref.updated_at = datetime.now().astimezone()
        return ("moved", old)
