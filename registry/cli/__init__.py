"""The `swiftreg` command line: parse options, call the library, render the answer. Nothing else.

    common.py    the click group `main`, the one-line error exit, output helpers, opening the registry
    formats.py   convert, inspect, validate: checkpoint folders (validate also takes a registry id)
    repos.py     push, pull, ls, log, show, tag, branch, untag, rm, gc, db upgrade, base push
    storage.py   cache ls|prune, retention set|show|clear|apply: disk given back; store copy
    tensors.py   merge, unmerge, combine, check-equivalence (registry/ops.py)
    server.py    serve, token create|revoke|ls
    imports.py   import hf://... | ms://...
    jobs.py      worker, jobs submit|ls|show|cancel|logs, validate-all, validation show
    webhooks.py  webhook add|ls|rm|kinds|test|deliveries|redeliver|dispatch

Command modules import `common` and nothing of each other; this module gathers their commands on
`main`. Exit codes: 0 ok, 1 refused or invalid input, 2 usage error (click's own), 130 interrupted,
141 stdout closed by its reader (common.py).
"""
from __future__ import annotations

from .common import main

#: Each module's commands (its COMMANDS), imported only when one of them runs (SwiftregGroup.lazy): a command's
#: start pays for its own module alone. tests/test_transfer_once.py checks this table against the modules.
MODULES = {
    "formats": ("convert", "inspect", "validate"),
    "repos": ("push", "pull", "ls", "log", "show", "tag", "branch", "untag", "rm", "gc", "db", "base"),
    "storage": ("cache", "retention", "store"),
    "tensors": ("merge", "unmerge", "combine", "check-equivalence"),
    "server": ("serve", "token"),
    "imports": ("import",),
    "jobs": ("worker", "jobs", "validate-all", "validation"),
    "webhooks": ("webhook",),
}
main.lazy = {name: module for module, names in MODULES.items() for name in names}  # type: ignore[attr-defined]

__all__ = ["main"]
