"""Jobs as Ray tasks: `swiftreg worker --backend ray [--ray-address ADDR]`.

The driver (this process) claims jobs from the database exactly as a `swiftreg worker` does, so the
queue's guarantees hold whatever mix of backends serves it; it then dispatches each claimed job as a
Ray task, heartbeats for every job in flight, and keeps as many in flight as the cluster has CPUs.
The task runs the job with the same runner as every other backend and writes its result to the
database itself (a compare-and-set on the driver's claim). Work on a model (merge, unmerge,
combine) asks for `num_gpus=1` when the cluster has GPUs, and runs on the GPU Ray gives it; a job that needs
CUDA (`device: cuda`) is claimed only when the cluster has GPUs, and waits in the queue otherwise.

Every node needs the registry's database and blob store: PostgreSQL for the database and the
registry home on shared storage (the same path on each node). A task that dies with its node is
given back to the queue at once (`JobQueue.release`), to be retried up to the attempt limit.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import JobError
from ..params import DIGITS
from .queue import JobInfo, JobQueue
from .runner import GPU_KINDS
from .worker import WorkerStats

if TYPE_CHECKING:
    from ..service import Registry

log = logging.getLogger("swiftreg.worker.ray")


def _task(config: dict[str, Any], job: JobInfo, worker_id: str) -> dict[str, Any]:
    """Runs on a Ray worker: open the registry, run the job, record its outcome in the database."""
    from ..service import Registry
    from .runner import run_job

    for key, value in config.get("env", {}).items():
        os.environ.setdefault(key, value)
    reg = Registry(home=config["home"], database_url=config["database_url"])
    try:
        import ray

        queue = JobQueue(reg.db.engine, max_attempts=config["max_attempts"])
        from .devices import worker_device

        # Ray gave this task a GPU (num_gpus=1, CUDA_VISIBLE_DEVICES set to it): the job runs there, if torch sees
        # it (a cluster can declare GPUs it has not got; then "auto" runs on the CPU and "cuda" fails clearly)
        gpu = worker_device("auto") if ray.get_gpu_ids() else None
        ok, result, text = run_job(reg, job, still_ours=lambda: queue.heartbeat(job.id, worker_id), device=gpu)

        result["ray_node"] = socket.gethostname()
        result["ray_pid"] = os.getpid()
        result["ray_gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
        recorded = queue.finish(job.id, worker_id, succeeded=ok, result=result, log=text)
        return {"job": job.id, "ok": ok, "recorded": recorded}
    finally:
        reg.close()


def connect(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address` ("auto", "ray://host:10001", "host:6379"), or start a local one."""
    try:
        import ray
    except ImportError:
        raise JobError("the ray backend needs Ray installed beside swiftreg: pip install ray") from None

    if ray.is_initialized():
        return
    _reachable(address)
    try:
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - whatever Ray raises, the user needs the address and the reason
        raise JobError(f"could not connect to Ray at {address or 'a new local instance'}: {exc}") from None


def _reachable(address: str | None) -> None:
    """Fail in seconds, not minutes, on a host:port nothing listens on (Ray itself retries for long)."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not DIGITS.fullmatch(port):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise JobError(f"could not connect to Ray at {address}: {exc.strerror or exc}; start the cluster "
                       "(`ray start --head`) or give its address (host:6379, ray://host:10001)") from None


class RayDriver:
    def __init__(self, reg: "Registry", queue: JobQueue, *, worker_id: str | None = None,
                 kinds: Iterable[str] | None = None, heartbeat: float = 10.0, poll: float = 1.0,
                 max_in_flight: int | None = None) -> None:
        self.reg, self.queue = reg, queue
        self.worker_id = worker_id or f"ray:{socket.gethostname()}:{os.getpid()}"
        self.kinds = list(kinds) if kinds else None
        self.heartbeat, self.poll = heartbeat, poll
        self.max_in_flight = max_in_flight
        self.stopping = threading.Event()
        self.stats = WorkerStats()

    def stop(self) -> None:
        self.stopping.set()

    def _config(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if k.startswith("SWIFTREG_") and k not in ("SWIFTREG_URL",
                                                                                               "SWIFTREG_TOKEN")}
        return {"home": str(self.reg.home), "database_url": self.reg.database_url,
                "max_attempts": self.queue.max_attempts, "env": env}

    def run(self, *, ids: Iterable[int] | None = None, exit_when_idle: bool = False) -> WorkerStats:
        import ray

        ids = list(ids) if ids is not None else None
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0) > 0
        limit = self.max_in_flight or max(1, int(resources.get("CPU", 1)))
        remote = ray.remote(_task)
        config = self._config()
        in_flight: dict[Any, JobInfo] = {}
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(in_flight, beat_stop), daemon=True)
        beat.start()
        try:
            while True:
                if not self.stopping.is_set():
                    for stale in self.queue.requeue_stale():
                        self.stats.requeued += 1
                        log.info("job %s: %s after its worker stopped heartbeating", stale.id, stale.status)
                    while len(in_flight) < limit:
                        job = self.queue.claim(self.worker_id, kinds=self.kinds, ids=ids,
                                               devices=["cuda"] if gpus else ["cpu"])
                        if job is None:
                            break
                        options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
                        if gpus and job.kind in GPU_KINDS:
                            options["num_gpus"] = 1
                        in_flight[remote.options(**options).remote(config, job, self.worker_id)] = job
                        log.info("job %s (%s) dispatched to Ray%s", job.id, job.kind,
                                 " with a GPU" if "num_gpus" in options else "")
                if not in_flight:
                    if self.stopping.is_set():
                        break
                    if exit_when_idle and not any(self.kinds is None or j.kind in self.kinds
                                                  for j in self.queue.list(status="running", ids=ids, limit=1000)):
                        break
                    self.stopping.wait(self.poll)
                    continue
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=self.poll)
                for ref in done:
                    job = in_flight.pop(ref)
                    self._collect(ray, ref, job)
        finally:
            beat_stop.set()
            beat.join()
        return self.stats

    def _collect(self, ray: Any, ref: Any, job: JobInfo) -> None:
        self.stats.ran += 1
        self.stats.jobs.append(job.id)
        try:
            outcome = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the task died (worker or node lost): give the job back
            self.queue.release(job.id, self.worker_id, f"the Ray task died: {type(exc).__name__}: {str(exc)[:500]}")
            self.stats.failed += 1
            return
        if not outcome["recorded"]:
            self.stats.lost += 1
        elif outcome["ok"]:
            self.stats.succeeded += 1
        else:
            self.stats.failed += 1

    def _beat(self, in_flight: dict[Any, JobInfo], stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat):
            for job in list(in_flight.values()):
                try:
                    self.queue.heartbeat(job.id, self.worker_id)
                except Exception:  # noqa: BLE001 - a database blip: the next beat tries again
                    log.exception("heartbeat of job %s failed", job.id)
