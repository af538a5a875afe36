"""Real `swiftreg worker` processes sharing one queue: 3 on PostgreSQL, 2 on SQLite.

Each job runs to completion exactly once; a worker SIGKILLed in the middle of a job stops
heartbeating, its job is requeued and finished by another worker; SIGTERM lets a worker finish the
job in hand and exit. Jobs are the diagnostic `sleep` kind, which appends `job attempt pid start|done`
to a record file: the record is the evidence of who ran what, and how often.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from click.testing import CliRunner

from registry.cli import main
from registry.jobs import JobQueue
from registry.service import Registry
from tests.helpers.server import registry_env

WORKER_ARGS = ["--heartbeat", "0.2", "--stale-after", "4", "--poll", "0.1", "--exit-when-idle"]


def _start_worker(home: Path, database_url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "registry.cli", "worker", *WORKER_ARGS, *extra],
                            env=registry_env(home, database_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _records(path: Path) -> list[tuple[int, int, int, str]]:
    if not path.exists():
        return []
    return [(int(j), int(a), int(p), e) for j, a, p, e in (line.split() for line in path.read_text().splitlines())]


def test_workers_run_each_job_exactly_once_and_a_killed_workers_job_is_finished_by_another(
        database_url: str, tmp_path: Path) -> None:
    workers = 3 if database_url.startswith("postgresql") else 2
    home, record = tmp_path / "home", tmp_path / "record.txt"
    reg = Registry(home=home, database_url=database_url)
    queue = JobQueue(reg.db.engine)
    victim, _ = queue.submit("sleep", {"seconds": 3, "record": str(record)}, key="victim")  # oldest: claimed first
    others = [queue.submit("sleep", {"seconds": 0.3, "record": str(record)}, key=f"job-{i}")[0] for i in range(19)]
    procs = [_start_worker(home, database_url) for _ in range(workers)]
    try:
        starts = _wait(lambda: [r for r in _records(record) if r[0] == victim.id and r[3] == "start"], 60,
                       "the long job to start")
        killed_pid = starts[0][2]
        assert killed_pid in {p.pid for p in procs}
        os.kill(killed_pid, signal.SIGKILL)
        for p in procs:
            p.wait(timeout=120)
        outputs = {p.pid: p.stdout.read() for p in procs}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    killed = next(p for p in procs if p.pid == killed_pid)
    assert killed.returncode == -signal.SIGKILL
    assert all(p.returncode == 0 for p in procs if p is not killed), outputs

    jobs = {j.id: j for j in queue.list(limit=100)}
    assert len(jobs) == 20 and all(j.status == "succeeded" for j in jobs.values()), \
        [(j.id, j.status, j.log) for j in jobs.values()]
    rows = _records(record)
    done = Counter(j for j, _, _, e in rows if e == "done")
    started = Counter(j for j, _, _, e in rows if e == "start")
    assert done == Counter({j: 1 for j in jobs})                    # every job completed exactly once
    assert all(started[j.id] == 1 and jobs[j.id].attempts == 1 for j in others)   # and ran once
    # the killed worker's job: started twice, finished once, by another worker, on its second attempt
    assert started[victim.id] == 2 and jobs[victim.id].attempts == 2
    finisher = [p for j, _, p, e in rows if j == victim.id and e == "done"]
    assert finisher[0] != killed_pid and str(finisher[0]) in jobs[victim.id].worker
    assert f":{killed_pid} stopped heartbeating" in jobs[victim.id].log and "requeued" in jobs[victim.id].log
    # the work was shared: every surviving worker ran something
    survivors = {p.pid for p in procs if p is not killed}
    assert survivors <= {p for _, _, p, e in rows if e == "done"}
    reg.close()


def test_sigterm_finishes_the_job_in_hand_and_claims_no_other(database_url: str, tmp_path: Path) -> None:
    home, record = tmp_path / "home", tmp_path / "record.txt"
    reg = Registry(home=home, database_url=database_url)
    queue = JobQueue(reg.db.engine)
    first, _ = queue.submit("sleep", {"seconds": 1.5, "record": str(record)})
    second, _ = queue.submit("sleep", {"seconds": 0, "record": str(record)})
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "worker", "--heartbeat", "0.2", "--poll", "0.1"],
                            env=registry_env(home, database_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        _wait(lambda: _records(record), 60, "the first job to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "SIGTERM: finishing the current job" in out
    assert queue.get(first.id).status == "succeeded"
    assert queue.get(second.id).status == "queued"  # left for the next worker
    reg.close()


def test_jobs_commands_list_show_log_and_cancel(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SWIFTREG_URL", raising=False)
    monkeypatch.delenv("SWIFTREG_DATABASE_URL", raising=False)
    runner = CliRunner()
    ran = runner.invoke(main, ["jobs", "submit", "sleep", "--param", "seconds=0", "--key", "k1", "--json"])
    assert ran.exit_code == 0, ran.output
    job = json.loads(ran.output)
    assert job["status"] == "succeeded" and job["worker"].startswith("inline:")  # inline on the embedded registry
    queued = runner.invoke(main, ["jobs", "submit", "sleep", "--params", '{"seconds": 5}', "--backend", "worker",
                                  "--json"])
    queued_id = json.loads(queued.output)["id"]
    listing = runner.invoke(main, ["jobs", "ls"])
    assert listing.exit_code == 0 and f"{queued_id}  sleep    queued" in listing.output
    shown = runner.invoke(main, ["jobs", "show", str(job["id"])])
    assert "succeeded" in shown.output and '"seconds": 0' in shown.output
    assert "slept 0 s" in runner.invoke(main, ["jobs", "logs", str(job["id"])]).output
    assert runner.invoke(main, ["jobs", "cancel", str(queued_id)]).output.strip() == f"job {queued_id} cancelled"
    again = runner.invoke(main, ["jobs", "cancel", str(queued_id)])
    assert again.exit_code == 1 and "already cancelled" in again.output and "Traceback" not in again.output
    bad = runner.invoke(main, ["jobs", "submit", "merge", "--param", "adapter=team/a@v1"])
    assert bad.exit_code == 1 and "needs the parameter(s) base, push" in bad.output
    failed = runner.invoke(main, ["jobs", "submit", "sleep", "--param", "seconds=0", "--param", "fail=boom"])
    assert failed.exit_code == 1 and "asked to fail: boom" in failed.output
