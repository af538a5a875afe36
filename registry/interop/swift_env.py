"""Run batches of jobs with the real ms-swift, in its own interpreter, through one subprocess.

ms-swift 4.6 works only with peft <= 0.18 and importing it patches PEFT for the whole process, so
it never runs inside swiftreg's own process. `swift_side.py` is the script it runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import constants
from ..errors import SwiftEnvironmentError

SCRIPT = Path(__file__).with_name("swift_side.py")


def swift_python() -> str:
    """The configured ms-swift interpreter, or a clear error saying how to configure one."""
    python = constants.swift_python()
    if not python:
        raise SwiftEnvironmentError(
            "SWIFTREG_SWIFT_PYTHON is not set: point it at a Python with ms-swift installed "
            "(scripts/test and scripts/demo build one and set it)")
    if not Path(python).exists():
        raise SwiftEnvironmentError(f"SWIFTREG_SWIFT_PYTHON={python} does not exist")
    return python


def run_jobs(jobs: Sequence[dict[str, Any]], *, timeout: float = 1800, env: Mapping[str, str] | None = None,
             python: str | None = None) -> list[dict[str, Any]]:
    """Run `jobs` in one ms-swift process; one result dict per job (`ok`, and `error` when not).

    `env`: variables set last (e.g. MODELSCOPE_ENDPOINT with MODELSCOPE_OFFLINE="0" to load from a hub);
    `python`: another interpreter that imports ms-swift (the classic ModelScope client's environment).
    """
    with tempfile.TemporaryDirectory(prefix="swiftreg-swift-") as tmp:
        jobs_path, results_path = Path(tmp, "jobs.json"), Path(tmp, "results.json")
        jobs_path.write_text(json.dumps(list(jobs)))
        env_extra = dict(env or {})
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MODELSCOPE_OFFLINE="1",
                   PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
                   # peft writes target_modules from a set: a fixed hash seed makes saves reproducible
                   PYTHONHASHSEED="0")
        env.update(env_extra)
        done = subprocess.run([python or swift_python(), str(SCRIPT), str(jobs_path), str(results_path)],
                              capture_output=True, text=True, env=env, timeout=timeout)
        if done.returncode != 0 or not results_path.exists():
            raise SwiftEnvironmentError(
                f"the ms-swift batch failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(results_path.read_text())
