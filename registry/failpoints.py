"""Named points where a test can have the process killed, to prove crash safety.

`SWIFTREG_FAILPOINTS=push:before-commit` makes the process SIGKILL itself when it reaches that
point: no cleanup handler runs, exactly like a power cut or an OOM kill. `NAME=pause` instead
stops there (after a line `failpoint NAME: paused` on stderr) until a signal ends the wait, so a
test can deliver Ctrl-C at a known point. Other actions (`NAME=oom`, `NAME@2=gpu-lost`) are not
acted on here: `action(NAME, count)` hands them to the code at that point, which raises the fault it
names (registry/tensors/gpu_faults.py: a CUDA out-of-memory or a lost GPU, on any machine). Unset, a
failpoint costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from .constants import FAILPOINTS_VARIABLE


def hit(name: str) -> None:
    armed = os.environ.get(FAILPOINTS_VARIABLE)
    if not armed:
        return
    for point in armed.split(","):
        point_name, _, action = point.partition("=")
        if point_name != name:
            continue
        if action == "pause":
            sys.stderr.write(f"failpoint {name}: paused\n")
            sys.stderr.flush()
            while True:  # until a signal: SIGINT raises KeyboardInterrupt here
                time.sleep(3600)
        os.kill(os.getpid(), signal.SIGKILL)


def action(name: str, count: int | None = None) -> str | None:
    """The action armed for failpoint `name` (`NAME=ACTION`, or `NAME@N=ACTION` for its N-th hit only, counted
    by the caller from 1), or None. For the faults a caller injects itself rather than a kill."""
    armed = os.environ.get(FAILPOINTS_VARIABLE)
    if not armed:
        return None
    for point in armed.split(","):
        point_name, _, what = point.partition("=")
        point_name, _, nth = point_name.partition("@")
        if point_name == name and (not nth or (count is not None and nth == str(count))):
            return what or None
    return None
