"""Read queries for browsing a large registry (the web pages): searches, pages of revisions, storage use.

Each function is a handful of bounded queries whatever the registry's size: lists are paged by keyset
(`after`: the last row id of the previous page, newest first), and what a page shows of many rows
(refs, provenance, the latest validation verdict) is fetched for the whole page at once, never per row.
`namespaces` (a token's limit) is applied in the query itself, so nothing outside it is ever read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import aliased

from ..db.models import (
    AdapterRecord, BaseModelRecord, ProvenanceRecord, RefRecord, RevisionRecord, ValidationRunRecord,
)
from ..errors import NotFoundError
from .core import aware

if TYPE_CHECKING:
    from . import Registry

#: Validation states a search filters by: the verdict of a revision's latest recorded check.
VALIDATION_STATES = ("passed", "failed", "none")
PAGE = 25


@dataclass(frozen=True)
class RevisionRow:
    """One revision as a list shows it."""

    id: int
    repo: str
    kind: Literal["adapter", "base"]
    number: int
    digest: str
    format: str
    tuner_type: str | None
    base_model: str | None
    created_at: datetime
    author: str | None
    message: str | None
    meta: dict[str, Any]
    size: int
    tags: list[str] = field(default_factory=list)
    branches: list[str] = field(default_factory=list)
    validation: str = "none"           # passed | failed | none: the latest recorded check
    provenance: list[dict[str, Any]] = field(default_factory=list)
    parents: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    next_after: int | None             # pass as `after` for the next page; None on the last one


@dataclass(frozen=True)
class Filters:
    q: str | None = None               # a substring of namespace/name
    base: str | None = None            # ns/name of a base model
    tuner: str | None = None
    tag: str | None = None             # a tag or branch name
    format: str | None = None
    validation: str | None = None      # passed | failed | none
    namespace: str | None = None


def _latest_verdict() -> Any:
    """The `passed` of a revision's latest validation run (NULL when it has none), as a correlated subquery."""
    return (select(ValidationRunRecord.passed).where(ValidationRunRecord.revision_id == RevisionRecord.id)
            .order_by(ValidationRunRecord.id.desc()).limit(1).correlate(RevisionRecord).scalar_subquery())


def _state(value: Any) -> str:
    return "none" if value is None else ("passed" if value else "failed")


def _size(manifest: dict[str, Any] | None) -> int:
    return sum(int(f.get("size", 0)) for f in (manifest or {}).get("files", []))


def _decorate(reg: Registry, rows: list[RevisionRow], with_provenance: bool = False) -> list[RevisionRow]:
    """Fill tags, branches (and provenance) of a page of rows in one query each."""
    if not rows:
        return rows
    ids = [r.id for r in rows]
    tags: dict[int, list[str]] = {}
    branches: dict[int, list[str]] = {}
    prov: dict[int, list[dict[str, Any]]] = {}
    with reg.db.read() as session:
        for rev_id, name, kind in session.execute(select(RefRecord.revision_id, RefRecord.name, RefRecord.kind)
                                                  .where(RefRecord.revision_id.in_(ids)).order_by(RefRecord.name)):
            (tags if kind == "tag" else branches).setdefault(rev_id, []).append(name)
        if with_provenance:
            for p in session.scalars(select(ProvenanceRecord).where(ProvenanceRecord.revision_id.in_(ids))
                                     .order_by(ProvenanceRecord.id)):
                prov.setdefault(p.revision_id, []).append(
                    {"hub": p.hub, "endpoint": p.endpoint, "repo": p.source_repo, "commit": p.source_commit,
                     "requested_revision": p.requested_revision, "subfolder": p.subfolder})
    return [RevisionRow(**{**r.__dict__, "tags": tags.get(r.id, []), "branches": branches.get(r.id, []),
                           "provenance": prov.get(r.id, [])}) for r in rows]


def _adapter_query() -> Any:
    base = aliased(BaseModelRecord)
    return (select(RevisionRecord.id, AdapterRecord.namespace, AdapterRecord.name, RevisionRecord.number,
                   RevisionRecord.digest, RevisionRecord.format, AdapterRecord.tuner_type, base.namespace,
                   base.name, RevisionRecord.created_at, RevisionRecord.author, RevisionRecord.message,
                   RevisionRecord.meta, RevisionRecord.manifest, _latest_verdict(), RevisionRecord.parents)
            .join(AdapterRecord, RevisionRecord.adapter_id == AdapterRecord.id)
            .outerjoin(base, AdapterRecord.base_model_id == base.id))


def _adapter_row(t: Any) -> RevisionRow:
    (rid, ns, name, number, digest, fmt, tuner, bns, bname, created, author, message, meta, manifest,
     verdict, parents) = t
    return RevisionRow(rid, f"{ns}/{name}", "adapter", number, digest, fmt, tuner,
                       f"{bns}/{bname}" if bns else None, aware(created), author, message,
                       {k: v for k, v in (meta or {}).items() if k != "adapters"}, _size(manifest),
                       validation=_state(verdict), parents=list(parents or []))


def _split(repo: str) -> tuple[str, str]:
    ns, _, name = repo.partition("/")
    return ns, name


def search(reg: Registry, filters: Filters, *, namespaces: list[str] | None = None, after: int | None = None,
           limit: int = PAGE) -> Page:
    """Adapter revisions matching `filters`, newest first, `limit` a page (keyset: `after` a row id)."""
    query = _adapter_query()
    where: list[ColumnElement[bool]] = []
    if namespaces is not None:
        where.append(AdapterRecord.namespace.in_(namespaces))
    f = filters
    if f.namespace:
        where.append(AdapterRecord.namespace == f.namespace)
    if f.q:
        q = f.q.strip()
        if "/" in q:
            ns, name = _split(q)
            where.append(and_(AdapterRecord.namespace.contains(ns, autoescape=True),
                              AdapterRecord.name.contains(name, autoescape=True)))
        else:
            where.append(or_(AdapterRecord.namespace.contains(q, autoescape=True),
                             AdapterRecord.name.contains(q, autoescape=True)))
    if f.base:
        ns, name = _split(f.base.split("@")[0])
        ids = select(BaseModelRecord.id).where(BaseModelRecord.namespace == ns, BaseModelRecord.name == name)
        where.append(AdapterRecord.base_model_id.in_(ids))
    if f.tuner:
        where.append(AdapterRecord.tuner_type == f.tuner)
    if f.format:
        where.append(RevisionRecord.format == f.format)
    if f.tag:
        where.append(RevisionRecord.id.in_(select(RefRecord.revision_id).where(RefRecord.name == f.tag)))
    if f.validation in ("passed", "failed"):
        where.append(_latest_verdict() == (f.validation == "passed"))
    elif f.validation == "none":
        where.append(~select(ValidationRunRecord.id).where(
            ValidationRunRecord.revision_id == RevisionRecord.id).exists())
    if after is not None:
        where.append(RevisionRecord.id < after)
    with reg.db.read() as session:
        found = session.execute(query.where(*where).order_by(RevisionRecord.id.desc()).limit(limit + 1)).all()
    rows = [_adapter_row(t) for t in found[:limit]]
    return Page(_decorate(reg, rows), rows[-1].id if len(found) > limit else None)


def facets(reg: Registry, namespaces: list[str] | None = None) -> dict[str, list[str]]:
    """The values the search filters offer: tuner types, formats, base models (distinct, small lists)."""
    with reg.db.read() as session:
        tuner_q = select(AdapterRecord.tuner_type).distinct()
        bases_q = select(BaseModelRecord.namespace, BaseModelRecord.name).order_by(
            BaseModelRecord.namespace, BaseModelRecord.name).limit(200)
        if namespaces is not None:
            tuner_q = tuner_q.where(AdapterRecord.namespace.in_(namespaces))
            bases_q = bases_q.where(BaseModelRecord.namespace.in_(namespaces))
        tuners = sorted(t for t in session.scalars(tuner_q) if t)
        bases = [f"{ns}/{name}" for ns, name in session.execute(bases_q)]
        formats = sorted(session.scalars(select(RevisionRecord.format).distinct()))
    return {"tuners": tuners, "formats": formats, "bases": bases, "validation": list(VALIDATION_STATES)}


def namespaces_summary(reg: Registry, namespaces: list[str] | None = None) -> list[dict[str, Any]]:
    """Per namespace: its adapters, base models and revisions (two GROUP BY queries)."""
    out: dict[str, dict[str, Any]] = {}
    with reg.db.read() as session:
        for model, key in ((AdapterRecord, "adapters"), (BaseModelRecord, "bases")):
            query = select(model.namespace, func.count(model.id), func.sum(model.revision_count)).group_by(
                model.namespace)
            if namespaces is not None:
                query = query.where(model.namespace.in_(namespaces))
            for ns, count, revisions in session.execute(query):
                entry = out.setdefault(ns, {"namespace": ns, "adapters": 0, "bases": 0, "revisions": 0})
                entry[key] = count
                entry["revisions"] += int(revisions or 0)
    return [out[k] for k in sorted(out)]


def repository(reg: Registry, repo: str) -> dict[str, Any]:
    """An adapter's or base model's row: kind, tuner type, description, base model, revision count."""
    ns, name = _split(repo)
    with reg.db.read() as session:
        a = session.scalars(select(AdapterRecord).where(AdapterRecord.namespace == ns,
                                                        AdapterRecord.name == name)).one_or_none()
        if a is not None:
            base = a.base_model
            return {"repo": repo, "kind": "adapter", "id": a.id, "tuner_type": a.tuner_type,
                    "description": a.description, "revisions": a.revision_count,
                    "base_model": f"{base.namespace}/{base.name}" if base is not None else None,
                    "created_at": aware(a.created_at)}
        b = session.scalars(select(BaseModelRecord).where(BaseModelRecord.namespace == ns,
                                                          BaseModelRecord.name == name)).one_or_none()
        if b is not None:
            return {"repo": repo, "kind": "base", "id": b.id, "architecture": b.architecture, "source": b.source,
                    "revisions": b.revision_count, "created_at": aware(b.created_at), "fingerprint": b.fingerprint}
    raise NotFoundError(f"no adapter or base model {repo} in this registry")


def revisions(reg: Registry, repo: dict[str, Any], *, after: int | None = None, limit: int = 50) -> Page:
    """A page of a repository's revisions (from `repository`), newest first, with refs and provenance."""
    if repo["kind"] == "adapter":
        query = _adapter_query().where(RevisionRecord.adapter_id == repo["id"])
        if after is not None:
            query = query.where(RevisionRecord.id < after)
        with reg.db.read() as session:
            found = session.execute(query.order_by(RevisionRecord.id.desc()).limit(limit + 1)).all()
        rows = [_adapter_row(t) for t in found[:limit]]
    else:
        query = select(RevisionRecord).where(RevisionRecord.base_model_id == repo["id"])
        if after is not None:
            query = query.where(RevisionRecord.id < after)
        with reg.db.read() as session:
            found = list(session.scalars(query.order_by(RevisionRecord.id.desc()).limit(limit + 1)))
            rows = [RevisionRow(r.id, repo["repo"], "base", r.number, r.digest, r.format, None, None,
                                aware(r.created_at), r.author, r.message, dict(r.meta or {}), _size(r.manifest),
                                parents=list(r.parents or [])) for r in found[:limit]]
    return Page(_decorate(reg, rows, with_provenance=True), rows[-1].id if len(found) > limit else None)


def adapters_of_base(reg: Registry, base_id: int, *, namespaces: list[str] | None = None,
                     after: int | None = None, limit: int = 100) -> Page:
    """The adapters that name a base model (with their main revision number), by id, a page at a time."""
    main = aliased(RefRecord)
    rev = aliased(RevisionRecord)
    query = (select(AdapterRecord.id, AdapterRecord.namespace, AdapterRecord.name, AdapterRecord.tuner_type,
                    AdapterRecord.revision_count, rev.number, rev.created_at)
             .outerjoin(main, and_(main.adapter_id == AdapterRecord.id, main.name == "main"))
             .outerjoin(rev, rev.id == main.revision_id)
             .where(AdapterRecord.base_model_id == base_id))
    if namespaces is not None:
        query = query.where(AdapterRecord.namespace.in_(namespaces))
    if after is not None:
        query = query.where(AdapterRecord.id > after)
    with reg.db.read() as session:
        found = session.execute(query.order_by(AdapterRecord.id).limit(limit + 1)).all()
    rows = [{"repo": f"{ns}/{name}", "tuner_type": tuner, "revisions": count, "main": number,
             "updated_at": aware(created) if created else None}
            for _, ns, name, tuner, count, number, created in found[:limit]]
    return Page(rows, found[limit - 1][0] if len(found) > limit else None)


# ----- storage per namespace (admin) ------------------------------------------------------------------------

_storage_memo: dict[str, tuple[tuple[Any, ...], list[dict[str, Any]]]] = {}


def storage(reg: Registry) -> list[dict[str, Any]]:
    """Per namespace: revisions, distinct blobs and their bytes (a blob shared by two namespaces counts in
    each), and bytes as pushed (every revision's files). Recomputed only when revisions changed."""
    with reg.db.read() as session:
        stamp = tuple(session.execute(select(func.count(RevisionRecord.id), func.max(RevisionRecord.id))).one())
        memo = _storage_memo.get(reg.database_url)
        if memo is not None and memo[0] == stamp:
            return memo[1]
        per: dict[str, dict[str, Any]] = {}
        blobs: dict[str, dict[str, int]] = {}
        owner = func.coalesce(AdapterRecord.namespace, BaseModelRecord.namespace)
        query = (select(owner, RevisionRecord.manifest)
                 .outerjoin(AdapterRecord, RevisionRecord.adapter_id == AdapterRecord.id)
                 .outerjoin(BaseModelRecord, RevisionRecord.base_model_id == BaseModelRecord.id))
        for owner_ns, manifest in session.execute(query):
            ns = str(owner_ns)
            entry = per.setdefault(ns, {"namespace": ns, "revisions": 0, "pushed_bytes": 0})
            entry["revisions"] += 1
            files: list[dict[str, Any]] = (manifest or {}).get("files", []) if isinstance(manifest, dict) else []
            for f in files:
                entry["pushed_bytes"] += int(f.get("size", 0))
                blobs.setdefault(ns, {})[f["sha256"]] = int(f.get("size", 0))
    out = [{**per[ns], "blobs": len(blobs.get(ns, {})), "stored_bytes": sum(blobs.get(ns, {}).values())}
           for ns in sorted(per)]
    _storage_memo[reg.database_url] = (stamp, out)
    return out
