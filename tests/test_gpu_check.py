"""`scripts/gpu-check --cpu`: the GPU check's own code (tier, bench, table, JSON) run at tiny sizes on the CPU.

The figures of a CPU run say nothing of the GPU's targets; what this proves is that the one command a GPU
machine will run works as it is: the models are built, `swiftreg merge` / PEFT / dd are timed, the combination
is measured against PEFT and float64, the `gpu` tier runs (with the CPU in the GPU's place) and passes, and one
table and the JSON come out. The same script in a fresh `pip install` of the package is tests/test_packaging.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.devices


def test_gpu_check_cpu_runs_the_tier_and_the_bench_and_prints_one_table(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-check"), "--cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("GPU check: CPU") and "torch " in lines[0] and "CUDA" in lines[0]
    for row in ("swiftreg merge, whole command, check included", "PEFT load + merge_and_unload + save_pretrained",
                "disk limit: the same bytes by dd", "PEFT / swiftreg", "swiftreg / disk", ">= 2x", "<= 1.5x",
                "combine 4 adapters, SVD to rank 16, peft", "error vs float64", "gpu test tier: "):
        assert any(row in line for line in lines), (row, done.stdout)
    assert lines[-1] == "gpu-check: ok"
    figures = json.loads(out.read_text())
    assert figures["mode"] == "cpu"
    tier = figures["tier"]
    assert tier["failed"] == 0 and tier["skipped"] == 0 and tier["passed"] == tier["tests"] >= 6, tier
    merge = figures["bench"]["merge"]
    assert merge["swiftreg_failures"] == merge["peft_failures"] == merge["disk_failures"] == 0
    assert merge["swiftreg_report"]["passed"] is True
    assert merge["bytes"] > 0 and merge["largest_shard_bytes"] < merge["bytes"]  # several shards
    for n in (2, 4):
        row = figures["bench"]["combine"][f"{n}_adapters"]
        assert 0 < row["swiftreg"]["rel_error_vs_float64"] < 1e-4 and 0 < row["peft"]["rel_error_vs_float64"] < 1e-4
