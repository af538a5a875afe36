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

from . import formats, imports, jobs, repos, server, storage, tensors, webhooks
from .common import main

for _module in (formats, repos, storage, tensors, server, imports, jobs, webhooks):
    for _command in _module.COMMANDS:
        main.add_command(_command)

__all__ = ["main"]
