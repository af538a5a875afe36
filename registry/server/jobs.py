"""Jobs and validation history over HTTP, under /api/v1.

Thin, as every dialect: parse, check the token, call the service.

    POST /api/v1/jobs                    submit (idempotent with idempotency_key): 201 new, 200 existing
    GET  /api/v1/jobs                    list, newest first (a namespace-scoped token sees its namespaces')
    GET  /api/v1/jobs/{id}               one job: state, attempts, worker, result, log tail
    POST /api/v1/jobs/{id}/cancel        cancel a queued or running job
    GET  /api/v1/repos/{ns}/{name}/refs/{ref}/validations    the revision's recorded checks, newest first

Submitting needs a write token for the namespace the job writes to (merge/unmerge/combine: the push
target; import: the repository it imports into; validate: the revisions' namespaces, since it
records results there) and read access to
every namespace it reads. An idempotency key is unique per namespace (registry/jobs/queue.py
`key_scope`). The server only records jobs: `swiftreg worker` processes (or a Ray
driver) next to the database run them. The diagnostic `sleep` kind's `record` file is refused here:
a client never names a path on the server.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from ..errors import ForbiddenError, InvalidJobError
from ..jobs.api import queue_of
from ..jobs.queue import key_scope
from ..jobs.runner import check_params, job_namespaces
from ..params import text
from .auth import Caller, read_any, read_limit, read_ns, reads_open, require
from .lookup import registry_of
from .schemas import JOB_ID, JOB_STATUS, KIND, NAME, NS, REF, JobIn, JobOut, V1Route, error_docs, ref_id

router = APIRouter(prefix="/api/v1", tags=["jobs"], route_class=V1Route)


def _may_see(request: Request, caller: Caller, namespace: str | None, scope: str) -> None:
    """A job of one namespace needs `scope` there; one spanning several (namespace None) an unscoped token."""
    if namespace is not None:
        require(request, scope, namespace)
        return
    token = require(request, scope, None)
    if scope == "read" and reads_open(request):
        return  # what no token may read, every token may
    if token is not None and token.namespaces is not None:
        raise ForbiddenError("this job spans several namespaces: it needs a token without a namespace limit")


@router.post("/jobs", summary="Submit a job (merge, unmerge, combine, validate); workers run it",
             status_code=201, response_model=JobOut, responses=error_docs(400, 401, 403, 409, 422))
def submit_job(request: Request, body: JobIn, caller: Annotated[Caller, Depends(read_any)]) -> Response:
    if body.kind == "sleep" and "record" in body.params:
        raise InvalidJobError("sleep job: `record` names a file on the server and is not accepted over HTTP")
    check_params(body.kind, body.params)
    writes, reads = job_namespaces(body.kind, body.params)
    for namespace in reads:
        require(request, "write" if body.kind == "validate" else "read", namespace)
    if writes is not None:
        require(request, "write", writes)
    elif body.kind != "validate":  # sleep: not about any namespace; a diagnostic for unscoped writers
        _may_see(request, caller, None, "write")
    # keys are unique per namespace (key_scope): a conflict never names another namespace's job
    job, created = queue_of(registry_of(request)).submit(body.kind, body.params, key=body.idempotency_key,
                                                       namespace=writes, scope=key_scope(writes, reads))
    return JSONResponse(job.to_dict(), status_code=201 if created else 200)


@router.get("/jobs", summary="Jobs, newest first", response_model=list[JobOut], responses=error_docs(400, 401, 403))
def list_jobs(request: Request, caller: Annotated[Caller, Depends(read_any)], status: JOB_STATUS | None = None,
              kind: KIND | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
    found = registry_of(request).jobs(status=status, kind=kind, namespaces=read_limit(request, caller), limit=limit)
    return JSONResponse([j.to_dict() for j in found])


@router.get("/jobs/{job_id}", summary="One job: state, attempts, worker, result and log tail",
            response_model=JobOut, responses=error_docs(400, 401, 403, 404))
def get_job(request: Request, job_id: JOB_ID,
            caller: Annotated[Caller, Depends(read_any)]) -> Response:
    job = registry_of(request).job(job_id)
    _may_see(request, caller, job.namespace, "read")
    return JSONResponse(job.to_dict())


@router.post("/jobs/{job_id}/cancel", summary="Cancel a queued or running job", response_model=JobOut,
             responses=error_docs(400, 401, 403, 404, 409))
def cancel_job(request: Request, job_id: JOB_ID,
               caller: Annotated[Caller, Depends(read_any)]) -> Response:
    reg = registry_of(request)
    _may_see(request, caller, reg.job(job_id).namespace, "write")
    return JSONResponse(reg.cancel_job(job_id).to_dict())


@router.get("/repos/{ns}/{name}/refs/{ref}/validations", summary="A revision's recorded checks, newest first",
            responses=error_docs(400, 401, 403, 404))
def validations(request: Request, ns: NS, name: NAME, ref: REF, _: Annotated[Caller, Depends(read_ns)],
                check: Annotated[str | None, Query(max_length=64)] = None,
                limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> Response:
    if check is not None:
        text(check, "the check parameter")  # a NUL reaches no database
    return JSONResponse(registry_of(request).validation_history(ref_id(ns, name, ref), check_kind=check, limit=limit))
