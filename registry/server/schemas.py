"""How /api/v1 reads a request and shapes an answer: the models of the published OpenAPI document, the
path parameters, and the route class that caps JSON bodies before FastAPI parses them.

JSON bodies are read with a cap (settings.max_json_bytes, max_manifest_bytes for a commit) before
FastAPI parses them: a Content-Length over the cap is refused unread, and a body that runs past it is
refused at the first byte over. Validation errors and registry refusals use the protocol's error shape.
"""
from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Callable, Coroutine, Literal

from fastapi import Path as PathParam
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Message

import converters

from .. import errors as E
from ..ids import check_name, parse_ref
from ..jobs.kinds import KINDS
from ..params import natural, unstorable
from .errors import answer, scrub_for

log = logging.getLogger("swiftreg.server")


# ----- request plumbing ----------------------------------------------------------------------------

class V1Route(APIRoute):
    """Caps JSON bodies before FastAPI reads them; answers validation errors and registry refusals in the
    protocol's shape (with the server's own folders taken out of the message)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        has_body = self.body_field is not None
        is_manifest = self.name == "push_revision"

        async def route_handler(request: Request) -> Response:
            if has_body:
                settings = request.app.state.settings
                request = await _capped(request, settings.max_manifest_bytes if is_manifest
                                        else settings.max_json_bytes)
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return answer(E.InvalidRequestError(_describe(exc.errors())))
            except (E.RegistryError, converters.FormatError) as exc:
                return _refusal(request, exc)

        return route_handler


def _refusal(request: Request, exc: E.RegistryError | converters.FormatError) -> Response:
    down = request.app.state.dependencies.refusal_for(exc)  # a dependency down: one log line per outage
    if down is not None:
        exc = down
    elif E.status_of(exc) >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return answer(exc, scrub_for(request.app.state.registry, str(exc)))


def _describe(errors: Any) -> str:
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


async def read_capped(request: Request, limit: int) -> bytes:
    """The request's body, read into memory: 413 past `limit` bytes (declared or sent), a clear error when the
    client goes away before its end."""
    declared = request.headers.get("content-length")
    if declared is not None and natural(declared, "Content-Length") > limit:
        raise E.RequestTooLargeError(f"the request body is {int(declared)} bytes; this route takes at most {limit}")
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise E.RequestTooLargeError(f"the request body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise E.ClientDisconnectedError("the client went away before the request body ended") from None
    return b"".join(chunks)


async def _capped(request: Request, limit: int) -> Request:
    """The request with its body read into memory, refused (413) past `limit` bytes."""
    body = await read_capped(request, limit)
    await run_in_threadpool(_refuse_unstorable_json, body)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return Request(request.scope, replay)


def _refuse_unstorable_json(body: bytes) -> None:
    """NaN/Infinity (not JSON, though Python reads them), NUL characters (PostgreSQL cannot store them) and
    lone surrogates ("\\ud800": no UTF-8 encoder takes them), in any string or key: 400.

    Anything else that is not valid JSON is left to FastAPI, which reports it as a validation error.
    """
    def constant(name: str) -> Any:
        raise E.RegistryError(f"{name} is not a JSON number")

    try:
        value = json.loads(body, parse_constant=constant) if body else None
    except (ValueError, RecursionError):
        return
    problem = unstorable(value)
    if problem is not None:
        raise E.RegistryError(f"{problem}: strings may not hold NUL characters or lone surrogates")


# ----- path parameters ---------------------------------------------------------------------------------
# Documented with the grammar (DESIGN.md section 2) but checked by registry.ids, so a bad one is
# answered 400 invalid_id with the parser's own message, as on every other surface.

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_DIGEST = r"^sha256:[0-9a-f]{64}$"
NS = Annotated[str, PathParam(description="namespace", examples=["team"],
                              json_schema_extra={"pattern": _NAME, "maxLength": 96})]
NAME = Annotated[str, PathParam(description="repository name", examples=["sql-lora"],
                                json_schema_extra={"pattern": _NAME, "maxLength": 96})]
REF = Annotated[str, PathParam(description="tag, branch, revision number or sha256:<12-64 hex> prefix",
                               examples=["main"],
                               json_schema_extra={"pattern": r"^([A-Za-z0-9][A-Za-z0-9._-]*|sha256:[0-9a-f]{12,64})$",
                                                  "maxLength": 128})]
TAG = Annotated[str, PathParam(description="tag name", examples=["v1"],
                               json_schema_extra={"pattern": _NAME, "maxLength": 128})]
DIGEST = Annotated[str, PathParam(description="sha256:<64 lowercase hex>",
                                  json_schema_extra={"pattern": _DIGEST, "maxLength": 71})]
JOB_ID = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="the job's id")]  # an INTEGER column


def repo_id(ns: str, name: str) -> str:
    """`ns/name` from path parameters, each part checked on its own."""
    return f"{check_name(ns, 'namespace')}/{check_name(name, 'name')}"


def ref_id(ns: str, name: str, ref: str) -> str:
    """`ns/name@ref`, every part checked on its own first so nothing can smuggle in another '@' or '/'."""
    return f"{repo_id(ns, name)}@{parse_ref(ref).value}"


# ----- models (the published OpenAPI document) ------------------------------------------------------------

class ErrorDetail(BaseModel):
    code: str
    message: str
    missing: list[str] | None = None
    offset: int | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


def error_docs(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each status answered in the error shape."""
    return {s: {"model": ErrorOut} for s in statuses}


class FileEntryModel(BaseModel):
    path: str = Field(description="POSIX path relative to the checkpoint (checked by the registry: no '..', "
                      "no absolute path)")
    size: int = Field(ge=0, le=2**62)
    sha256: str = Field(description="sha256:<64 lowercase hex>", max_length=71)


class ManifestModel(BaseModel):
    files: list[FileEntryModel] = Field(max_length=10_000)


class RepoOut(BaseModel):
    repo: str
    kind: Literal["adapter", "base"]
    tuner_type: str | None
    revisions: int
    main: int | None
    updated_at: str | None
    base_model: str | None
    source: dict[str, Any] | None = None


class RevisionSummary(BaseModel):
    repo: str
    kind: Literal["adapter", "base"]
    number: int
    digest: str
    format: str
    tags: list[str]
    branches: list[str]
    created_at: str
    message: str | None
    author: str | None
    meta: dict[str, Any]
    base_model: str | None = None
    provenance: list[dict[str, Any]] = Field(default_factory=list, description="hub imports it came from")
    parents: list[dict[str, Any]] = []


class RevisionOut(RevisionSummary):
    manifest: ManifestModel


class RevisionFilesOut(RevisionOut):
    files: list[FileEntryModel] = Field(description="the revision's files in the requested format")


class PushIn(BaseModel):
    manifest: ManifestModel
    kind: Literal["adapter", "base"] = "adapter"
    tag: str | None = Field(default=None, max_length=128)
    force: bool = False
    message: str | None = Field(default=None, max_length=65_536)
    base_model: str | None = Field(default=None, max_length=400)
    parents: list[dict[str, Any]] | None = Field(default=None, max_length=1_000)
    allow_nonfinite: bool = False    # accept tensors holding NaN or Inf (push --allow-nonfinite)


class PushOut(BaseModel):
    revision: RevisionOut
    created: bool
    blobs_written: int
    bytes_written: int
    notices: list[str]


class MissingIn(BaseModel):
    digests: list[str] = Field(max_length=100_000)


class MissingOut(BaseModel):
    missing: list[str]
    direct_uploads: bool = False  # object storage: upload them with POST /api/v1/uploads/{digest}/direct


class UploadDone(BaseModel):
    digest: str
    size: int


class BranchIn(BaseModel):
    ref: str = Field(max_length=200, description="the revision the branch will point at: a revision number, "
                     "sha256:<hex> prefix, tag or branch")


class TagIn(BaseModel):
    ref: str = Field(default="main", max_length=200, description="tag, branch, revision number or sha256:<hex> prefix")
    force: bool = False


class ServingCheckIn(BaseModel):
    max_lora_rank: int = Field(default=16, ge=1, le=4096, description="the --max-lora-rank vLLM runs with")
    base_model: str | None = Field(default=None, max_length=200, description="the registry base model vLLM serves, "
                                   "ns/name[@ref], compared with the base the revision records")


class RetentionIn(BaseModel):
    keep_last: int | None = Field(ge=1, le=1_000_000, description="keep this many newest revisions; null removes "
                                  "the rule")
    keep_tagged: bool = Field(default=True, description="also keep every tagged revision")


class RetentionApplyIn(BaseModel):
    repo: str | None = Field(default=None, max_length=200, description="one repository (ns/name); every rule "
                             "when absent (an admin token without a namespace limit)")
    dry_run: bool = False


class GcIn(BaseModel):
    grace_seconds: float = Field(default=3600.0, ge=0, le=10 * 365 * 86400, allow_inf_nan=False)
    dry_run: bool = False


class GcOut(BaseModel):
    blobs_removed: int
    bytes_removed: int
    temp_files_removed: int
    blobs_kept: int
    partial_uploads_removed: int
    revisions_deleted: int = 0
    staging_removed: int = 0
    staging_bytes_removed: int = 0
    kept_in_grace: int = 0
    kept_in_grace_bytes: int = 0
    xet_removed: int = 0
    xet_bytes_removed: int = 0


class StatsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    bytes_received: int
    blobs_stored: int
    requests: int
    uploads_in_progress: int


KIND = Literal[KINDS]  # type: ignore[valid-type]  # the one list, in registry/jobs/kinds.py
JOB_STATUS = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: KIND
    params: dict[str, Any]
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class JobOut(BaseModel):
    id: int
    kind: str
    params: dict[str, Any]
    status: str
    attempts: int
    worker: str | None = None
    heartbeat_at: str | None = None
    result: dict[str, Any] | None = None
    log: str | None = None
    idempotency_key: str | None = None
    namespace: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
