"""Run one job of any kind in this process and say how it went: (succeeded, result, log tail).

Every backend (inline, `swiftreg worker`, a Ray task) ends here, so a job does the same work
wherever it runs. merge / unmerge / combine go through registry/ops.py (which checks every
result on a real model before it pushes); validate through validation.py; import through
registry/hubs/ (the server's way to import: its workers download from the hub, not the client);
`sleep` is a diagnostic.

Parameters are checked at submission (`check_params`), not only when a worker gets to them, so a
mistyped job is refused at once with the field at fault instead of failing hours later.
"""
from __future__ import annotations

import io
import logging
import os
import time
import traceback
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from converters.errors import FormatError

from ..errors import InvalidJobError, JobCancelledError, RegistryError, to_payload
from ..ids import parse_id
from .kinds import CHECKS, KINDS

if TYPE_CHECKING:
    from ..service import Registry
    from .queue import JobInfo

#: kind -> (required parameters, optional parameters)
PARAMS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "merge": (frozenset({"adapter", "base", "push"}), frozenset({"tag", "dtype", "device", "precision", "safe"})),
    "unmerge": (frozenset({"merged", "adapter", "push"}), frozenset({"tag", "device", "precision"})),
    "combine": (frozenset({"refs", "weights", "method", "push"}),
                frozenset({"tag", "semantics", "rank", "svd_clamp", "density", "majority_sign_method", "seed",
                           "base", "device"})),
    "validate": (frozenset({"revisions"}), frozenset({"run_id", "checks", "swift"})),
    "import": (frozenset({"source", "id"}),
               frozenset({"tag", "base_model", "subfolder", "message", "allow_nonfinite"})),
    "sleep": (frozenset({"seconds"}), frozenset({"record", "fail", "device"})),
}
assert tuple(PARAMS) == KINDS, "registry/jobs/kinds.py and PARAMS name the same kinds"
#: kinds that do tensor work on a model: a Ray task for them asks for a GPU when the cluster has one
GPU_KINDS = frozenset({"merge", "unmerge", "combine"})


def check_params(kind: str, params: dict[str, Any]) -> None:
    """Refuse parameters a kind does not take, or lacks, naming the field."""
    if kind not in PARAMS:
        raise InvalidJobError(f"unknown job kind {kind!r}; kinds: {', '.join(PARAMS)}")
    required, optional = PARAMS[kind]
    missing = sorted(required - set(params))
    if missing:
        raise InvalidJobError(f"a {kind} job needs the parameter(s) {', '.join(missing)}")
    unknown = sorted(set(params) - required - optional)
    if unknown:
        raise InvalidJobError(f"a {kind} job does not take {', '.join(unknown)}; it takes "
                              f"{', '.join(sorted(required | optional))}")
    ids = {"merge": ["adapter", "base", "push"], "unmerge": ["merged", "adapter", "push"],
           "combine": ["push"] + (["base"] if params.get("base") else []),
           "import": ["id"] + (["base_model"] if params.get("base_model") is not None else [])}.get(kind, [])
    for key in ids:
        if not isinstance(params[key], str):
            raise InvalidJobError(f"{kind} job: {key} must be a registry id (namespace/name[@ref])")
        parse_id(params[key], allow_ref=key not in ("push", "id"))
    if kind == "combine":
        refs, weights = params["refs"], params["weights"]
        if not (isinstance(refs, list) and all(isinstance(r, str) for r in refs) and len(refs) >= 2):
            raise InvalidJobError("combine job: refs must be a list of at least two registry ids")
        for ref in refs:
            parse_id(ref)
        if not (isinstance(weights, list) and len(weights) == len(refs)
                and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)):
            raise InvalidJobError(f"combine job: weights must be {len(refs)} numbers, one per ref")
    if kind == "validate":
        revisions = params["revisions"]
        if not (isinstance(revisions, list) and revisions and all(isinstance(r, str) for r in revisions)):
            raise InvalidJobError("validate job: revisions must be a non-empty list of ids (namespace/name@N)")
        for ref in revisions:
            parse_id(ref)
        checks = params.get("checks")
        if checks is not None and not (isinstance(checks, list) and checks
                                       and all(isinstance(c, str) and c in CHECKS for c in checks)):
            raise InvalidJobError(f"validate job: checks must be a non-empty list of {', '.join(CHECKS)}")
        if params.get("swift") is not None and not isinstance(params["swift"], bool):
            raise InvalidJobError("validate job: swift must be true or false")
    if kind == "import":
        _check_import(params)
    if kind == "sleep":
        seconds = params["seconds"]
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= 86400:
            raise InvalidJobError("sleep job: seconds must be a number from 0 to 86400")


def _check_import(params: dict[str, Any]) -> None:
    from ..hubs import parse_source
    from ..ids import check_tag
    from ..manifest import check_relpath

    if not isinstance(params["source"], str):
        raise InvalidJobError("import job: source must be hf://owner/name[@revision] or ms://owner/name[@revision]")
    parse_source(params["source"])
    for key in ("tag", "subfolder", "message"):
        if params.get(key) is not None and not isinstance(params[key], str):
            raise InvalidJobError(f"import job: {key} must be a string")
    if params.get("tag") is not None:
        check_tag(params["tag"])
    if (params.get("subfolder") or "").strip("/"):
        check_relpath(params["subfolder"].strip("/"))
    if params.get("allow_nonfinite") is not None and not isinstance(params["allow_nonfinite"], bool):
        raise InvalidJobError("import job: allow_nonfinite must be true or false")


def job_namespaces(kind: str, params: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(the namespace the job writes to, the namespaces it reads): what a token must allow."""
    reads: list[str] = []
    if kind == "merge":
        reads = [params["adapter"], params["base"]]
    elif kind == "unmerge":
        reads = [params["merged"], params["adapter"]]
    elif kind == "combine":
        reads = list(params["refs"]) + ([params["base"]] if params.get("base") else [])
    elif kind == "validate":
        reads = list(params["revisions"])
    elif kind == "import":
        reads = [params["base_model"]] if params.get("base_model") is not None else []
    read_ns = sorted({parse_id(r).namespace for r in reads})
    if kind in ("merge", "unmerge", "combine"):
        return parse_id(params["push"], allow_ref=False).namespace, read_ns
    if kind == "import":
        return parse_id(params["id"], allow_ref=False).namespace, read_ns
    return (read_ns[0] if len(read_ns) == 1 else None), read_ns


class _Capture(logging.Handler):
    def __init__(self, buffer: io.StringIO) -> None:
        super().__init__(logging.INFO)
        self.buffer = buffer
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.buffer.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - a log line must never fail a job
            pass


@contextmanager
def _captured() -> Iterator[io.StringIO]:
    """Log records and warnings raised while the job runs, for the job's log tail."""
    buffer = io.StringIO()
    handler = _Capture(buffer)
    root = logging.getLogger()
    root.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield buffer
        finally:
            root.removeHandler(handler)
            for w in caught:
                buffer.write(f"warning: {w.category.__name__}: {w.message}\n")


def _op_result(result: Any) -> tuple[bool, dict[str, Any], list[str]]:
    out = {"operation": result.operation, "passed": result.passed,
           "comparisons": [c.to_dict() for c in result.comparisons], "notes": list(result.notes),
           "pushed": None}
    if result.pushed is not None:
        out["pushed"] = {"repo": result.pushed.repo, "number": result.pushed.number, "digest": result.pushed.digest}
    lines = list(result.notes) + [f"{c.name}: max|diff| {c.max_abs:.3g} rel {c.rel_err:.3g} "
                                  f"{'ok' if c.passed else 'FAILED'}" for c in result.comparisons]
    if out["pushed"]:
        lines.append(f"pushed {out['pushed']['repo']}@{out['pushed']['number']} {out['pushed']['digest']}")
    return result.passed, out, lines


def _merge(reg: "Registry", p: dict[str, Any], job: "JobInfo", guard: Callable[[], None]
           ) -> tuple[bool, dict[str, Any], list[str]]:
    from .. import ops

    return _op_result(ops.merge(reg, p["adapter"], p["base"], push=p["push"], tag=p.get("tag"), dtype=p.get("dtype"),
                                device=p.get("device", "auto"), precision=p.get("precision", "float32"),
                                safe=bool(p.get("safe", False)), before_push=guard))


def _unmerge(reg: "Registry", p: dict[str, Any], job: "JobInfo", guard: Callable[[], None]
             ) -> tuple[bool, dict[str, Any], list[str]]:
    from .. import ops

    return _op_result(ops.unmerge(reg, p["merged"], p["adapter"], push=p["push"], tag=p.get("tag"),
                                  device=p.get("device", "auto"), precision=p.get("precision", "float32"),
                                  before_push=guard))


def _combine(reg: "Registry", p: dict[str, Any], job: "JobInfo", guard: Callable[[], None]
             ) -> tuple[bool, dict[str, Any], list[str]]:
    from .. import ops

    extra = {k: p[k] for k in ("semantics", "rank", "svd_clamp", "density", "majority_sign_method", "seed")
             if p.get(k) is not None}
    return _op_result(ops.combine(reg, list(p["refs"]), [float(w) for w in p["weights"]], p["method"],
                                  base_ref=p.get("base"), push=p["push"], tag=p.get("tag"),
                                  device=p.get("device", "auto"), before_push=guard, **extra))


def _validate(reg: "Registry", p: dict[str, Any], job: "JobInfo", guard: Callable[[], None]
              ) -> tuple[bool, dict[str, Any], list[str]]:
    from .revision_checks import validate_revisions

    outcomes = validate_revisions(reg, list(p["revisions"]), run_id=p.get("run_id"), job_id=job.id,
                                  checks=p.get("checks"), swift=p.get("swift"))
    failed = [o for o in outcomes if not o.passed]
    lines = [f"{o.revision}: {o.check} {'ok' if o.passed else 'FAILED: ' + o.reason}" for o in outcomes]
    return not failed, {"checks": len(outcomes), "failed": len(failed),
                        "failures": [o.to_dict() for o in failed]}, lines


def _import(reg: "Registry", p: dict[str, Any], job: "JobInfo", guard: Callable[[], None]
            ) -> tuple[bool, dict[str, Any], list[str]]:
    result = reg.import_from(p["source"], p["id"], tag=p.get("tag"), base_model=p.get("base_model"),
                             subfolder=p.get("subfolder"), message=p.get("message"),
                             allow_nonfinite=bool(p.get("allow_nonfinite")))
    rev = result.revision
    out = {"created": result.created, "already_imported": result.already_imported, "commit": result.commit,
           "files": list(result.files), "notices": list(result.notices), "revision": rev.to_dict()}
    verb = "already imported as" if result.already_imported else "imported as" if result.created else "same files as"
    return True, out, list(result.notices) + [f"{result.source}: {verb} {rev.repo}@{rev.number} {rev.digest}"]


def _sleep(reg: "Registry", p: dict[str, Any], job: "JobInfo", guard: Callable[[], None]
           ) -> tuple[bool, dict[str, Any], list[str]]:
    """Diagnostic: sleep, optionally append `job_id attempt pid` to a file (tests count executions)."""
    if p.get("record"):
        with open(p["record"], "a") as f:
            f.write(f"{job.id} {job.attempts} {os.getpid()} start\n")
    time.sleep(float(p["seconds"]))
    if p.get("record"):
        with open(p["record"], "a") as f:
            f.write(f"{job.id} {job.attempts} {os.getpid()} done\n")
    if p.get("fail"):
        raise RegistryError(f"sleep job {job.id} asked to fail: {p['fail']}")
    return True, {"slept": float(p["seconds"]), "pid": os.getpid()}, [f"slept {p['seconds']} s"]


RUNNERS: dict[str, Callable[["Registry", dict[str, Any], "JobInfo", Callable[[], None]],
                             tuple[bool, dict[str, Any], list[str]]]] = {
    "merge": _merge, "unmerge": _unmerge, "combine": _combine, "validate": _validate, "import": _import,
    "sleep": _sleep,
}


def on_worker_device(job: "JobInfo", device: str | None) -> dict[str, Any]:
    """The job's parameters with the worker's device in place: a worker declared one device (`cuda:1`) and
    computes there, check included, when the job said "auto" or "cuda[:N]" (the index names no GPU of this
    machine; one worker per GPU). A job that asked for the CPU keeps it; inline runs (no device) change nothing."""
    params = dict(job.params)
    if device is None or not ("device" in PARAMS[job.kind][1] or "device" in PARAMS[job.kind][0]):
        return params
    asked = str(params.get("device", "auto")).strip().lower()
    if asked == "auto" or (asked.split(":", 1)[0] == "cuda" and device.startswith("cuda")):
        params["device"] = device
    return params


def run_job(reg: "Registry", job: "JobInfo", still_ours: Callable[[], bool] | None = None,
            device: str | None = None) -> tuple[bool, dict[str, Any], str]:
    """Run `job` here; never raises for a job's own failure (that is the job's result).

    `still_ours` is asked right before a result is pushed: False (the job was cancelled or given
    to another worker meanwhile) fails the job with nothing pushed. `device` is the worker's own
    (`on_worker_device`); the result records where the job ran.
    """
    def guard() -> None:
        if still_ours is not None and not still_ours():
            raise JobCancelledError(f"job {job.id} was cancelled (or given to another worker) while it ran; its "
                                    "result was not pushed")

    started = time.monotonic()
    with _captured() as buffer:
        try:
            check_params(job.kind, job.params)
            params = on_worker_device(job, device)
            ok, result, lines = _retrying(lambda: RUNNERS[job.kind](reg, params, job, guard), job)
            if "device" in params:
                result.setdefault("device", params["device"])
        except (RegistryError, FormatError) as exc:  # a refusal: its message already says what and what to do
            ok, result, lines = False, _refusal(exc), [f"error: {exc}"]
        except Exception as exc:  # noqa: BLE001 - a crash of the job, kept with its traceback
            gpu = _device_failure(exc, job.params.get("device") if device is None else device)
            if gpu is not None:  # a GPU failure outside a shard's guard: the same clear, retryable error
                ok, result, lines = False, _refusal(gpu), [f"error: {gpu}"]
            else:
                ok, result = False, {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__}
                lines = [traceback.format_exc()]
    result["seconds"] = round(time.monotonic() - started, 3)
    log = buffer.getvalue() + "\n".join(lines)
    return ok, result, log


def _retrying(body: Callable[[], tuple[bool, dict[str, Any], list[str]]], job: "JobInfo"
              ) -> tuple[bool, dict[str, Any], list[str]]:
    """Run the job's body; a dependency that is down (UnavailableError: the object store unreachable or
    throttling, ...) is retried with exponential backoff within SWIFTREG_RETRIES / SWIFTREG_RETRY_SECONDS
    (a job is content-addressed work: running it again changes nothing twice). The last failure is raised."""
    from .. import constants
    from ..errors import UnavailableError

    started, attempt = time.monotonic(), 0
    while True:
        try:
            return body()
        except UnavailableError as exc:
            attempt += 1
            wait = min(max(float(exc.retry_after), 0.5 * 2 ** (attempt - 1)), 30.0)
            if attempt > constants.retries() or time.monotonic() + wait - started > constants.retry_seconds():
                raise
            print(f"job {job.id}: {exc}; trying again in {wait:.1f} s ({attempt}/{constants.retries()})")
            time.sleep(wait)


def _device_failure(exc: Exception, device: Any) -> RegistryError | None:
    """CUDA out of memory or a CUDA error that reached the runner un-named (registry/tensors/gpu_faults.py names
    the shard where it wraps the work): the registry's DeviceFailureError, or None for any other crash."""
    import sys

    if "torch" not in sys.modules:  # no torch loaded, no CUDA failure
        return None
    from ..tensors import gpu_faults

    where = str(device) if isinstance(device, str) and device.startswith("cuda") else "cuda"
    if isinstance(exc, sys.modules["torch"].cuda.OutOfMemoryError):
        return gpu_faults.out_of_memory(exc, where, None)
    if gpu_faults.is_device_lost(exc):
        return gpu_faults.device_lost(exc, where, None)
    return None


def _refusal(exc: RegistryError | FormatError) -> dict[str, Any]:
    """A refused job's result: the message, and the error's wire code and extra fields (registry/errors.py),
    from which a client rebuilds the same class (RemoteRegistry.import_from)."""
    error = to_payload(exc)[1]["error"]
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    return {"error": str(exc), "type": type(exc).__name__, "code": error["code"],
            **({"details": details} if details else {}),
            **({"retryable": True} if getattr(exc, "retryable", False) else {})}
