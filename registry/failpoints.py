"""Named points where a test can have the process killed, to prove crash safety.

`SWIFTREG_FAILPOINTS=push:before-commit` makes the process SIGKILL itself when it reaches that
point: no cleanup handler runs, exactly like a power cut or an OOM kill. `NAME=pause` instead
stops there (after a line `failpoint NAME: paused` on stderr) until a signal ends the wait, so a
test can deliver Ctrl-C at a known point. Unset, a failpoint costs one dictionary lookup.
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
