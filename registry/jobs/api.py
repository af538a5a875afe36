"""The job operations the service offers (Registry.submit_job, jobs, job, cancel_job, validate_all).

Backends (registry/jobs/kinds.py): inline | worker | ray. The job is recorded in the database
whichever backend runs it, with its result and log tail.
"""
from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import InvalidJobError
from .kinds import BACKENDS, CHECKS, default_batch_size
from .queue import JobInfo, JobQueue, default_worker_id, key_scope
from .runner import check_params, job_namespaces

if TYPE_CHECKING:
    from ..service import Registry
    from .report import ValidationReport


def queue_of(reg: "Registry", **kwargs: Any) -> JobQueue:
    return JobQueue(reg.db.engine, **kwargs)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise InvalidJobError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)} (inline: here, now; "
                              "worker: queued for `swiftreg worker`; ray: on a Ray cluster)")


def run_jobs(reg: "Registry", ids: list[int], backend: str, *, ray_address: str | None = None,
             timeout: float | None = None, on_event: Callable[[str], None] | None = None) -> list[JobInfo]:
    """Run (inline, ray) or wait for (worker) the jobs `ids`; their final states."""
    from .worker import Worker, wait_for

    _check_backend(backend)
    queue = queue_of(reg)
    if backend == "inline":
        Worker(reg, queue, worker_id=f"inline:{default_worker_id()}", on_event=on_event).run(ids=ids,
                                                                                          exit_when_idle=True)
    elif backend == "ray":
        from .ray_backend import RayDriver, connect

        connect(ray_address)
        RayDriver(reg, queue).run(ids=ids, exit_when_idle=True)
    return wait_for(queue, ids, timeout=timeout, poll=0.2)


def submit(reg: "Registry", kind: str, params: dict[str, Any], *, key: str | None = None,
           backend: str = "worker", ray_address: str | None = None) -> JobInfo:
    """Record a job (idempotent with `key`) and, for inline / ray, run it before returning."""
    _check_backend(backend)
    check_params(kind, params)
    namespace, reads = job_namespaces(kind, params)
    job, created = queue_of(reg).submit(kind, params, key=key, namespace=namespace, scope=key_scope(namespace, reads))
    if backend in ("inline", "ray") and job.status == "queued":
        [job] = run_jobs(reg, [job.id], backend, ray_address=ray_address)
    return job


def parse_since(text: str | None) -> datetime | None:
    """`24h`, `30m`, `7d`, `90s` or an ISO date/time -> the moment that far back (UTC)."""
    if text is None:
        return None
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text[:-1], re.ASCII) and text[-1:] in units:  # not '²h'
            return datetime.now(timezone.utc) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise InvalidJobError(f"--since {text!r}: give a duration (24h, 30m, 7d) or an ISO date (2026-11-23T00:00)") \
            from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def validate_all(reg: "Registry", *, since: str | datetime | None = None, namespace: str | None = None,
                 backend: str = "inline", batch_size: int | None = None, swift: bool | None = None,
                 checks: Iterable[str] | None = None, ray_address: str | None = None, timeout: float | None = None,
                 revisions: list[str] | None = None,
                 on_event: Callable[[str], None] | None = None) -> "ValidationReport":
    """Queue validate jobs over every adapter revision (or those since `since`), run them, report."""
    from .report import build
    from .revision_checks import select_revisions

    _check_backend(backend)
    wanted = list(checks) if checks else list(CHECKS)
    unknown = set(wanted) - set(CHECKS)
    if unknown:
        raise InvalidJobError(f"unknown check(s) {', '.join(sorted(unknown))}; checks: {', '.join(CHECKS)}")
    if batch_size is None:
        batch_size = default_batch_size(wanted)
    if batch_size < 1:
        raise InvalidJobError("--batch-size must be at least 1")
    started = time.monotonic()
    moment = parse_since(since) if isinstance(since, str) or since is None else since
    refs = revisions if revisions is not None else select_revisions(reg, since=moment, namespace=namespace)
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    queue = queue_of(reg)
    ids = []
    for i in range(0, len(refs), batch_size):
        params: dict[str, Any] = {"revisions": refs[i:i + batch_size], "run_id": run_id, "checks": wanted}
        if swift is not None:
            params["swift"] = swift
        namespace_of, reads = job_namespaces("validate", params)
        job, _ = queue.submit("validate", params, key=f"validate:{run_id}:{i // batch_size}", namespace=namespace_of,
                              scope=key_scope(namespace_of, reads))
        ids.append(job.id)
    jobs = run_jobs(reg, ids, backend, ray_address=ray_address, timeout=timeout, on_event=on_event) if ids else []
    report: ValidationReport = build(reg, run_id, refs)
    report.jobs = [{"id": j.id, "status": j.status, "attempts": j.attempts, "worker": j.worker,
                    "error": (j.result or {}).get("error"),
                    "recorded": j.status == "succeeded" or bool((j.result or {}).get("checks"))}
                   for j in sorted(jobs, key=lambda j: j.id)]
    report.backend = backend
    report.seconds = time.monotonic() - started
    if "swift_load" in wanted and swift is not False:
        from .. import constants

        if not constants.swift_python():
            report.notes.append("SWIFTREG_SWIFT_PYTHON is not set: the ms-swift load check (swift_load) did not run")
    return report
