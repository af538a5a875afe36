"""The recorded checks of one revision, newest first: `swiftreg validation show ns/name@ref`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ..errors import RegistryError
from ..ids import parse_id

if TYPE_CHECKING:
    from ..service import Registry


def history(reg: "Registry", repo_id: str, *, check_kind: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    from ..db.models import AdapterRecord, RevisionRecord, ValidationRunRecord

    rid = parse_id(repo_id)
    info = reg.show(repo_id)
    if info.kind != "adapter":
        raise RegistryError(f"{info.repo} is a base model; validation history is kept for adapter revisions")
    with reg.db.read() as session:
        rev_id = session.execute(select(RevisionRecord.id)
                                 .join(AdapterRecord, RevisionRecord.adapter_id == AdapterRecord.id)
                                 .where(AdapterRecord.namespace == rid.namespace, AdapterRecord.name == rid.name,
                                        RevisionRecord.number == info.number)).scalar_one()
        query = select(ValidationRunRecord).where(ValidationRunRecord.revision_id == rev_id)
        if check_kind is not None:
            query = query.where(ValidationRunRecord.check_kind == check_kind)
        rows = session.scalars(query.order_by(ValidationRunRecord.id.desc()).limit(limit)).all()
        out = []
        for r in rows:
            metrics = dict(r.metrics or {})
            out.append({"id": r.id, "revision": f"{info.repo}@{info.number}", "check": r.check_kind,
                        "passed": r.passed, "reason": metrics.pop("reason", ""), "metrics": metrics,
                        "library_versions": r.library_versions, "run_id": r.run_id, "job_id": r.job_id,
                        "started_at": r.started_at.isoformat() if r.started_at else None,
                        "finished_at": r.finished_at.isoformat() if r.finished_at else None})
        return out
