"""The job commands: worker, jobs submit|ls|show|cancel|logs, validate-all, validation show.

`worker` and `validate-all` work on a registry's own database (the embedded one, or
SWIFTREG_DATABASE_URL's PostgreSQL); the other commands also work over HTTP (SWIFTREG_URL).
Backends are the vocabulary of registry/jobs/kinds.py: inline | worker | ray.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..jobs.kinds import BACKENDS, CHECKS, KINDS
from .common import doing, echo_json, json_option, local_registry, open_registry, shows

if TYPE_CHECKING:
    from ..jobs.queue import JobInfo

#: where `swiftreg worker` runs the jobs it claims (a worker does not queue them again)
WORKER_BACKENDS = tuple(b for b in BACKENDS if b != "worker")
_RAY_ADDRESS_HELP = "The Ray cluster (auto, ray://host:10001); default: a local Ray."


def _when(value: Any) -> str:
    """A moment in a table cell: to the second, or "-" for none."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _job_line(job: Any) -> str:
    """One row of `jobs ls`: id, kind, status, attempts, created, worker, and what the job works on."""
    what = {"merge": lambda p: f"{p.get('adapter')} into {p.get('base')} -> {p.get('push')}",
            "unmerge": lambda p: f"{p.get('adapter')} out of {p.get('merged')} -> {p.get('push')}",
            "combine": lambda p: f"{'+'.join(p.get('refs', []))} -> {p.get('push')}",
            "validate": lambda p: f"{len(p.get('revisions', []))} revisions" + (f" (run {p['run_id']})"
                                                                                 if p.get("run_id") else ""),
            "import": lambda p: f"{p.get('source')} -> {p.get('id')}",
            "sleep": lambda p: f"{p.get('seconds')} s"}.get(job.kind, lambda p: "")(job.params)
    note = f" [{job.waiting}]" if job.waiting else f" [needs {job.device}]" if job.device else ""
    return (f"{job.id:>6}  {job.kind:<8} {job.status:<9} {job.attempts:>2}  {_when(job.created_at)}  "
            f"{(job.worker or '-'):<24} {what}{note}").rstrip()


def _params(pairs: tuple[str, ...], params_json: str | None) -> dict[str, Any]:
    """A job's parameters from `--params JSON` and the `--param KEY=VALUE` pairs on top of it."""
    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except ValueError as exc:
            raise click.UsageError(f"--params is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise click.UsageError("--params must be a JSON object")
        params.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--param {pair!r}: use KEY=VALUE")
        try:
            params[key] = json.loads(value)   # numbers, lists, true/false
        except ValueError:
            params[key] = value               # plain strings need no quotes
    return params


@click.command()
@click.option("--backend", type=click.Choice(WORKER_BACKENDS), default="inline", show_default=True,
              help="inline: run each claimed job in this process; ray: dispatch them as Ray tasks.")
@click.option("--ray-address", metavar="ADDR", help=_RAY_ADDRESS_HELP)
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS),
              help="Only claim jobs of this kind (repeatable). Default: all.")
@click.option("--worker-id", help="How this worker is named in the jobs table (default: host:pid).")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N",
              help="The device this worker computes on: jobs that need CUDA are claimed only by a worker with one. "
                   "auto: the current CUDA device when torch sees one, else the CPU. One worker per GPU "
                   "(--device cuda:0, --device cuda:1, ...) on a machine with several.")
@click.option("--heartbeat", type=click.FloatRange(min=0.05), default=10.0, show_default=True,
              help="Seconds between heartbeats of the job in hand.")
@click.option("--stale-after", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Requeue a running job whose heartbeat is this many seconds old (its worker died).")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Attempts before a job whose workers keep dying is failed with the reason.")
@click.option("--poll", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              help="Seconds between looks at an empty queue.")
@click.option("--max-jobs", type=click.IntRange(min=1), help="Exit after running this many jobs.")
@click.option("--exit-when-idle", is_flag=True, help="Exit when no job is queued or running (batch use).")
@click.option("--webhooks/--no-webhooks", default=True, show_default=True,
              help="Also deliver webhook events (a dispatcher thread beside the jobs; `swiftreg webhook dispatch` "
                   "runs it alone).")
def worker(backend: str, ray_address: str | None, kinds: tuple[str, ...], worker_id: str | None, device: str,
           heartbeat: float, stale_after: float, max_attempts: int, poll: float, max_jobs: int | None,
           exit_when_idle: bool, webhooks: bool = True) -> None:
    """Claim jobs from the registry's database and run them until stopped (SIGTERM: finish the job, exit)."""
    import threading

    from ..jobs.api import queue_of
    from ..jobs.devices import worker_device
    from ..jobs.worker import Worker

    computes_on = worker_device(device) if backend != "ray" else None  # refused before the registry is opened
    reg = local_registry("worker")
    queue = queue_of(reg, max_attempts=max_attempts, stale_after=stale_after)

    def event(line: str) -> None:
        click.echo(line, err=True)

    dispatcher = reg.dispatcher(on_event=event) if webhooks else None
    if dispatcher is not None:
        threading.Thread(target=dispatcher.run, kwargs={"poll": min(poll, 1.0)}, name="webhooks",
                         daemon=True).start()

    if backend == "ray":
        from ..jobs.ray_backend import RayDriver, connect

        connect(ray_address)
        driver = RayDriver(reg, queue, worker_id=worker_id, kinds=kinds or None, heartbeat=heartbeat, poll=poll)
        import signal

        signal.signal(signal.SIGTERM, lambda *_: driver.stop())
        event(f"worker {driver.worker_id} (ray) on {reg.database_url.split('@')[-1]}")
        stats = driver.run(exit_when_idle=exit_when_idle)
    else:
        runner = Worker(reg, queue, worker_id=worker_id, kinds=kinds or None, heartbeat=heartbeat, poll=poll,
                        on_event=event, devices=[computes_on or "cpu"])
        runner.install_signal_handlers()
        event(f"worker {runner.worker_id} ready on {computes_on} (pid {os.getpid()})")
        stats = runner.run(max_jobs=max_jobs, exit_when_idle=exit_when_idle)
    if dispatcher is not None:
        dispatcher.stop()
    event(f"stopped: {stats.ran} jobs run ({stats.succeeded} succeeded, {stats.failed} failed), "
          f"{stats.requeued} stalled jobs given back")


@click.group()
def jobs() -> None:
    """Jobs recorded in the registry: merge, unmerge, combine, validate (and the diagnostic sleep)."""


@jobs.command(name="submit")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--param", "pairs", multiple=True, metavar="KEY=VALUE",
              help="A parameter (repeatable); VALUE is parsed as JSON when it is JSON (numbers, lists).")
@click.option("--params", "params_json", metavar="JSON", help="All parameters as one JSON object.")
@click.option("--key", help="Idempotency key: submitting the same key again returns the first job.")
@click.option("--backend", type=click.Choice(BACKENDS),
              help="inline: run it now here (default on the embedded registry); worker: queue it for "
                   "`swiftreg worker` (always so over HTTP); ray: run it now on Ray.")
@click.option("--ray-address", metavar="ADDR", help=_RAY_ADDRESS_HELP)
@json_option()
def jobs_submit(kind: str, pairs: tuple[str, ...], params_json: str | None, key: str | None, backend: str | None,
                ray_address: str | None, as_json: bool) -> None:
    """Submit a job of KIND, e.g. `swiftreg jobs submit merge --param adapter=team/a@v1 --param base=meta/b@v1
    --param push=meta/b-a`."""
    from .. import constants

    reg = open_registry()
    remote = constants.url() is not None
    if backend is None:
        backend = "worker" if remote else "inline"
    if remote and backend != "worker":
        raise click.UsageError("over HTTP jobs are only queued (--backend worker): the server's workers run them")
    job = reg.submit_job(kind, _params(pairs, params_json), key=key, backend=backend, ray_address=ray_address)
    if as_json:
        echo_json(job.to_dict())
    else:
        click.echo(_job_line(job))
        if job.status == "failed":
            click.secho(f"job {job.id} failed: {(job.result or {}).get('error') or 'see swiftreg jobs logs'}",
                        fg="red", err=True)
    if job.status == "failed":
        sys.exit(1)


@jobs.command(name="ls")
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
              help="Only jobs in this state.")
@click.option("--kind", type=click.Choice(KINDS), help="Only jobs of this kind.")
@click.option("--limit", type=click.IntRange(min=1, max=10000), default=50, show_default=True,
              help="At most this many jobs.")
@shows(lambda found: [j.to_dict() for j in found], lambda found: _print_jobs(found))
def jobs_ls(status: str | None, kind: str | None, limit: int) -> list[JobInfo]:
    """List jobs, newest first."""
    return open_registry().jobs(status=status, kind=kind, limit=limit)


def _print_jobs(found: list[JobInfo]) -> None:
    click.echo(f"{'id':>6}  {'kind':<8} {'status':<9} {'#':>2}  {'created (UTC)':<19}  {'worker':<24} what")
    for job in found:
        click.echo(_job_line(job))


@jobs.command(name="show")
@click.argument("job_id", type=int)
@shows(lambda job: job.to_dict(), lambda job: _print_job(job))
def jobs_show(job_id: int) -> JobInfo:
    """The job JOB_ID: parameters, state, attempts, worker and result."""
    return open_registry().job(job_id)


def _print_job(job: JobInfo) -> None:
    click.echo(f"job {job.id}: {job.kind}, {job.status} (attempt {job.attempts})")
    for label, value in (("params", json.dumps(job.params)), ("worker", job.worker or "-"),
                         ("created", _when(job.created_at)), ("started", _when(job.started_at)),
                         ("heartbeat", _when(job.heartbeat_at)), ("finished", _when(job.finished_at)),
                         ("key", job.idempotency_key or "-")):
        click.echo(f"  {label:<10} {value}")
    if job.result is not None:
        click.echo(f"  {'result':<10} {json.dumps(job.result, default=str)[:2000]}")


@jobs.command(name="cancel")
@click.argument("job_id", type=int)
def jobs_cancel(job_id: int) -> None:
    """Cancel the job JOB_ID, queued or running (a running one's result is then dropped)."""
    job = open_registry().cancel_job(job_id)
    click.echo(f"job {job.id} cancelled")


@jobs.command(name="logs")
@click.argument("job_id", type=int)
def jobs_logs(job_id: int) -> None:
    """The log tail the job JOB_ID recorded (its last 16,000 characters)."""
    click.echo(open_registry().job(job_id).log or "(no log yet)")


@click.command(name="validate-all")
@click.option("--since", metavar="AGE|DATE", help="Only revisions created since: 24h, 30m, 7d or an ISO date.")
@click.option("--namespace", help="Only this namespace.")
@click.option("--backend", type=click.Choice(BACKENDS), default="inline", show_default=True,
              help="inline: here; worker: queue for `swiftreg worker` processes and wait; ray: on a Ray cluster.")
@click.option("--ray-address", metavar="ADDR", help=_RAY_ADDRESS_HELP)
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Revisions per validate job (one ms-swift process per job). Default: 8 when a check loads a "
                   "model (peft_load, swift_load, outputs), 256 when the checks only read files.")
@click.option("--check", "checks", multiple=True,
              type=click.Choice(CHECKS),
              help="Only these checks (repeatable). Default: all.")
@click.option("--swift/--no-swift", default=None,
              help="Load Swift revisions with ms-swift (default: when SWIFTREG_SWIFT_PYTHON is set).")
@click.option("--json-report", type=click.Path(path_type=Path), help="Write the full report as JSON here.")
@click.option("--junit", type=click.Path(path_type=Path), help="Write a JUnit XML report here.")
@click.option("--timeout", type=click.FloatRange(min=1),
              help="With --backend worker: give up waiting after this many s.")
@click.option("--fail-on", type=click.Choice(["any", "regression"]), default="any", show_default=True,
              help="any: exit 1 when any check fails, on the first run too (a nightly on a broken registry goes "
                   "red). regression: only when a check that passed before fails now.")
@json_option("Print the report as JSON instead of the table.")
def validate_all(since: str | None, namespace: str | None, backend: str, ray_address: str | None,
                 batch_size: int | None,
                 checks: tuple[str, ...], swift: bool | None, json_report: Path | None, junit: Path | None,
                 timeout: float | None, fail_on: str, as_json: bool) -> None:
    """Check every adapter revision (integrity, config, round trip, peft and ms-swift loads, outputs) and record
    the results; exit 1 when a check fails (only on a regression with --fail-on regression) or a job could not
    run. The last line says which, in capitals."""
    reg = local_registry("validate-all")
    doing(interrupted="the checks already recorded are kept (`swiftreg validation show NS/NAME@REF`); "
                      "run it again for the rest")
    report = reg.validate_all(since=since, namespace=namespace, backend=backend, batch_size=batch_size,
                              swift=swift, checks=list(checks) or None, ray_address=ray_address, timeout=timeout,
                              on_event=lambda line: None)
    report.write(json_report, junit)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.table())
        for note in report.notes:
            click.secho(f"note: {note}", fg="yellow", err=True)
    failed = report.regressions if fail_on == "regression" else report.failures
    line = verdict_line(report, fail_on)
    click.secho(line, fg="red" if failed or report.failed_jobs else "green" if not report.failures else "yellow",
                bold=True, err=as_json)
    if failed or report.failed_jobs:
        sys.exit(1)


def verdict_line(report: Any, fail_on: str) -> str:
    """The last line of `validate-all`, for whoever reads only that (a cron mail, a CI log's tail)."""
    revisions = len({r.revision for r in report.failures})
    first = [r for r in report.failures if not r.regression]
    parts = [f"{len(report.failures)} of {len(report.results)} checks failed on {revisions} of "
             f"{len(report.revisions)} revisions ({len(report.regressions)} regressions, {len(first)} failing without "
             "a previous pass)"] if report.failures else [f"all {len(report.results)} checks passed on "
                                                          f"{len(report.revisions)} revisions"]
    if report.failed_jobs:
        parts.append(f"{len(report.failed_jobs)} validate jobs did not run")
    if report.failed_jobs or (report.regressions if fail_on == "regression" else report.failures):
        return "VALIDATE-ALL FAILED: " + "; ".join(parts) + " (exit 1)"
    if report.failures:  # --fail-on regression, failures that are not new
        return "VALIDATE-ALL PASSED (--fail-on regression): " + "; ".join(parts) + "; no new regressions"
    return "VALIDATE-ALL PASSED: " + "; ".join(parts)


@click.group()
def validation() -> None:
    """Recorded validation results."""


@validation.command(name="show")
@click.argument("repo_id", metavar="NAMESPACE/NAME[@REF]")
@click.option("--check", "check_kind", help="Only this check.")
@click.option("--limit", type=click.IntRange(min=1, max=10000), default=100, show_default=True,
              help="At most this many results.")
@json_option()
def validation_show(repo_id: str, check_kind: str | None, limit: int, as_json: bool) -> None:
    """The history of checks of the revision NAMESPACE/NAME[@REF], newest first, with the library versions of each."""
    rows = open_registry().validation_history(repo_id, check_kind=check_kind, limit=limit)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"{repo_id}: no validation recorded yet (swiftreg validate-all)")
        return
    click.echo(f"{rows[0]['revision']}:")
    for r in rows:
        versions = r.get("library_versions") or {}
        libs = " ".join(f"{k}={versions[k]}" for k in ("peft", "transformers", "torch") if k in versions)
        when = (r.get("finished_at") or "")[:19].replace("T", " ")
        click.echo(f"  {when}  {r['check']:<10} {'ok' if r['passed'] else 'FAILED':<6}  {libs}"
                   + (f"  run {r['run_id']}" if r.get("run_id") else ""))
        if not r["passed"] and r.get("reason"):
            click.echo(f"      {r['reason']}")


COMMANDS = (worker, jobs, validate_all, validation)
