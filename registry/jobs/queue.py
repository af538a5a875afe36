"""The job queue in the registry's database: submit, claim, heartbeat, finish, requeue, cancel.

Every state change is one short transaction, so any number of `swiftreg worker` processes (and the
Ray driver, and the server) can share one queue:

    queued --claim--> running --finish--> succeeded | failed
       ^                 |  \\--cancel--> cancelled  (the worker's finish is then ignored)
       |                 | heartbeat stopped for `stale_after` seconds:
       +-- requeue ------+   attempts < max_attempts -> queued again, else failed with the reason
    queued --cancel--> cancelled

Claims are safe under concurrency: on PostgreSQL `SELECT ... FOR UPDATE SKIP LOCKED` hands each
queued row to one transaction; on SQLite the write transaction is `BEGIN IMMEDIATE` (one writer at a
time) and the UPDATE is a compare-and-set on `status = 'queued'`. Finishing and heartbeating are
compare-and-sets on (status = 'running', worker = me): a worker that lost its job (requeued after a
stall, or cancelled) cannot overwrite what happened since.

Devices (migration 0008): a job whose `device` parameter names CUDA needs a CUDA worker (`jobs.device` =
"cuda"); `claim(devices=...)` hands it only to a worker that declared one, and a worker that has one takes
such jobs before jobs any worker can run. Each `swiftreg worker` keeps a row in `workers` (its devices, seen
at every heartbeat), so a listing can say that a CUDA job waits because no CUDA worker is running.

Times are stored in UTC. Submission takes an idempotency key: the same key again returns the first
job instead of queueing a second one (a retried HTTP request does not run twice). A key is unique
within its scope (`key_scope`: the namespace the job writes to, else the namespaces it reads), so one
namespace can neither squat another's keys nor learn of its jobs from a conflict.
"""
from __future__ import annotations

import builtins
import hashlib
import os
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Literal, overload

from sqlalchemy import CursorResult, Engine, case, delete, or_, select, update
from sqlalchemy.orm import Session

from ..db import engine as db
from ..db.models import JobRecord, WorkerRecord
from ..errors import InvalidJobError, JobConflictError, JobNotFoundError, JobStateError
from ..webhooks import outbox
from .kinds import KINDS

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
LOG_TAIL = 16_000  # characters of a job's log kept in the database

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_STALE_AFTER = 60.0  # seconds without a heartbeat before a running job is given back


def key_scope(namespace: str | None, reads: Iterable[str] = ()) -> str:
    """Where a job's idempotency key is unique: the namespace it writes to; for a job without one, the
    namespaces it reads joined by "+" (hashed when longer than the column); "" for a job about none."""
    if namespace:
        return namespace
    joined = "+".join(sorted(set(reads)))
    return joined if len(joined) <= 96 else "sha256:" + hashlib.sha256(joined.encode()).hexdigest()


def device_requirement(params: dict[str, Any]) -> str | None:
    """The kind of device a job needs: "cuda" when its `device` parameter names CUDA ("cuda", "cuda:1"), else
    None (any worker; "auto" runs on the GPU of a worker that has one). The index in "cuda:N" is the worker's
    business: one worker per GPU, each runs the job on its own device."""
    device = params.get("device")
    if isinstance(device, str) and device.strip().lower().split(":", 1)[0] == "cuda":
        return "cuda"
    return None


def device_types(devices: Iterable[str]) -> builtins.set[str]:
    """{"cpu", "cuda"} from ["cpu", "cuda:0"]: what a worker's declared devices can serve."""
    return {str(d).strip().lower().split(":", 1)[0] for d in devices}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@overload
def _aware(value: datetime) -> datetime: ...
@overload
def _aware(value: None) -> None: ...
def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; ours are always UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _updated(session: Session, statement: Any) -> int:
    """Run an UPDATE; how many rows it changed (the compare-and-set every state change relies on)."""
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return result.rowcount


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class JobInfo:
    id: int
    kind: str
    params: dict[str, Any]
    status: str
    attempts: int
    worker: str | None
    heartbeat_at: datetime | None
    result: dict[str, Any] | None
    log: str | None
    idempotency_key: str | None
    namespace: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    device: str | None = None    # the kind of device the job needs ("cuda"), None for any worker
    waiting: str | None = None   # why a queued job is not being claimed ("waiting for a cuda worker")

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for key in ("heartbeat_at", "created_at", "started_at", "finished_at"):
            d[key] = d[key].isoformat() if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobInfo":
        """The inverse of to_dict (the remote client builds JobInfo from the server's JSON)."""
        d = dict(d)
        for key in ("heartbeat_at", "created_at", "started_at", "finished_at"):
            d[key] = datetime.fromisoformat(d[key]) if d.get(key) else None
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


def _info(row: JobRecord) -> JobInfo:
    return JobInfo(id=row.id, kind=row.kind, params=dict(row.params or {}), status=row.status, attempts=row.attempts,
                   worker=row.worker, heartbeat_at=_aware(row.heartbeat_at), result=row.result, log=row.log,
                   idempotency_key=row.idempotency_key, namespace=row.namespace,
                   created_at=_aware(row.created_at), started_at=_aware(row.started_at),
                   finished_at=_aware(row.finished_at), device=row.device)


def _tail(text: str | None) -> str | None:
    return text[-LOG_TAIL:] if text else text


def _announce(session: Session, job_id: int) -> None:
    """job.succeeded / job.failed, in the transaction that finished the job (registry/webhooks/outbox.py).

    A job of one namespace is told to that namespace's webhooks, in the stream of the repository it writes
    (so after the revision.created it caused), else in `jobs:<namespace>`; a job spanning several namespaces
    (namespace None) is told to none."""
    row = session.get_one(JobRecord, job_id)
    if row.namespace is None or row.status not in ("succeeded", "failed"):
        return
    from ..ids import parse_id

    target = (row.params or {}).get("push") or (row.params or {}).get("id")
    try:
        repo = parse_id(str(target), allow_ref=False).repo if target else None
    except Exception:  # noqa: BLE001 - parameters checked at submission; an odd one only loses the stream
        repo = None
    info = _info(row).to_dict()
    info.pop("log", None)
    outbox.record(session, f"job.{row.status}", namespace=row.namespace, stream=repo or f"jobs:{row.namespace}",
                  data={"repo": repo or row.namespace, "job": info})


class JobQueue:
    """The `jobs` table as a queue. `engine` must already have the schema (`Registry.db.engine`)."""

    def __init__(self, engine: Engine, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 stale_after: float = DEFAULT_STALE_AFTER) -> None:
        self.engine = engine
        self.max_attempts = max_attempts
        self.stale_after = stale_after
        self._postgres = engine.dialect.name == "postgresql"

    # ----- submitting and reading --------------------------------------------------------------------

    def submit(self, kind: str, params: dict[str, Any], *, key: str | None = None,
               namespace: str | None = None, scope: str | None = None) -> tuple[JobInfo, bool]:
        """Queue a job; (job, created). With `key`, a second submission in the same `scope` (see
        `key_scope`; by default the job's namespace, or "") returns the first job.

        The same key with another kind or other parameters is refused: that is a different job, and
        silently answering the old one would hide the mistake.
        """
        if kind not in KINDS:
            raise InvalidJobError(f"unknown job kind {kind!r}; kinds: {', '.join(KINDS)}")
        if not isinstance(params, dict):
            raise InvalidJobError("job parameters must be a JSON object")
        if key is not None and not (0 < len(key) <= 200):
            raise InvalidJobError("an idempotency key must have 1 to 200 characters")
        scope = key_scope(namespace) if scope is None else scope
        values = dict(kind=kind, params=params, status="queued", attempts=0, idempotency_key=key,
                      idempotency_scope=scope, namespace=namespace, created_at=utcnow(),
                      device=device_requirement(params))
        with db.write_session(self.engine) as session:
            if key is None:
                row = JobRecord(**values)
                session.add(row)
                session.flush()
                return _info(row), True
            inserted = db.insert_ignore(session, JobRecord, **values)
            row = session.scalars(select(JobRecord).where(JobRecord.idempotency_scope == scope,
                                                          JobRecord.idempotency_key == key)).one()
            if not inserted and (row.kind != kind or row.params != params):
                raise JobConflictError(f"idempotency key {key!r} was used for job {row.id} ({row.kind}) with other "
                                       "parameters; use a new key for a new job")
            return _info(row), inserted

    def get(self, job_id: int) -> JobInfo:
        if not 0 < job_id < 2**31:  # the column is a 32-bit INTEGER: PostgreSQL refuses larger values
            raise JobNotFoundError(f"no job {job_id} in this registry (swiftreg jobs ls lists them)")
        with db.read_session(self.engine) as session:
            row = session.get(JobRecord, job_id)
            if row is None:
                raise JobNotFoundError(f"no job {job_id} in this registry (swiftreg jobs ls lists them)")
            return self._noted(session, [_info(row)])[0]

    def list(self, *, status: str | None = None, kind: str | None = None, namespaces: Iterable[str] | None = None,
             ids: Iterable[int] | None = None, limit: int = 100) -> list[JobInfo]:
        """Jobs, newest first."""
        if status is not None and status not in STATUSES:
            raise InvalidJobError(f"unknown job status {status!r}; statuses: {', '.join(STATUSES)}")
        query = select(JobRecord).order_by(JobRecord.id.desc())
        if status is not None:
            query = query.where(JobRecord.status == status)
        if kind is not None:
            query = query.where(JobRecord.kind == kind)
        if namespaces is not None:
            query = query.where(JobRecord.namespace.in_(list(namespaces)))
        if ids is not None:
            query = query.where(JobRecord.id.in_(list(ids)))
        with db.read_session(self.engine) as session:
            return self._noted(session, [_info(r) for r in session.scalars(query.limit(limit)).all()])

    def _noted(self, session: Session, jobs: builtins.list[JobInfo]) -> builtins.list[JobInfo]:
        """Say why a queued job that needs a device is not claimed: no live worker has that device (one query,
        only when such a job is on the page)."""
        needs = {j.device for j in jobs if j.status == "queued" and j.device}
        if not needs:
            return jobs
        have = builtins.set().union(*(device_types(w.devices) for w in self.live_workers(session)))
        return [replace(j, waiting=f"waiting for a {j.device} worker (none is running)")
                if j.status == "queued" and j.device and j.device not in have else j for j in jobs]

    # ----- workers ------------------------------------------------------------------------------------

    def live_workers(self, session: Session | None = None) -> builtins.list[WorkerRecord]:
        """Workers seen within `stale_after` seconds (at start, at each look at the queue, at each heartbeat)."""
        cutoff = utcnow() - timedelta(seconds=self.stale_after)
        query = select(WorkerRecord).where(WorkerRecord.seen_at >= cutoff).order_by(WorkerRecord.id)
        if session is not None:
            return list(session.scalars(query).all())
        with db.read_session(self.engine) as own:
            return list(own.scalars(query).all())

    def register_worker(self, worker: str, devices: Iterable[str], kinds: Iterable[str] | None = None) -> None:
        """Record (or refresh) a worker and the devices it declared; called at its start."""
        now = utcnow()
        with db.write_session(self.engine) as session:
            row = session.get(WorkerRecord, worker)
            if row is None:
                session.add(WorkerRecord(id=worker, devices=list(devices), kinds=list(kinds) if kinds else None,
                                         started_at=now, seen_at=now))
            else:
                row.devices, row.kinds, row.seen_at = list(devices), list(kinds) if kinds else None, now

    def touch_worker(self, worker: str) -> None:
        """The worker is alive (its loop looked at the queue)."""
        with db.write_session(self.engine) as session:
            session.execute(update(WorkerRecord).where(WorkerRecord.id == worker).values(seen_at=utcnow()))

    def forget_worker(self, worker: str) -> None:
        """The worker stopped; a killed one's row simply goes stale (and is replaced by the next of its id)."""
        with db.write_session(self.engine) as session:
            session.execute(delete(WorkerRecord).where(WorkerRecord.id == worker))

    # ----- working ------------------------------------------------------------------------------------

    def claim(self, worker: str, *, kinds: Iterable[str] | None = None,
              ids: Iterable[int] | None = None, devices: Iterable[str] | None = None) -> JobInfo | None:
        """Take the oldest queued job (of `kinds`, among `ids`) for `worker`; None when there is none.

        With `devices` (the worker's, e.g. ["cuda:0"] or ["cpu"]) only jobs those devices can run: a job that
        needs "cuda" is left to a worker with one, and such a worker takes them before jobs any worker can run
        (its GPU is the scarce thing). Without `devices` (the inline backend, running the caller's own jobs)
        any job."""
        query = select(JobRecord.id).where(JobRecord.status == "queued").limit(1)
        if devices is not None:
            types = sorted(device_types(devices))
            query = query.where(or_(JobRecord.device.is_(None), JobRecord.device.in_(types)))
            query = query.order_by(case((JobRecord.device.is_(None), 1), else_=0), JobRecord.id)
        else:
            query = query.order_by(JobRecord.id)
        if kinds is not None:
            query = query.where(JobRecord.kind.in_(list(kinds)))
        if ids is not None:
            query = query.where(JobRecord.id.in_(list(ids)))
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        now = utcnow()
        with db.write_session(self.engine) as session:
            job_id = session.execute(query).scalar_one_or_none()
            if job_id is None:
                return None
            changed = _updated(session, update(JobRecord).where(JobRecord.id == job_id, JobRecord.status == "queued")
                               .values(status="running", worker=worker, attempts=JobRecord.attempts + 1,
                                       heartbeat_at=now, started_at=now, finished_at=None))
            if changed != 1:  # cannot happen under the locks above; never hand out a job twice
                return None
            return _info(session.get_one(JobRecord, job_id))

    def heartbeat(self, job_id: int, worker: str) -> bool:
        """Say the job is alive; False when it is no longer this worker's (cancelled or requeued)."""
        now = utcnow()
        with db.write_session(self.engine) as session:
            session.execute(update(WorkerRecord).where(WorkerRecord.id == worker).values(seen_at=now))
            return _updated(session, update(JobRecord).where(JobRecord.id == job_id, JobRecord.status == "running",
                                                             JobRecord.worker == worker)
                            .values(heartbeat_at=now)) == 1

    def finish(self, job_id: int, worker: str, *, succeeded: bool, result: dict[str, Any] | None,
               log: str | None = None) -> bool:
        """Record the outcome; False (and nothing written) when the job is no longer this worker's."""
        with db.write_session(self.engine) as session:
            row = session.get(JobRecord, job_id)
            previous = (row.log + "\n") if row is not None and row.log else ""
            done = _updated(session, update(JobRecord).where(JobRecord.id == job_id, JobRecord.status == "running",
                                                             JobRecord.worker == worker)
                            .values(status="succeeded" if succeeded else "failed", result=result,
                                    log=_tail(previous + (log or "")), finished_at=utcnow(),
                                    heartbeat_at=utcnow())) == 1
            if done:
                session.expire_all()
                _announce(session, job_id)
            return done

    def release(self, job_id: int, worker: str, reason: str) -> JobInfo | None:
        """Give a job back now (its runner died under us): queued again, or failed when out of attempts."""
        with db.write_session(self.engine) as session:
            row = session.get(JobRecord, job_id)
            if row is None or row.status != "running" or row.worker != worker:
                return None
            log = (row.log + "\n" if row.log else "") + reason
            if row.attempts >= self.max_attempts:
                values: dict[str, Any] = dict(status="failed", finished_at=utcnow(),
                                              log=_tail(log + "; no attempts left"),
                                              result={"error": reason + "; no attempts left"})
            else:
                values = dict(status="queued", worker=None, heartbeat_at=None, log=_tail(log + "; requeued"))
            session.execute(update(JobRecord).where(JobRecord.id == job_id, JobRecord.status == "running",
                                                    JobRecord.worker == worker).values(**values))
            session.flush()
            session.refresh(row)
            _announce(session, job_id)
            return _info(row)

    def requeue_stale(self, *, stale_after: float | None = None) -> builtins.list[JobInfo]:
        """Give back running jobs whose heartbeat stopped; fail those out of attempts. Returns them."""
        cutoff = utcnow() - timedelta(seconds=self.stale_after if stale_after is None else stale_after)
        changed = []
        with db.write_session(self.engine) as session:
            query = select(JobRecord).where(JobRecord.status == "running")
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            for row in session.scalars(query).all():
                beat = _aware(row.heartbeat_at)
                if beat is not None and beat >= cutoff:
                    continue
                when = beat.isoformat(timespec="seconds") if beat else "never"
                reason = (f"worker {row.worker} stopped heartbeating (last heartbeat {when}) during attempt "
                          f"{row.attempts} of {self.max_attempts}")
                log = (row.log + "\n" if row.log else "") + reason
                if row.attempts >= self.max_attempts:
                    values = dict(status="failed", finished_at=utcnow(), log=_tail(log + "; no attempts left"),
                                  result={"error": reason + "; no attempts left", "stalled": True})
                else:
                    values = dict(status="queued", worker=None, heartbeat_at=None, log=_tail(log + "; requeued"))
                session.execute(update(JobRecord).where(JobRecord.id == row.id, JobRecord.status == "running",
                                                        JobRecord.worker == row.worker).values(**values))
                session.flush()
                session.refresh(row)
                _announce(session, row.id)
                changed.append(_info(row))
        return changed

    def cancel(self, job_id: int) -> JobInfo:
        """Cancel a queued or running job (a running job's worker sees it at its next heartbeat)."""
        self.get(job_id)  # a clear "no job N" for any id, also one past the column's range
        with db.write_session(self.engine) as session:
            row = session.get(JobRecord, job_id)
            if row is None:
                raise JobNotFoundError(f"no job {job_id} in this registry (swiftreg jobs ls lists them)")
            if row.status in FINISHED:
                raise JobStateError(f"job {job_id} already {row.status}; only queued or running jobs can be cancelled")
            done = _updated(session, update(JobRecord).where(JobRecord.id == job_id, JobRecord.status == row.status)
                            .values(status="cancelled", finished_at=utcnow(),
                                    log=_tail((row.log + "\n" if row.log else "") + "cancelled")))
            if done != 1:  # a worker claimed or finished it between the read and the update
                raise JobStateError(f"job {job_id} changed state while it was being cancelled; look at it again "
                                    f"(swiftreg jobs show {job_id}) and cancel it again if it still runs")
            session.flush()
            session.refresh(row)
            return _info(row)
