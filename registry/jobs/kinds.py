"""The jobs' vocabulary in one place: kinds, backends and validation checks. The queue, the runner,
the Python API, the CLI and the server all take them from here.

merge / unmerge / combine / validate / import do the product's work; `sleep` is a diagnostic kind
(queue mechanics, worker health checks): it sleeps `seconds` and may append one line to a `record`
file. This module imports nothing, so the CLI can offer them without loading the database layer.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

KINDS: tuple[str, ...] = ("merge", "unmerge", "combine", "validate", "import", "sleep")
#: the checks a validate job runs on each revision (registry/jobs/revision_checks.py), in this order
CHECKS: tuple[str, ...] = ("integrity", "config", "roundtrip", "peft_load", "swift_load", "outputs")
#: the checks that load a model (seconds per revision; swift_load starts one ms-swift process per job)
MODEL_CHECKS: frozenset[str] = frozenset({"peft_load", "swift_load", "outputs"})
#: revisions per validate job, unless given: a job that loads models stays a few revisions long (a retry redoes
#: little, and workers share the run evenly); one that only reads files (milliseconds per revision) takes many,
#: or the queue's own statements (claim, finish, their event) would cost more than the checks on PostgreSQL
BATCH_SIZE_MODELS, BATCH_SIZE_FILES = 8, 256


def default_batch_size(checks: Iterable[str]) -> int:
    """The revisions per validate job for a run of `checks` when no batch size is given."""
    return BATCH_SIZE_MODELS if MODEL_CHECKS & set(checks) else BATCH_SIZE_FILES
#: where a job runs, the same three words in the CLI (`--backend`), the Python API (`backend=`) and the internals:
#:     inline   in the calling process, now (the CLI's default on the embedded registry)
#:     worker   only recorded: `swiftreg worker` processes claim and run it (the only one over HTTP)
#:     ray      recorded and dispatched to a Ray cluster from the calling process (`ray_address`)
BACKENDS: tuple[str, ...] = ("inline", "worker", "ray")
