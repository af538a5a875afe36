"""Reading revisions: show, log, list, and materialising them (resolve, pull, manifest, verify).

A revision is stored once in the format it was pushed in; another format is derived on first request
(converted, its blobs stored, recorded in `derived`) and reused from then on.
"""
from __future__ import annotations

import builtins
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

import converters

from .. import rules
from ..api import Kind, RepoInfo, RevisionInfo
from ..db.models import BaseModelRecord, DerivedRecord, RefRecord, RevisionRecord
from ..db.queries import any_of, numbers_in
from ..errors import NotFoundError
from ..ids import DEFAULT_REF, parse_id
from ..manifest import Manifest, build_manifest, collect_files
from ..snapshots import mark_used
from .blobs import BlobsMixin
from .core import aware, provenances

#: Bumped whenever the converters could write different bytes for the same input, so derived
#: conversions recorded by an older swiftreg are redone rather than reused.
CONVERTER_VERSION = "1"


class ReadingMixin(BlobsMixin):
    """show, log, list, resolve, pull, manifest, verify."""

    def show(self, repo_id: str) -> RevisionInfo:
        """The revision an id names (`main` when it names no ref)."""
        rid = parse_id(repo_id)
        kind = self._kind_of(rid)
        with self.db.read() as session:
            repo = self._repo_or_fail(session, kind, rid)
            return self._info(session, kind, repo, self._revision(session, kind, repo, rid))

    def show_many(self, repo_ids: Sequence[str]) -> builtins.list[RevisionInfo]:
        """`show` of many ids, in order: the numbered revisions are read together, in a fixed number of queries
        for the whole batch however many repositories it spans (what validate-all's batches need on PostgreSQL,
        where every query is a round trip); tags, branches and missing numbers go through `show` itself, so
        every refusal is `show`'s."""
        wanted: dict[tuple[str, str], set[int]] = {}
        parsed = [parse_id(repo_id) for repo_id in repo_ids]
        for rid in parsed:
            if rid.ref.kind == "number":
                wanted.setdefault((rid.namespace, rid.name), set()).add(rid.ref.number)
        found: dict[tuple[str, int], RevisionInfo] = {}
        if wanted:
            with self.db.read() as session:  # one transaction for the batch
                for kind in ("adapter", "base"):
                    pending = {key: numbers for key, numbers in wanted.items()
                               if not any((f"{key[0]}/{key[1]}", n) in found for n in numbers)}
                    if pending:
                        found.update(self._numbered(session, kind, pending))
        return [found.get((f"{rid.namespace}/{rid.name}", rid.ref.number)) or self.show(repo_id)
                if rid.ref.kind == "number" else self.show(repo_id) for rid, repo_id in zip(parsed, repo_ids)]

    def _numbered(self, session: Session, kind: Kind,
                  wanted: dict[tuple[str, str], set[int]]) -> dict[tuple[str, int], RevisionInfo]:
        """The revisions `wanted` names ((namespace, name) -> numbers) that exist among repositories of `kind`, by
        (`ns/name`, number): the repositories in one query, their revisions in one, then `_infos_of`'s three."""
        model = self._model(kind)
        named = select(model).where(any_of(session, model.namespace, {ns for ns, _ in wanted}),
                                    any_of(session, model.name, {name for _, name in wanted}))
        rows: Sequence[Any] = session.scalars(named).all()
        repos = {repo.id: repo for repo in rows if (repo.namespace, repo.name) in wanted}
        if not repos:
            return {}
        numbers = set().union(*wanted.values())
        column = RevisionRecord.adapter_id if kind == "adapter" else RevisionRecord.base_model_id

        def asked(rev: RevisionRecord) -> bool:
            repo = repos[rev.adapter_id if kind == "adapter" else rev.base_model_id]
            return rev.number in wanted[(repo.namespace, repo.name)]

        revs = [rev for rev in session.scalars(select(RevisionRecord).where(
            any_of(session, column, repos), numbers_in(RevisionRecord.number, numbers))) if asked(rev)]
        return {(info.repo, info.number): info for info in self._infos_of(session, kind, repos, revs)}

    def log(self, repo_id: str, *, limit: int | None = None, after: int | None = None) -> builtins.list[RevisionInfo]:
        """The revisions of a repository, newest first: all of them, or the `limit` numbered below `after`
        (keyset pagination: a page costs the same few queries at any depth of history)."""
        rid = rules.log_target(repo_id)
        limit, after = rules.page(limit, rules.after_number(after))
        kind = self._kind_of(rid)
        with self.db.read() as session:
            repo = self._repo_or_fail(session, kind, rid)
            query = select(RevisionRecord).where(self._repo_filter(kind, repo.id)) \
                .order_by(RevisionRecord.number.desc())
            if after is not None:
                query = query.where(RevisionRecord.number < after)
            if limit is not None:
                query = query.limit(limit)
            return self._infos(session, kind, repo, session.scalars(query).all())

    def list(self, namespace: str | None = None, *, limit: int | None = None,
             after: str | None = None) -> builtins.list[RepoInfo]:
        """Repositories (of one namespace): adapters first, then base models, each by namespace and name; all of
        them, or the `limit` that follow the cursor `after` (`ns/name` for an adapter, `base:ns/name` for a base
        model: what `RepoInfo.cursor` gives). Five queries per kind on the page, whatever its length."""
        return self.list_visible([namespace] if namespace else None, limit=limit, after=after)

    def list_visible(self, namespaces: Sequence[str] | None, *, limit: int | None = None,
                     after: str | None = None) -> builtins.list[RepoInfo]:
        """`list` restricted to `namespaces` (None: every one): the server's listing for a token that may read
        only some, filtered in the query so that its pages are full."""
        limit, cursor = rules.page(limit, after and rules.parse_cursor(after))
        kinds: tuple[Kind, ...] = ("adapter", "base")
        out: builtins.list[RepoInfo] = []
        with self.db.read() as session:
            for kind in kinds:
                if cursor is not None and kinds.index(kind) < kinds.index(cursor[0]):
                    continue
                if limit is not None and len(out) >= limit:
                    break
                model = self._model(kind)
                query = select(model).order_by(model.namespace, model.name)
                if namespaces is not None:
                    query = query.where(model.namespace.in_(builtins.list(namespaces)))
                if cursor is not None and cursor[0] == kind:
                    query = query.where(tuple_(model.namespace, model.name) > tuple_(*cursor[1:]))
                if limit is not None:
                    query = query.limit(limit - len(out))
                out.extend(self._repo_infos(session, kind, session.scalars(query).all()))
        return out

    def _repo_infos(self, session: Session, kind: Kind, repos: Sequence[Any]) -> builtins.list[RepoInfo]:
        """Repositories of one kind as `RepoInfo`s in four queries whatever their number."""
        if not repos:
            return []
        ids = [repo.id for repo in repos]
        rev_repo = RevisionRecord.adapter_id if kind == "adapter" else RevisionRecord.base_model_id
        ref_repo = RefRecord.adapter_id if kind == "adapter" else RefRecord.base_model_id
        mains = {row.repo: (row.id, row.number) for row in session.execute(
            select(ref_repo.label("repo"), RevisionRecord.id, RevisionRecord.number)
            .join(RevisionRecord, RevisionRecord.id == RefRecord.revision_id)
            .where(ref_repo.in_(ids), RefRecord.name == DEFAULT_REF))}
        # the newest revision is the highest-numbered one: found through the (repository, number) index, so
        # the revisions' rows (manifests and all) are read only for the one per repository that is shown
        newest = select(rev_repo.label("repo"), func.max(RevisionRecord.number).label("number")) \
            .where(rev_repo.in_(ids)).group_by(rev_repo).subquery()
        updated = {row.repo: row.created_at for row in session.execute(
            select(newest.c.repo, RevisionRecord.created_at)
            .join(RevisionRecord, (rev_repo == newest.c.repo) & (RevisionRecord.number == newest.c.number)))}
        bases: dict[int, str] = {}
        base_ids = {repo.base_model_id for repo in repos if getattr(repo, "base_model_id", None) is not None}
        if base_ids:
            bases = {b.id: f"{b.namespace}/{b.name}"
                     for b in session.scalars(select(BaseModelRecord).where(BaseModelRecord.id.in_(base_ids)))}
        sources = provenances(session, [main[0] for main in mains.values()])
        out = []
        for repo in repos:
            main = mains.get(repo.id)
            found = sources.get(main[0], []) if main else []
            base_id = getattr(repo, "base_model_id", None)
            out.append(RepoInfo(f"{repo.namespace}/{repo.name}", kind, getattr(repo, "tuner_type", None),
                                repo.revision_count, main[1] if main else None,
                                aware(updated[repo.id]) if repo.id in updated else None,
                                bases.get(base_id) if base_id is not None else None, found[0] if found else None))
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
        with self.db.read() as session:
            kind: Kind = "adapter"
            repo = self._find_repo(session, "adapter", rid)
            if repo is None:
                kind, repo = "base", self._find_repo(session, "base", rid)
            if repo is None:
                raise NotFoundError(f"no adapter or base model {rid.repo} in this registry")
            rev = self._revision(session, kind, repo, rid)
            rev_id, number, digest, stored_format, manifest = rev.id, rev.number, rev.digest, rev.format, rev.manifest
        target = rules.served_format(rid.repo, kind, stored_format, format)
        folder = self.snapshots.folder(rid.namespace, rid.name, number, target, digest)
        immutable = rid.ref.kind in ("number", "digest")
        if folder.is_dir():
            mark_used(folder)
        else:
            folder = self.snapshots.materialise(
                folder, lambda: self._manifest_for(rev_id, manifest, stored_format, target), self._link_blob)
        if target == stored_format:
            self.snapshots.remember_stored(folder, number)
        return folder, immutable

    def pull(self, repo_id: str, output: Path | str | None = None, format: str | None = None, *,
             overwrite: bool = False) -> Path:
        """Materialise a revision; with `output`, copy it there (atomically) and return that path."""
        return rules.pulled(self.resolve(repo_id, format), output, overwrite=overwrite)

    def manifest(self, repo_id: str, format: str | None = None) -> Manifest:
        """The files of `repo_id`'s revision in `format` (stored format by default), copying no file.

        A conversion to another format is derived once and recorded, exactly as resolve() does.
        """
        rid = parse_id(repo_id)
        kind = self._kind_of(rid)
        with self.db.read() as session:
            rev = self._revision(session, kind, self._repo_or_fail(session, kind, rid), rid)
            rev_id, stored, manifest = rev.id, rev.format, rev.manifest
        return self._manifest_for(rev_id, manifest, stored, rules.served_format(rid.repo, kind, stored, format))

    def derived_revision(self, repo_id: str, format: str, digest_prefix: str) -> int | None:
        """The number of the adapter revision of `repo_id` whose form in `format` was already derived with
        this converter version and has a manifest digest starting with `digest_prefix` (hex); None if none.

        It converts nothing: a hub commit id of a derived form can only have been handed out after that
        form was derived and recorded, so an unknown commit id costs one query, never a conversion.
        """
        rid = parse_id(repo_id, allow_ref=False)
        if not digest_prefix or not all(c in "0123456789abcdef" for c in digest_prefix):
            return None
        with self.db.read() as session:
            repo = self._find_repo(session, "adapter", rid)
            if repo is None:
                return None
            numbers = session.scalars(
                select(RevisionRecord.number).join(DerivedRecord, DerivedRecord.revision_id == RevisionRecord.id)
                .where(self._repo_filter("adapter", repo.id), DerivedRecord.target_format == format,
                       DerivedRecord.converter_version == CONVERTER_VERSION,
                       DerivedRecord.digest.startswith(f"sha256:{digest_prefix}", autoescape=True))
                .order_by(RevisionRecord.number.desc())).all()
        return numbers[0] if numbers else None

    def verify(self, repo_id: str) -> builtins.list[str]:
        """Digests of the revision's blobs whose stored bytes no longer match, or that are gone (quarantined
        or deleted): empty when all is well. A blob found corrupt now is quarantined like on any read."""
        info = self.show(repo_id)
        return [f["sha256"] for f in info.manifest["files"] if self.check_blob(f["sha256"]) != "verified"]

    def _manifest_for(self, rev_id: int, manifest: dict[str, Any], stored: str, target: str) -> Manifest:
        if target == stored:
            return Manifest.from_json(manifest)
        with self.db.read() as session:
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
            one_pass = self._one_pass(None)
            manifest = build_manifest(files, hash_file=one_pass)
            self._store_files(files, manifest, None, one_pass)
        with self.db.write() as session:
            self.db.insert_ignore(session, DerivedRecord, revision_id=rev_id, target_format=target,
                                  converter_version=CONVERTER_VERSION, digest=manifest.digest,
                                  manifest=manifest.to_json(), created_at=datetime.now().astimezone())
        return manifest
