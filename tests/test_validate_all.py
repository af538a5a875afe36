"""`swiftreg validate-all` over a seeded registry: clean first, then three revisions corrupted in the
store (a tensor byte flipped, a tensor rewritten with a wrong shape, a config edited) are reported
with the check and the reason, as regressions, and the command exits 1; JSON and JUnit reports;
`validation show` history; the same validation run by `swiftreg worker` processes on PostgreSQL.

Swift revisions are loaded with the real ms-swift (the oracle environment): this tier never skips.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from registry.cli import main
from registry.service import Registry
from tests.helpers.seeded import ADAPTERS, seed_registry
from tests.helpers.server import registry_env

CORRUPTED = {"team/plain@1", "team/rslora@1", "team/swift-plain@1"}


def _blob(reg: Registry, ref: str, path: str) -> Path:
    digest = next(f["sha256"] for f in reg.show(ref).manifest["files"] if f["path"] == path)
    blob = reg.store.path(digest)
    os.chmod(blob, 0o644)
    return blob


def _corrupt(reg: Registry) -> None:
    # 1. one byte of tensor data flipped in the store (the header, hence the shapes, untouched)
    blob = _blob(reg, "team/plain@1", "adapter_model.safetensors")
    data = bytearray(blob.read_bytes())
    data[-2] ^= 0x40  # float32 little-endian: the top mantissa bit of the last element
    blob.write_bytes(bytes(data))
    # 2. a tensor rewritten with a shape the base model cannot take
    blob = _blob(reg, "team/rslora@1", "adapter_model.safetensors")
    tensors = load_file(str(blob))
    key = next(k for k in sorted(tensors) if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = np.zeros((tensors[key].shape[0], 48), dtype=tensors[key].dtype)
    save_file(tensors, str(blob), metadata={"format": "pt"})
    # 3. a config edited: r no longer matches the tensors
    blob = _blob(reg, "team/swift-plain@1", "default/adapter_config.json")
    config = json.loads(blob.read_text())
    config["r"] = 16
    blob.write_text(json.dumps(config))


@pytest.fixture
def cli(tmp_path: Path, monkeypatch, swift_python: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SWIFTREG_URL", raising=False)
    monkeypatch.delenv("SWIFTREG_DATABASE_URL", raising=False)
    monkeypatch.setenv("SWIFTREG_SWIFT_PYTHON", swift_python)

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, list(args))

    return run


def test_a_seeded_registry_validates_clean_and_corrupted_revisions_fail_with_the_check_and_reason(
        tmp_path: Path, cli) -> None:
    reg = Registry(home=tmp_path / "home")
    revisions = seed_registry(reg, tmp_path / "seed")
    assert len(revisions) == 13 and {"gpt2", "llama"} == {b for b, _, _ in ADAPTERS.values()}

    first = cli("validate-all", "--batch-size", "16", "--json-report", str(tmp_path / "r1.json"),
                "--junit", str(tmp_path / "r1.xml"))
    assert first.exit_code == 0, first.output
    report = json.loads((tmp_path / "r1.json").read_text())
    assert report["revisions"] == 13 and report["failed"] == 0 and report["regressions"] == []
    by_check: dict[str, set[str]] = {}
    for r in report["results"]:
        by_check.setdefault(r["check"], set()).add(r["revision"])
        assert r["library_versions"]["peft"] and r["library_versions"]["torch"]
    assert all(by_check[c] == set(revisions) for c in ("integrity", "config", "roundtrip", "peft_load", "outputs"))
    swift_revisions = {r for r in revisions if ADAPTERS[r.split("@")[0]][1] == "swift"}
    assert by_check["swift_load"] == swift_revisions  # ms-swift loaded every Swift revision and agreed with peft
    swift_rows = [r for r in report["results"] if r["check"] == "swift_load"]
    assert all(r["library_versions"]["swift-env:ms-swift"] == "4.6.0" for r in swift_rows)
    assert all(c["max_abs"] < 1e-5 for r in swift_rows for c in r["metrics"]["comparisons"].values())
    suite = ET.parse(tmp_path / "r1.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(report["results"]) == 13 * 5 + 4
    assert "team/swift-multi@1" in first.output and "0 regressions" in first.output

    _corrupt(reg)
    second = cli("validate-all", "--batch-size", "16", "--no-swift", "--json-report", str(tmp_path / "r2.json"),
                 "--junit", str(tmp_path / "r2.xml"))
    assert second.exit_code == 1, second.output
    report = json.loads((tmp_path / "r2.json").read_text())
    failing = {(r["revision"], r["check"]): r for r in report["results"] if not r["passed"]}
    assert {rev for rev, _ in failing} == CORRUPTED
    assert {(r["revision"], r["check"]) for r in report["regressions"]} == set(failing)
    flipped = failing["team/plain@1", "integrity"]["reason"]
    assert flipped.startswith("adapter_model.safetensors: stored bytes hash to sha256:")
    assert "moved from the stored reference" in failing["team/plain@1", "outputs"]["reason"]
    shape = failing["team/rslora@1", "config"]["reason"]
    assert "model.layers.0.self_attn.q_proj: adapter expects a base weight of shape [32, 48]" in shape
    edited = failing["team/swift-plain@1", "config"]["reason"]
    assert "has 4 rows but the rank for" in edited and "is 16" in edited
    regression = next(r for r in report["regressions"] if r["revision"] == "team/rslora@1")
    assert regression["previous"]["passed"] and regression["previous"]["library_versions"]["peft"]
    assert "REGRESSED team/rslora@1 config:" in second.output and "passed before, run" in second.output
    assert "Traceback" not in second.output
    suite = ET.parse(tmp_path / "r2.xml").getroot()
    failures = {(c.get("classname"), c.get("name")): c.find("failure") for c in suite.iter("testcase")}
    assert int(suite.get("failures")) == len(failing)
    assert failures["team/swift-plain@1", "config"].get("type") == "regression"
    assert "has 4 rows" in failures["team/swift-plain@1", "config"].get("message")
    assert failures["lab/gpt2-dora@1", "outputs"] is None

    # a check that already failed last time is a failure, not a new regression: exit 1 by default (--fail-on any),
    # exit 0 with --fail-on regression
    third = cli("validate-all", "--check", "integrity", "--namespace", "team", "--fail-on", "regression")
    assert third.exit_code == 0 and "FAILED team/plain@1 integrity" in third.output, third.output
    assert "VALIDATE-ALL PASSED (--fail-on regression)" in third.output.splitlines()[-1]
    assert cli("validate-all", "--check", "integrity", "--since", "1h").exit_code == 1
    assert "0 revisions" in cli("validate-all", "--since", "2099-01-01T00:00").output

    history = cli("validation", "show", "team/plain@1", "--check", "integrity")
    lines = history.output.splitlines()
    assert history.exit_code == 0 and lines[0] == "team/plain@1:"
    assert [("FAILED" in line, "ok " in line) for line in lines[1:] if "integrity" in line] == \
        [(True, False)] * 3 + [(False, True)]
    assert "peft=" in lines[1] and "stored bytes hash to" in history.output
    rows = json.loads(cli("validation", "show", "team/plain@1", "--json").output)
    assert rows[0]["library_versions"]["peft"] and {r["check"] for r in rows} >= {"integrity", "outputs"}
    bad = cli("validation", "show", "meta/llama-tiny@v1")
    assert bad.exit_code == 1 and "is a base model" in bad.output
    reg.close()


def test_validate_all_with_the_worker_backend_is_run_by_worker_processes(one_database_url: str,
                                                                         tmp_path: Path) -> None:
    database_url = one_database_url
    home = tmp_path / "home"
    reg = Registry(home=home, database_url=database_url)
    seed_registry(reg, tmp_path / "seed", namespace="lab")
    env = registry_env(home, database_url)
    workers = [subprocess.Popen([sys.executable, "-m", "registry.cli", "worker", "--poll", "0.2", "--heartbeat", "1",
                                 "--kind", "validate"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    try:
        done = subprocess.run([sys.executable, "-m", "registry.cli", "validate-all", "--backend", "worker",
                               "--namespace", "lab", "--batch-size", "1", "--no-swift", "--timeout", "300", "--json"],
                              env=env, capture_output=True, text=True, timeout=400)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["revisions"] == 4 and report["failed"] == 0 and report["checks"] == 4 * 5
    assert len(report["jobs"]) == 4 and all(j["status"] == "succeeded" for j in report["jobs"])
    assert not any(j["worker"].startswith("inline:") for j in report["jobs"])
    assert len({j["worker"] for j in report["jobs"]}) == 2  # both workers took batches
    reg.close()
