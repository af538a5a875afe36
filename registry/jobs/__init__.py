"""Jobs: long work (merge, unmerge, combine, validate) recorded in the database and run by a backend.

    queue.py           the `jobs` table as a queue: submit (idempotent), claim, heartbeat, requeue, cancel
    runner.py          one job of any kind, run here: the same code whichever backend runs it
    worker.py          `swiftreg worker`: the claim / heartbeat / run / record loop, graceful on SIGTERM
    ray_backend.py     the same loop dispatching to Ray tasks (`swiftreg worker --backend ray --ray-address ADDR`)
    revision_checks.py the checks of one revision, recorded in `validation_runs`
    report.py          what a `validate-all` found: table, JSON, JUnit XML, regressions
    history.py         the recorded checks of one revision, newest first (`swiftreg validation show`)
    api.py             the operations the service exposes (submit, run, validate_all)
    kinds.py           the vocabulary: job kinds, backends (inline | worker | ray), checks; imports nothing

The queue's names are loaded on first use, so importing registry.jobs.kinds stays free.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .kinds import KINDS

if TYPE_CHECKING:
    from .queue import FINISHED, STATUSES, JobInfo, JobQueue

__all__ = ["FINISHED", "KINDS", "STATUSES", "JobInfo", "JobQueue"]


def __getattr__(name: str) -> Any:
    if name in ("FINISHED", "STATUSES", "JobInfo", "JobQueue"):
        from . import queue

        return getattr(queue, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
