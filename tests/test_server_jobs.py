"""Jobs and validation history over HTTP: a real `swiftreg serve` queues jobs, a real `swiftreg worker`
beside it runs them; the Python client and the CLI over SWIFTREG_URL; auth per namespace."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from registry.cli import main
from registry.client import RemoteRegistry
from registry.errors import AccessDeniedError, InvalidJobError, JobConflictError, JobStateError, NotFoundError
from registry.service import Registry
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.server import registry_env, running_server

pytestmark = pytest.mark.server


def test_jobs_over_http_are_queued_run_by_a_worker_and_guarded_per_namespace(
        one_database_url: str, tmp_path: Path, monkeypatch) -> None:
    with running_server(tmp_path / "server", one_database_url) as server:
        team = RemoteRegistry(server.url, server.token("write", "team"), home=tmp_path / "c1")
        other = RemoteRegistry(server.url, server.token("write", "other"), home=tmp_path / "c2")
        params = {"adapter": "team/a@v1", "base": "team/base@v1", "push": "team/merged"}
        job = team.submit_job("merge", params, key="req-1")
        assert job.status == "queued" and job.namespace == "team" and job.kind == "merge"
        assert team.submit_job("merge", params, key="req-1").id == job.id  # a retried request: the same job
        with pytest.raises(JobConflictError, match="req-1"):
            team.submit_job("merge", {**params, "push": "team/other"}, key="req-1")
        with pytest.raises(InvalidJobError, match="needs the parameter"):
            team.submit_job("merge", {"adapter": "team/a@v1"})
        with pytest.raises(InvalidJobError, match="names a file on the server"):
            team.submit_job("sleep", {"seconds": 0, "record": "/tmp/x"})
        with pytest.raises(AccessDeniedError, match="does not allow read on namespace 'team'"):
            other.submit_job("merge", params)
        with pytest.raises(AccessDeniedError, match="does not allow read on namespace 'meta'"):
            team.submit_job("merge", {**params, "base": "meta/b@v1"})  # it may not read another namespace
        with pytest.raises(AccessDeniedError):
            other.job(job.id)
        assert other.jobs() == [] and [j.id for j in team.jobs()] == [job.id]
        assert team.cancel_job(job.id).status == "cancelled"
        with pytest.raises(JobStateError, match="already cancelled"):
            team.cancel_job(job.id)
        with pytest.raises(NotFoundError, match="no job 4242"):
            team.job(4242)
        anonymous = httpx.post(f"{server.url}/api/v1/jobs", json={"kind": "sleep", "params": {"seconds": 0}})
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"

        # an unscoped writer queues a validate job; a worker next to the server runs it
        reg = Registry(home=server.home, database_url=one_database_url)
        write_peft_lora(tmp_path / "lora")
        reg.push(tmp_path / "lora", "team/lora", tag="v1")
        writer = RemoteRegistry(server.url, server.write_token, home=tmp_path / "c3")
        queued = writer.submit_job("validate", {"revisions": ["team/lora@v1"]}, key="nightly-1")
        worker = subprocess.Popen([sys.executable, "-m", "registry.cli", "worker", "--poll", "0.1", "--exit-when-idle"],
                                  env=registry_env(server.home, one_database_url), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert worker.wait(timeout=300) == 0, worker.stderr.read()
        finally:
            if worker.poll() is None:
                worker.kill()
        done = team.job(queued.id)
        assert done.status == "succeeded" and done.result["checks"] == 3 and done.attempts == 1, done.log
        history = team.validation_history("team/lora@v1")
        assert {h["check"] for h in history} == {"integrity", "config", "roundtrip"}
        assert all(h["passed"] and h["job_id"] == queued.id for h in history)
        assert team.validation_history("team/lora@v1", check_kind="config")[0]["library_versions"]["peft"]
        with pytest.raises(AccessDeniedError):
            other.validation_history("team/lora@v1")

        # the CLI over SWIFTREG_URL: listing and history work, validate-all and worker are refused
        monkeypatch.setenv("SWIFTREG_URL", server.url)
        monkeypatch.setenv("SWIFTREG_TOKEN", server.write_token)
        monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "c4"))
        runner = CliRunner()
        listing = runner.invoke(main, ["jobs", "ls", "--json"])
        assert listing.exit_code == 0 and {j["id"] for j in json.loads(listing.output)} == {job.id, queued.id}
        shown = runner.invoke(main, ["validation", "show", "team/lora@v1"])
        assert shown.exit_code == 0 and "roundtrip  ok" in shown.output
        refused = runner.invoke(main, ["validate-all"])
        assert refused.exit_code == 1 and "not available over HTTP" in refused.output
        assert "Traceback" not in refused.output
        submitted = runner.invoke(main, ["jobs", "submit", "sleep", "--param", "seconds=0", "--json"])
        assert submitted.exit_code == 0 and json.loads(submitted.output)["status"] == "queued"
        reg.close()
        for client in (team, other, writer):
            client.close()
