"""Named points where a test can have the process killed, to prove crash safety.

`SWIFTREG_FAILPOINTS=push:before-commit` makes the process SIGKILL itself when it reaches that
point: no cleanup handler runs, exactly like a power cut or an OOM kill. Unset, a failpoint costs
one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

from .constants import FAILPOINTS_VARIABLE


def hit(name: str) -> None:
    armed = os.environ.get(FAILPOINTS_VARIABLE)
    if armed and name in armed.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
