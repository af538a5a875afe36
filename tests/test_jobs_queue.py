"""The job queue on SQLite and PostgreSQL: idempotent submission, safe claims, heartbeats, requeue, cancel."""
from __future__ import annotations

import threading
import time

import pytest

from registry.errors import InvalidJobError, JobConflictError, JobNotFoundError, JobStateError
from registry.jobs import JobQueue
from registry.jobs.runner import check_params


@pytest.fixture
def queue(reg) -> JobQueue:
    return JobQueue(reg.db.engine, max_attempts=2, stale_after=0.5)


def test_submit_with_a_key_is_idempotent_and_a_reused_key_with_other_params_is_refused(reg, queue) -> None:
    first, created = queue.submit("sleep", {"seconds": 0}, key="retry-1", namespace="team")
    again, created_again = queue.submit("sleep", {"seconds": 0}, key="retry-1", namespace="team")
    assert created and not created_again and again.id == first.id
    assert len(queue.list()) == 1
    with pytest.raises(JobConflictError, match="retry-1.*other parameters"):
        queue.submit("sleep", {"seconds": 1}, key="retry-1", namespace="team")
    # keys are per namespace (issue 14): another namespace, or none, may use the same key for its own job
    other, created_other = queue.submit("sleep", {"seconds": 1}, key="retry-1", namespace="elsewhere")
    assert created_other and other.id != first.id
    plain, _ = queue.submit("sleep", {"seconds": 0})
    assert plain.id != first.id and plain.status == "queued" and plain.attempts == 0
    # through the service, the job is checked before it is recorded, and the same key is the same job
    job = reg.submit_job("sleep", {"seconds": 0}, key="svc-1")
    assert reg.submit_job("sleep", {"seconds": 0}, key="svc-1").id == job.id and job.status == "queued"


def test_unknown_kinds_and_bad_parameters_are_refused_naming_the_field(queue) -> None:
    with pytest.raises(InvalidJobError, match="unknown job kind 'train'"):
        queue.submit("train", {})
    with pytest.raises(InvalidJobError, match="needs the parameter.*push"):
        check_params("merge", {"adapter": "team/a@v1", "base": "meta/b@v1"})
    with pytest.raises(InvalidJobError, match="does not take colour"):
        check_params("sleep", {"seconds": 1, "colour": "red"})
    with pytest.raises(InvalidJobError, match="weights must be 2 numbers"):
        check_params("combine", {"refs": ["a/b@1", "a/c@1"], "weights": [1], "method": "cat", "push": "a/d"})
    with pytest.raises(Exception, match="namespace/name"):
        check_params("validate", {"revisions": ["not-an-id"]})


def test_claims_hand_out_the_oldest_job_once_and_finish_is_a_compare_and_set(queue) -> None:
    a, _ = queue.submit("sleep", {"seconds": 0})
    b, _ = queue.submit("sleep", {"seconds": 0})
    got = queue.claim("w1")
    assert got is not None and got.id == a.id and got.status == "running" and got.attempts == 1 and got.worker == "w1"
    assert queue.claim("w2").id == b.id
    assert queue.claim("w3") is None
    assert not queue.finish(a.id, "w2", succeeded=True, result={})  # not w2's job
    assert queue.finish(a.id, "w1", succeeded=True, result={"x": 1}, log="done")
    done = queue.get(a.id)
    assert done.status == "succeeded" and done.result == {"x": 1} and done.log == "done" and done.finished_at
    assert not queue.finish(a.id, "w1", succeeded=False, result={})  # already finished: nothing changes
    assert queue.get(a.id).status == "succeeded"


def test_concurrent_claimers_never_share_a_job(queue) -> None:
    ids = {queue.submit("sleep", {"seconds": 0})[0].id for _ in range(30)}
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (job := queue.claim(name)) is not None:
            with lock:
                claimed.append((name, job.id))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for _, j in claimed) == sorted(ids)  # every job once, none twice
    assert all(j.attempts == 1 and j.status == "running" for j in queue.list(limit=100))


def test_a_stalled_job_is_requeued_then_failed_with_the_reason_after_the_retry_limit(queue) -> None:
    job, _ = queue.submit("sleep", {"seconds": 0})
    queue.claim("dead-1")
    assert queue.heartbeat(job.id, "dead-1")
    assert queue.requeue_stale() == []  # fresh heartbeat: left alone
    time.sleep(0.7)
    [requeued] = queue.requeue_stale()
    assert requeued.status == "queued" and requeued.worker is None and "dead-1 stopped heartbeating" in requeued.log
    assert not queue.heartbeat(job.id, "dead-1")  # the dead worker lost its claim
    again = queue.claim("dead-2")
    assert again.id == job.id and again.attempts == 2
    time.sleep(0.7)
    [failed] = queue.requeue_stale()
    assert failed.status == "failed" and "no attempts left" in failed.result["error"]
    assert "dead-2 stopped heartbeating" in failed.result["error"] and "attempt 2 of 2" in failed.result["error"]
    assert queue.claim("w") is None


def test_release_gives_a_job_back_at_once(queue) -> None:
    job, _ = queue.submit("sleep", {"seconds": 0})
    queue.claim("driver")
    assert queue.release(job.id, "other", "x") is None
    back = queue.release(job.id, "driver", "the Ray task died")
    assert back.status == "queued" and "the Ray task died; requeued" in back.log


def test_cancel_a_queued_or_running_job_and_refuse_a_finished_one(queue) -> None:
    queued, _ = queue.submit("sleep", {"seconds": 0})
    running, _ = queue.submit("sleep", {"seconds": 0})
    assert queue.cancel(queued.id).status == "cancelled"
    claimed = queue.claim("w")
    assert claimed.id == running.id
    assert queue.cancel(running.id).status == "cancelled"
    assert not queue.heartbeat(running.id, "w")  # the worker learns at its next beat
    assert not queue.finish(running.id, "w", succeeded=True, result={})  # and its result is dropped
    assert queue.get(running.id).status == "cancelled"
    with pytest.raises(JobStateError, match="already cancelled"):
        queue.cancel(running.id)
    with pytest.raises(JobNotFoundError, match="no job 999"):
        queue.cancel(999)
    assert [j.id for j in queue.list(status="cancelled")] == [running.id, queued.id]


def test_inline_submission_runs_the_job_here_and_records_it(reg, tmp_path) -> None:
    record = tmp_path / "record.txt"
    job = reg.submit_job("sleep", {"seconds": 0, "record": str(record)}, key="inline-1", backend="inline")
    assert job.status == "succeeded" and job.attempts == 1 and job.worker.startswith("inline:")
    assert job.result["slept"] == 0 and "slept 0 s" in job.log
    assert reg.submit_job("sleep", {"seconds": 0, "record": str(record)}, key="inline-1", backend="inline").id == job.id
    assert len(record.read_text().splitlines()) == 2  # start + done: ran once, not twice
    failed = reg.submit_job("sleep", {"seconds": 0, "fail": "on purpose"}, backend="inline")
    assert failed.status == "failed" and "asked to fail: on purpose" in failed.result["error"]


def test_backends_are_inline_worker_ray_everywhere(reg) -> None:
    """One vocabulary: the default queues for `swiftreg worker`; the old spellings are refused by name."""
    from click.testing import CliRunner

    from registry.cli import main
    from registry.jobs.kinds import BACKENDS

    assert BACKENDS == ("inline", "worker", "ray")
    assert reg.submit_job("sleep", {"seconds": 0}).status == "queued"
    for old in ("queue", "local"):
        with pytest.raises(InvalidJobError, match=f"unknown backend '{old}'; backends: inline, worker, ray"):
            reg.submit_job("sleep", {"seconds": 0}, backend=old)
    refused = CliRunner().invoke(main, ["worker", "--backend", "local"])
    assert refused.exit_code == 2 and "'local' is not one of 'inline', 'ray'" in refused.output
