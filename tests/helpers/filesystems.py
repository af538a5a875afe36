"""A small real filesystem for tests that need a full disk: a size-limited tmpfs mounted on a test folder.

Mounting needs root (or CAP_SYS_ADMIN); without it the test is skipped with the reason, never faked, except in the
full suite (`scripts/test`), where it fails.
"""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_filesystem(folder: Path, mib: int) -> Iterator[Path]:
    """`folder` as the root of a fresh tmpfs of `mib` MiB for the block; unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        cannot_mount("a full disk needs a small real filesystem: mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        cannot_mount(f"cannot mount a {mib} MiB tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def cannot_mount(reason: str) -> None:
    """This machine cannot give the test a real filesystem to fill. Under `scripts/test` (the full suite CI runs:
    SWIFTREG_FULL_SUITE=1, on a root machine) that is a failure, never a skip counted as passing; elsewhere (a
    developer without root) the test is skipped with the reason."""
    if os.environ.get("SWIFTREG_FULL_SUITE"):
        pytest.fail(f"the full suite needs this: {reason}")
    pytest.skip(reason)
