"""`swiftreg worker`: claim jobs from the database, heartbeat while running them, record the outcome.

A worker is a plain loop, so a fleet is just more processes (on any machine that reaches the
database and the blob store). It

- gives back the jobs of dead workers first (`requeue_stale`), so a crash anywhere is repaired by
  whichever worker looks next;
- heartbeats from a thread while the job runs (a long merge keeps its claim; a SIGKILLed worker
  stops heartbeating and its job is requeued after `stale_after` seconds);
- on SIGTERM / SIGINT finishes the job in hand and exits (a second signal exits at once, and the
  job is then requeued by the others like any other stall).

A worker declares the device it computes on (`devices`, e.g. ["cuda:0"]; registry/jobs/devices.py): it
claims only jobs that device can run, records itself in `workers` while it runs (so `jobs ls` can tell a
CUDA job that waits for a CUDA worker), and runs merge / unmerge / combine on that device, check included.

The inline backend is the same loop, run in the calling process over the caller's own jobs (no devices
declared: it runs any of them, each on the device its parameters name).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from .queue import JobInfo, JobQueue, default_worker_id
from .runner import run_job

if TYPE_CHECKING:
    from ..service import Registry

log = logging.getLogger("swiftreg.worker")


@dataclass
class WorkerStats:
    ran: int = 0
    succeeded: int = 0
    failed: int = 0
    requeued: int = 0
    lost: int = 0  # finished after the job was cancelled or given to another worker: result dropped
    jobs: list[int] = field(default_factory=list)


class _Heartbeat(threading.Thread):
    """Beats every `interval` seconds until stopped; notes when the job stopped being ours."""

    def __init__(self, queue: JobQueue, job_id: int, worker: str, interval: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.queue, self.job_id, self.worker, self.interval = queue, job_id, worker, interval
        self.done = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                if not self.queue.heartbeat(self.job_id, self.worker):
                    self.lost = True
                    log.warning("job %s is no longer ours (cancelled or requeued)", self.job_id)
                    return
            except Exception:  # noqa: BLE001 - a database blip: try again at the next beat
                log.exception("heartbeat of job %s failed", self.job_id)


class Worker:
    def __init__(self, reg: "Registry", queue: JobQueue, *, worker_id: str | None = None,
                 kinds: Iterable[str] | None = None, heartbeat: float = 10.0, poll: float = 2.0,
                 on_event: Callable[[str], None] | None = None, devices: Iterable[str] | None = None) -> None:
        self.reg, self.queue = reg, queue
        self.worker_id = worker_id or default_worker_id()
        self.kinds = list(kinds) if kinds else None
        self.devices = list(devices) if devices is not None else None
        self.heartbeat, self.poll = heartbeat, poll
        self.on_event = on_event or (lambda line: log.info("%s", line))
        self.stopping = threading.Event()
        self.stats = WorkerStats()

    def stop(self) -> None:
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: finish the job in hand, then exit; a second one exits at once."""
        def handler(signum: int, _frame: object) -> None:
            if self.stopping.is_set():
                raise SystemExit(128 + signum)
            self.on_event(f"{signal.Signals(signum).name}: finishing the current job, then stopping")
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run_one(self, job: JobInfo) -> bool:
        """Run a claimed job with a heartbeat and record it; True when it succeeded."""
        self.on_event(f"job {job.id} ({job.kind}) attempt {job.attempts}: started")
        beat = _Heartbeat(self.queue, job.id, self.worker_id, self.heartbeat)
        beat.start()
        try:
            ok, result, text = run_job(self.reg, job,
                                       still_ours=lambda: self.queue.heartbeat(job.id, self.worker_id),
                                       device=self.devices[0] if self.devices else None)
        finally:
            beat.done.set()
            beat.join()
        recorded = self.queue.finish(job.id, self.worker_id, succeeded=ok, result=result, log=text)
        self.stats.ran += 1
        self.stats.jobs.append(job.id)
        if not recorded:
            self.stats.lost += 1
            self.on_event(f"job {job.id}: finished, but it was cancelled or given to another worker meanwhile; "
                          "result dropped")
            return False
        if ok:
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1
        self.on_event(f"job {job.id} ({job.kind}): {'succeeded' if ok else 'failed'} in {result.get('seconds')} s"
                      + ("" if ok else f": {result.get('error') or result.get('failed', '')}"))
        return ok

    def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False,
            ids: Iterable[int] | None = None) -> WorkerStats:
        """Claim and run jobs until stopped (or `max_jobs` ran, or the queue is empty with exit_when_idle)."""
        ids = list(ids) if ids is not None else None
        if self.devices is not None:
            self.queue.register_worker(self.worker_id, self.devices, self.kinds)
        try:
            return self._loop(max_jobs, exit_when_idle, ids)
        finally:
            if self.devices is not None:
                try:
                    self.queue.forget_worker(self.worker_id)
                except Exception:  # noqa: BLE001 - the database went away: the row goes stale by itself
                    log.exception("could not remove worker %s from the workers table", self.worker_id)

    def _loop(self, max_jobs: int | None, exit_when_idle: bool, ids: list[int] | None) -> WorkerStats:
        # looking for stalled jobs is a write transaction: often enough to notice within stale_after, no more
        every, next_look = min(self.queue.stale_after / 4, 10.0), 0.0
        while not self.stopping.is_set():
            if max_jobs is not None and self.stats.ran >= max_jobs:
                break
            requeued: list[JobInfo] = []
            if time.monotonic() >= next_look:
                requeued, next_look = self.queue.requeue_stale(), time.monotonic() + every
                if self.devices is not None:
                    self.queue.touch_worker(self.worker_id)
            for stale in requeued:
                self.stats.requeued += 1
                self.on_event(f"job {stale.id}: {stale.status} after its worker stopped heartbeating")
            job = self.queue.claim(self.worker_id, kinds=self.kinds, ids=ids, devices=self.devices)
            if job is None:
                if exit_when_idle and not self._others_running(ids):
                    break
                self.stopping.wait(self.poll)
                continue
            self.run_one(job)
        return self.stats

    def _others_running(self, ids: list[int] | None) -> bool:
        """With exit_when_idle: keep polling while jobs are running elsewhere (they may be requeued)."""
        return any(self.kinds is None or j.kind in self.kinds
                   for j in self.queue.list(status="running", ids=ids, limit=1000))


def wait_for(queue: JobQueue, ids: list[int], *, timeout: float | None = None, poll: float = 1.0,
             on_progress: Callable[[int, int], None] | None = None) -> list[JobInfo]:
    """Block until every job in `ids` is finished (run by workers elsewhere); their final states."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        jobs = queue.list(ids=ids, limit=len(ids) + 1)
        done = [j for j in jobs if j.finished]
        if on_progress is not None:
            on_progress(len(done), len(ids))
        if len(done) == len(ids):
            return jobs
        if deadline is not None and time.monotonic() > deadline:
            from ..errors import JobError

            waiting = sorted(j.id for j in jobs if not j.finished)
            raise JobError(f"jobs {', '.join(map(str, waiting[:10]))} still not finished after {timeout:.0f} s: "
                           "are `swiftreg worker` processes running against this database?")
        time.sleep(poll)
