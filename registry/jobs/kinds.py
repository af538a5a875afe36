"""The jobs' vocabulary in one place: kinds, backends and validation checks. The queue, the runner,
the Python API, the CLI and the server all take them from here.

merge / unmerge / combine / validate / import do the product's work; `sleep` is a diagnostic kind
(queue mechanics, worker health checks): it sleeps `seconds` and may append one line to a `record`
file. This module imports nothing, so the CLI can offer them without loading the database layer.
"""
from __future__ import annotations

KINDS: tuple[str, ...] = ("merge", "unmerge", "combine", "validate", "import", "sleep")
#: the checks a validate job runs on each revision (registry/jobs/revision_checks.py), in this order
CHECKS: tuple[str, ...] = ("integrity", "config", "roundtrip", "peft_load", "swift_load", "outputs")
#: where a job runs, the same three words in the CLI (`--backend`), the Python API (`backend=`) and the internals:
#:     inline   in the calling process, now (the CLI's default on the embedded registry)
#:     worker   only recorded: `swiftreg worker` processes claim and run it (the only one over HTTP)
#:     ray      recorded and dispatched to a Ray cluster from the calling process (`ray_address`)
BACKENDS: tuple[str, ...] = ("inline", "worker", "ray")
