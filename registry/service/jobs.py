"""The job and revision-check calls of `Registry`, delegated to registry/jobs/ and registry/vllm_checks.py.

Jobs (merge, unmerge, combine, validate, import) are recorded in the database and run inline, by
`swiftreg worker` processes or on Ray; checks of a revision are recorded in `validation_runs` (the
revision row itself stays immutable).
"""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..db.models import ValidationRunRecord
from ..errors import RegistryError
from ..ids import parse_id
from .core import RegistryCore, whole

if TYPE_CHECKING:
    from ..jobs.queue import JobInfo
    from ..jobs.report import ValidationReport


class JobsMixin(RegistryCore):
    """submit_job, job, jobs, cancel_job, validate_all, validation_history, record_validation, check_serving."""

    def submit_job(self, kind: str, params: dict[str, Any], *, key: str | None = None,
                   backend: str = "worker", ray_address: str | None = None) -> JobInfo:
        """Record a job (idempotent with `key`) for `swiftreg worker` processes, or run it now with backend
        inline or ray. Returns its JobInfo."""
        from ..jobs import api

        return api.submit(whole(self), kind, params, key=key, backend=backend, ray_address=ray_address)

    def job(self, job_id: int) -> JobInfo:
        """One job, as it stands now."""
        from ..jobs.api import queue_of

        return queue_of(whole(self)).get(job_id)

    def jobs(self, *, status: str | None = None, kind: str | None = None,
             namespaces: list[str] | None = None, limit: int = 100) -> list[JobInfo]:
        """Jobs, newest first."""
        from ..jobs.api import queue_of

        return queue_of(whole(self)).list(status=status, kind=kind, namespaces=namespaces, limit=limit)

    def cancel_job(self, job_id: int) -> JobInfo:
        """Cancel a queued or running job."""
        from ..jobs.api import queue_of

        return queue_of(whole(self)).cancel(job_id)

    def validate_all(self, **options: Any) -> ValidationReport:
        """Validate every adapter revision (see registry/jobs/api.py validate_all)."""
        from ..jobs import api

        return api.validate_all(whole(self), **options)

    def validation_history(self, repo_id: str, check_kind: str | None = None,
                           limit: int = 200) -> list[dict[str, Any]]:
        """Every recorded check of a revision, newest first (validate-all, push --check)."""
        from ..jobs.history import history

        return history(whole(self), repo_id, check_kind=check_kind, limit=limit)

    def record_validation(self, repo_id: str, check_kind: str, *, passed: bool, metrics: dict[str, Any],
                          library_versions: dict[str, Any]) -> int:
        """Record a check's verdict on a revision in `validation_runs` (the revision row stays immutable)."""
        rid = parse_id(repo_id)
        kind = self._kind_of(rid)
        with self.db.write() as session:
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
        from ..versions import library_versions
        from ..vllm_checks import CHECK_KIND, VLLM_LIMITS_OF, check_revision, served_base

        if target != "vllm":
            raise RegistryError(f"serving checks know the target 'vllm', not {target!r}")
        reg = whole(self)
        info, _folder, verdict = check_revision(reg, repo_id, max_lora_rank=max_lora_rank,
                                                served=served_base(reg, served_model) if served_model else None)
        data = {"revision": f"{info.repo}@{info.number}", "digest": info.digest, **verdict.to_dict(),
                "recorded": record}
        data["path"] = data["revision"]  # the snapshot path is this machine's business
        if record:
            self.record_validation(data["revision"], CHECK_KIND, passed=verdict.ok,
                                   library_versions={**library_versions(), "vllm_limits": VLLM_LIMITS_OF},
                                   metrics={"reasons": data["reasons"], "notes": data["notes"],
                                            "max_lora_rank": max_lora_rank, "served_model": served_model})
        return data
