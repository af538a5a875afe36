"""The Ray backend on a real local Ray instance: merge, combine and validate jobs run as Ray tasks,
their results written to the database by the tasks; `swiftreg worker --backend ray --ray-address`
joins the same instance from another process.

One Ray session for the whole module (Ray takes seconds to start on two cores). It declares one GPU
so the dispatch rule is exercised: work on a model (merge, combine) asks Ray for `num_gpus=1` when
the cluster has GPUs, and the task sees the GPU Ray assigned it; validation does not ask for one.
A Ray that cannot start fails the module; it is never skipped.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.jobs.api import queue_of, run_jobs
from registry.service import Registry
from tests.helpers.models import build_base, make_peft_checkpoint
from tests.helpers.server import registry_env

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_cluster():  # type: ignore[no-untyped-def]
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reporting attempts from a machine without internet
    try:
        context = ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                           configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - a backend that cannot start is a failure, not a skip
        pytest.fail(f"a local Ray instance could not start: {exc}", pytrace=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()


def test_merge_combine_and_validate_run_as_ray_tasks_with_results_in_the_database(
        ray_cluster: str, one_database_url: str, tmp_path: Path) -> None:
    reg = Registry(home=tmp_path / "home", database_url=one_database_url)
    base = build_base("llama", tmp_path / "base")
    reg.push_base(base, "meta/llama-tiny", tag="v1")
    for i, (name, extra) in enumerate((("sql", {}), ("chat", {"use_rslora": True}))):
        make_peft_checkpoint(base, tmp_path / name, {"default": dict(r=4, lora_alpha=8, target_modules=[
            "q_proj", "v_proj"], **extra)}, seed=60 + i)
        reg.push(tmp_path / name, f"team/{name}", tag="v1", base_model="meta/llama-tiny@v1")
    jobs = [
        reg.submit_job("merge", {"adapter": "team/sql@v1", "base": "meta/llama-tiny@v1", "push": "meta/llama-sql",
                                 "device": "auto"}),
        reg.submit_job("combine", {"refs": ["team/sql@v1", "team/chat@v1"], "weights": [0.6, 0.4], "method": "cat",
                                   "base": "meta/llama-tiny@v1", "push": "team/mix"}),
        reg.submit_job("validate", {"revisions": ["team/sql@1", "team/chat@1"], "run_id": "ray-run", "swift": False}),
    ]
    assert all(j.status == "queued" for j in jobs)
    done = {j.kind: j for j in run_jobs(reg, [j.id for j in jobs], "ray")}
    assert {k: j.status for k, j in done.items()} == {"merge": "succeeded", "combine": "succeeded",
                                                      "validate": "succeeded"}, {k: j.log for k, j in done.items()}
    for job in done.values():
        assert job.worker.startswith("ray:") and job.result["ray_pid"] != os.getpid() and job.attempts == 1
        assert job.finished_at is not None and job.log
    assert done["merge"].result["ray_gpu_ids"] == ["0"] and done["combine"].result["ray_gpu_ids"] == ["0"]
    assert done["validate"].result["ray_gpu_ids"] == []
    merged = reg.show("meta/llama-sql")
    assert done["merge"].result["pushed"]["digest"] == merged.digest and done["merge"].result["passed"]
    assert {p["role"] for p in merged.parents} >= {"base", "adapter", "operation"}
    mix = reg.show("team/mix")
    assert done["combine"].result["pushed"]["digest"] == mix.digest
    assert all(c["passed"] for c in done["combine"].result["comparisons"])
    history = reg.validation_history("team/chat@1")
    assert {h["check"] for h in history} == {"integrity", "config", "roundtrip", "peft_load", "outputs"}
    assert all(h["passed"] and h["run_id"] == "ray-run" and h["job_id"] == done["validate"].id for h in history)
    assert done["validate"].result == {**done["validate"].result, "checks": 10, "failed": 0}

    # unmerge as a job (inline): by lineage, the original base comes back bit for bit
    back = reg.submit_job("unmerge", {"merged": "meta/llama-sql", "adapter": "team/sql@v1", "push": "meta/llama-back"},
                          backend="inline")
    assert back.status == "succeeded" and back.result["passed"], back.log
    assert reg.show("meta/llama-back").digest == reg.show("meta/llama-tiny@v1").digest

    # another process joins the same Ray instance by its address: `swiftreg worker --backend ray`
    queued = reg.submit_job("validate", {"revisions": ["team/mix@1"], "swift": False})
    sleeper = reg.submit_job("sleep", {"seconds": 0})
    worker = subprocess.run([sys.executable, "-m", "registry.cli", "worker", "--backend", "ray", "--ray-address",
                             ray_cluster, "--exit-when-idle", "--poll", "0.2"],
                            env=registry_env(reg.home, one_database_url), capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert "2 jobs run (2 succeeded, 0 failed)" in worker.stderr
    queue = queue_of(reg)
    for job_id in (queued.id, sleeper.id):
        job = queue.get(job_id)
        assert job.status == "succeeded" and job.worker.startswith("ray:") and job.result["ray_pid"] != os.getpid()
    # team/mix was combined and checked on meta/llama-tiny, so it is linked to it: all five checks run
    assert reg.show("team/mix@1").base_model == f"meta/llama-tiny@{reg.show('meta/llama-tiny@v1').number}"
    assert queue.get(queued.id).result["checks"] == 5
    assert {h["check"] for h in reg.validation_history("team/mix@1")} == {"integrity", "config", "roundtrip",
                                                                         "peft_load", "outputs"}
    reg.close()


def test_a_bad_ray_address_is_one_clear_error(tmp_path: Path, ray_cluster: str) -> None:
    env = registry_env(tmp_path / "home", f"sqlite:///{tmp_path / 'r.db'}")
    done = subprocess.run([sys.executable, "-m", "registry.cli", "worker", "--backend", "ray", "--ray-address",
                           "127.0.0.1:1", "--exit-when-idle"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "could not connect to Ray at 127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr
