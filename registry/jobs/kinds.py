"""The job kinds and validation checks, in one place: the queue, the runner, the CLI and the server all take them from here.

merge / unmerge / combine / validate / import do the product's work; `sleep` is a diagnostic kind
(queue mechanics, worker health checks): it sleeps `seconds` and may append one line to a `record`
file. This module imports nothing, so the CLI can offer the kinds without loading the database layer.
"""
from __future__ import annotations

KINDS: tuple[str, ...] = ("merge", "unmerge", "combine", "validate", "import", "sleep")
#: the checks a validate job runs on each revision (registry/jobs/revision_checks.py), in this order
CHECKS: tuple[str, ...] = ("integrity", "config", "roundtrip", "peft_load", "swift_load", "outputs")
