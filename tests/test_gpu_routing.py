"""GPU jobs go to GPU workers, and GPU failures are clear, retryable job failures (issue 19, items 4 and 5).

No GPU here, so the routing is proven on the claim rule itself and with real `swiftreg worker` processes: a
worker record that declares "cuda:0" (what `swiftreg worker --device cuda:0` writes on a GPU machine) claims
the job that needs CUDA, a CPU worker never does, and `jobs ls` says the job waits for a CUDA worker. The
failures are injected where torch raises them, inside each shard's work (SWIFTREG_FAILPOINTS=merge:shard=oom),
on a real merge by a real worker process.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from registry.jobs import JobQueue
from registry.jobs.worker import Worker
from registry.service import Registry
from tests.helpers.cli import cli_on
from tests.helpers.server import registry_env

pytestmark = pytest.mark.devices

WORKER = [sys.executable, "-m", "registry.cli", "worker", "--heartbeat", "0.2", "--poll", "0.05", "--exit-when-idle",
          "--no-webhooks"]


def test_a_cuda_job_is_claimed_only_by_a_worker_that_declared_cuda(database_url: str, tmp_path: Path) -> None:
    reg = Registry(home=tmp_path / "home", database_url=database_url)
    try:
        queue = JobQueue(reg.db.engine)
        gpu_job = reg.submit_job("sleep", {"seconds": 0, "device": "cuda"})
        cpu_job = reg.submit_job("sleep", {"seconds": 0})
        pinned = reg.submit_job("sleep", {"seconds": 0, "device": "cuda:3"})  # any GPU worker: one per GPU
        assert (gpu_job.device, cpu_job.device, pinned.device) == ("cuda", None, "cuda")
        # no worker at all: the listing says why the CUDA jobs are not picked up
        listed = {j.id: j for j in reg.jobs()}
        assert listed[gpu_job.id].waiting == "waiting for a cuda worker (none is running)"
        assert listed[cpu_job.id].waiting is None
        # a CPU worker takes the job any worker can run, and nothing else
        claimed = queue.claim("cpu-worker", devices=["cpu"])
        assert claimed is not None and claimed.id == cpu_job.id
        assert queue.claim("cpu-worker", devices=["cpu"]) is None
        # a worker that declared cuda:0 takes the CUDA jobs, oldest first
        queue.register_worker("gpu-worker", ["cuda:0"])
        assert queue.get(gpu_job.id).waiting is None  # a CUDA worker is alive now
        first = queue.claim("gpu-worker", devices=["cuda:0"])
        second = queue.claim("gpu-worker", devices=["cuda:0"])
        assert [first and first.id, second and second.id] == [gpu_job.id, pinned.id]
        queue.forget_worker("gpu-worker")
        assert queue.live_workers() == []
    finally:
        reg.close()


def test_a_gpu_worker_takes_cuda_jobs_before_older_jobs_any_worker_can_run(tmp_path: Path) -> None:
    reg = Registry(home=tmp_path / "home")
    try:
        queue = JobQueue(reg.db.engine)
        older = reg.submit_job("sleep", {"seconds": 0})
        newer = reg.submit_job("sleep", {"seconds": 0, "device": "cuda"})
        claimed = queue.claim("gpu", devices=["cuda:0"])
        assert claimed is not None and claimed.id == newer.id  # its GPU is the scarce thing
        assert (queue.claim("gpu", devices=["cuda:0"]) or older).id == older.id
        # the inline backend (no devices declared) runs the caller's own jobs, whatever they ask for
        inline = reg.submit_job("sleep", {"seconds": 0, "device": "cuda"})
        assert queue.claim("inline", ids=[inline.id]) is not None
    finally:
        reg.close()


def test_real_workers_route_by_device_and_jobs_ls_says_what_a_cuda_job_waits_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, url = tmp_path / "home", f"sqlite:///{tmp_path / 'registry.db'}"
    reg = Registry(home=home, database_url=url)
    gpu_job = reg.submit_job("sleep", {"seconds": 0, "device": "cuda"})
    cpu_job = reg.submit_job("sleep", {"seconds": 0})
    run = cli_on(home, url, monkeypatch)
    try:
        done = subprocess.run([*WORKER, "--device", "cpu"], env=registry_env(home, url), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "ready on cpu" in done.stderr
        assert reg.job(cpu_job.id).status == "succeeded"
        assert reg.job(gpu_job.id).status == "queued"  # the CPU worker exited idle, leaving it
        line = next(row for row in run("jobs", "ls").output.splitlines() if row.split()[0] == str(gpu_job.id))
        assert "queued" in line and "waiting for a cuda worker (none is running)" in line
        shown = json.loads(run("jobs", "show", gpu_job.id, "--json").output)
        assert shown["device"] == "cuda" and shown["waiting"].startswith("waiting for a cuda worker")
        # the same loop a `swiftreg worker --device cuda:0` runs, its device declared (no GPU needed: a sleep)
        stats = Worker(reg, JobQueue(reg.db.engine), worker_id="gpu-0", devices=["cuda:0"], poll=0.05,
                       heartbeat=0.2).run(exit_when_idle=True)
        assert stats.jobs == [gpu_job.id]
        ran = reg.job(gpu_job.id)
        assert ran.status == "succeeded" and ran.worker == "gpu-0" and ran.result["device"] == "cuda:0"
        assert JobQueue(reg.db.engine).live_workers() == []  # a stopped worker removes its row
    finally:
        reg.close()


def test_worker_device_cuda_without_cuda_is_a_clear_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = cli_on(tmp_path / "home", f"sqlite:///{tmp_path / 'registry.db'}", monkeypatch)
    if torch.cuda.is_available():  # on a GPU machine the same command starts a worker on it
        started = run("worker", "--device", "cuda:0", "--exit-when-idle", "--no-webhooks", "--poll", "0.05")
        assert "ready on cuda:0" in started.stderr
        return
    refused = run("worker", "--device", "cuda:0", "--exit-when-idle", ok=False)  # exit 1, one line, no traceback
    assert "'cuda:0'" in refused.stderr and "sees no CUDA device" in refused.stderr and "--device cpu" in refused.stderr
    assert "unknown device 'tpu'" in run("worker", "--device", "tpu", ok=False).stderr


# ----- failures on the device -------------------------------------------------------------------------------

@pytest.fixture
def sharded(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A registry with a tiny Llama saved in 6 shards and a LoRA on every linear layer."""
    from tests.helpers.llama_shapes import TINY, build_base, build_lora

    base = build_base(tmp_path / "base", TINY)
    assert len(list(base.glob("*.safetensors"))) >= 3
    adapter = build_lora(tmp_path / "adapter", TINY, rank=4, alpha=8)
    home, url = tmp_path / "home", f"sqlite:///{tmp_path / 'registry.db'}"
    reg = Registry(home=home, database_url=url)
    reg.push_base(base, "meta/tiny", tag="v1")
    reg.push(adapter, "team/sql", tag="v1", base_model="meta/tiny@v1")
    yield reg, home, url
    reg.close()


def _merge_job(reg: Registry) -> int:
    return reg.submit_job("merge", {"adapter": "team/sql@v1", "base": "meta/tiny@v1", "push": "meta/tiny-sql"}).id


def _failed_retryably(reg: Registry, job_id: int, code: str, words: list[str]) -> None:
    failed = reg.job(job_id)
    assert failed.status == "failed", failed
    result = failed.result or {}
    assert result["code"] == code and result["retryable"] is True, result
    assert all(w in result["error"] for w in words), result["error"]
    assert "Traceback" not in (failed.log or "")
    assert "meta/tiny-sql" not in {r.repo for r in reg.list()}  # no revision, not even a partial one
    assert not list(reg.home.glob("swiftreg-merge-*"))  # and no scratch folder left behind


def test_cuda_out_of_memory_fails_a_real_workers_job_retryably_naming_the_shard(
        sharded) -> None:  # type: ignore[no-untyped-def]
    reg, home, url = sharded
    job = _merge_job(reg)
    env = registry_env(home, url) | {"SWIFTREG_FAILPOINTS": "merge:shard=oom"}
    done = subprocess.run([*WORKER, "--device", "cpu", "--max-jobs", "1"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    _failed_retryably(reg, job, "device_out_of_memory",
                      ["CUDA out of memory", "while working on shard model-00001", "needed 2.0 GiB", "--device cpu",
                       "smaller shards", "retried"])


def test_a_gpu_lost_mid_job_leaves_no_partial_revision_and_the_retry_succeeds(
        sharded, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    reg, _, _ = sharded
    queue = JobQueue(reg.db.engine)
    job = _merge_job(reg)
    monkeypatch.setenv("SWIFTREG_FAILPOINTS", "merge:shard@2=gpu-lost")  # shard 1 merged, then the GPU goes
    Worker(reg, queue, worker_id="w", devices=["cpu"], poll=0.05).run(max_jobs=1)
    _failed_retryably(reg, job, "device_lost", ["failed while working on shard model-00002",
                                                "unspecified launch failure", "retried"])
    monkeypatch.delenv("SWIFTREG_FAILPOINTS")
    again = _merge_job(reg)  # what `retryable` promises: the same work again, on a healthy device, succeeds
    Worker(reg, queue, worker_id="w", devices=["cpu"], poll=0.05).run(max_jobs=1)
    ran = reg.job(again)
    assert ran.status == "succeeded", ran.result
    assert ran.result["device"] == "cpu" and ran.result["pushed"]["repo"] == "meta/tiny-sql"


def test_cli_merge_out_of_memory_is_one_line_naming_the_shard(sharded, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    reg, home, url = sharded
    run = cli_on(home, url, monkeypatch)
    monkeypatch.setenv("SWIFTREG_FAILPOINTS", "merge:shard@3=oom")
    out = tmp_path / "merged"
    result = run("merge", "team/sql@v1", "--base", "meta/tiny@v1", "-o", out, "--device", "cpu", ok=False)
    assert "CUDA out of memory" in result.stderr and "shard model-00003" in result.stderr
    assert not out.exists()
