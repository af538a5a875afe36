"""Registries grown to team scale by copying rows (tests/test_listings.py, bench/scale.py).

A listing's cost depends on the rows it reads, not on how they came, so history is grown by copying a pushed
revision's database rows (new numbers and digests) instead of thousands of pushes: every 10th copy is tagged
and every 7th given a provenance record, so every per-row lookup a listing makes has rows to find.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from registry.db.models import AdapterRecord, ProvenanceRecord, RefRecord, RevisionRecord

if TYPE_CHECKING:
    from registry import Registry


def grow_deep(reg: Registry, repo: str, total: int) -> None:
    """Copy `repo`'s newest revision row until it has `total` revisions."""
    ns, name = repo.split("/")
    with reg.db.write() as session:
        adapter = session.scalars(select(AdapterRecord).where(AdapterRecord.namespace == ns,
                                                              AdapterRecord.name == name)).one()
        last = session.scalars(select(RevisionRecord).where(RevisionRecord.adapter_id == adapter.id)
                               .order_by(RevisionRecord.number.desc())).first()
        assert last is not None
        when = datetime.now(timezone.utc) - timedelta(days=1)
        for number in range(adapter.revision_count + 1, total + 1):
            rev = RevisionRecord(adapter_id=adapter.id, number=number, digest=f"sha256:{number:064x}",
                                 format=last.format, manifest=last.manifest, meta=last.meta, parents=[],
                                 message=f"copy {number}", author="bench", created_at=when + timedelta(seconds=number))
            session.add(rev)
            if number % 10 == 0 or number % 7 == 0:
                session.flush()
            if number % 10 == 0:
                session.add(RefRecord(adapter_id=adapter.id, name=f"v{number}", kind="tag", revision_id=rev.id))
            if number % 7 == 0:
                session.add(ProvenanceRecord(revision_id=rev.id, hub="hf", endpoint="https://huggingface.co",
                                             source_repo="org/x", requested_revision="main", source_commit="c" * 40,
                                             subfolder="", imported_at=when))
        session.execute(update(AdapterRecord).where(AdapterRecord.id == adapter.id).values(revision_count=total))


def grow_wide(reg: Registry, namespace: str, model_repo: str, total: int) -> None:
    """Add one-revision repositories (copies of `model_repo`'s revision) to `namespace` until it holds `total`."""
    ns, name = model_repo.split("/")
    with reg.db.write() as session:
        first = session.scalars(select(AdapterRecord).where(AdapterRecord.namespace == ns,
                                                            AdapterRecord.name == name)).one()
        rev = session.scalars(select(RevisionRecord).where(RevisionRecord.adapter_id == first.id)).one()
        have = len(session.scalars(select(AdapterRecord.id).where(AdapterRecord.namespace == namespace)).all())
        for i in range(have, total):
            repo = AdapterRecord(namespace=namespace, name=f"a{i:05d}", revision_count=1, tuner_type=first.tuner_type)
            session.add(repo)
            session.flush()
            copy = RevisionRecord(adapter_id=repo.id, number=1, digest=f"sha256:{i:064x}", format=rev.format,
                                  manifest=rev.manifest, meta=rev.meta, parents=[], created_at=rev.created_at)
            session.add(copy)
            session.flush()
            session.add(RefRecord(adapter_id=repo.id, name="main", kind="branch", revision_id=copy.id))
