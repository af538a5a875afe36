"""Jobs: long work (merge, unmerge, combine, validate) recorded in the database and run by a backend.

    queue.py        the `jobs` table as a queue: submit (idempotent), claim, heartbeat, requeue, cancel
    runner.py       one job of any kind, run here: the same code whichever backend runs it
    worker.py       `swiftreg worker`: the claim / heartbeat / run / record loop, graceful on SIGTERM
    ray_backend.py  the same loop dispatching to Ray tasks (`--backend ray --ray-address ADDR`)
    validation.py   the checks of one revision, recorded in `validation_runs`
    report.py       what a `validate-all` found: table, JSON, JUnit XML, regressions
    api.py          the operations the service exposes (submit, run, validate_all)
"""
from __future__ import annotations

from .queue import FINISHED, KINDS, STATUSES, JobInfo, JobQueue

__all__ = ["FINISHED", "KINDS", "STATUSES", "JobInfo", "JobQueue"]
