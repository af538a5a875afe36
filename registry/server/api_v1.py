"""swiftreg's own JSON API under /api/v1 (protocol in registry/server/__init__.py).

Every route is thin: parse, check the caller's token (a dependency, so a request without one is
answered 401 before its shape is judged), call the Registry, answer JSON. Blocking work runs in
FastAPI's threadpool (`def` routes); only the upload PATCH is `async`, to stream its body.

JSON bodies are read here with a cap (settings.max_json_bytes, max_manifest_bytes for a commit)
before FastAPI parses them: a Content-Length over the cap is refused unread, and a body that runs
past it is refused at the first byte over. Validation errors use the protocol's error shape.

Uploads are resumable: the bytes of a blob in transit live in `<store root>/uploads/<hex>.partial`
and each PATCH appends to it from the offset the server holds, under a per-digest file lock (so two
PATCHes, even from two server processes, never interleave). The last byte triggers
`store.put_file(partial, expected=digest)`, which hashes the whole blob: a mismatch stores nothing
and drops the partial.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Coroutine, Literal

import anyio
import filelock
from fastapi import APIRouter, Depends, Header, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

import converters
from converters.safetensors_io import write_all

from .. import errors as E
from .. import tokens
from ..ids import check_name, check_tag, parse_ref
from ..service import Registry
from ..store import BlobDigestMismatch, BlobNotFound, validate_digest
from .app import ERROR_CODES, HTTPError, error_response
from .auth import require
from .responses import BlobResponse

log = logging.getLogger("swiftreg.server")

#: How long a PATCH waits for another PATCH of the same blob to finish before answering 409.
UPLOAD_LOCK_WAIT = 30.0
PARTIAL_SUFFIX = ".partial"


# ----- request plumbing ----------------------------------------------------------------------------

class _V1Route(APIRoute):
    """Caps JSON bodies before FastAPI reads them; answers validation errors in the protocol's shape."""

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
                return error_response(422, "invalid_request", _describe(exc.errors()))
            except (E.RegistryError, converters.FormatError) as exc:
                return _refusal(request, exc)

        return route_handler


def _refusal(request: Request, exc: Exception) -> Response:
    """app.py's mapping of registry refusals, with the server's own folders taken out of the message."""
    status, code = 400, "bad_request"
    for cls, cls_status, cls_code in ERROR_CODES:
        if isinstance(exc, cls):
            status, code = cls_status, cls_code
            break
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    extra = {"missing": exc.missing} if isinstance(exc, E.BlobsMissingError) else {}
    return error_response(status, code, _scrub(str(exc), request.app.state.registry), **extra)


def _scrub(message: str, reg: Registry) -> str:
    """Checkpoint-relative file names instead of the server's paths (its home, store and temp folders)."""
    roots = {str(reg.home), str(getattr(reg.store, "root", "") or "")} - {""}
    for root in sorted(roots, key=len, reverse=True):
        temp = re.escape(root) + r"/swiftreg-[\w.-]+"
        message = re.sub(temp + r"/(?:checkpoint|original|converted)/", "", message)
        message = re.sub(temp + r"(?:/(?:checkpoint|original|converted))?", "<checkpoint>", message)
        message = message.replace(root, "<registry>")
    return message


def _describe(errors: Any) -> str:
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


async def _capped(request: Request, limit: int) -> Request:
    """The request with its body read into memory, refused (413) past `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, "too_large", f"the request body is {int(declared)} bytes; this route takes at most {limit}")
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise HTTPError(413, "too_large", f"the request body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPError(400, "client_disconnected", "the client went away before the request body ended") from None
    body = b"".join(chunks)
    await run_in_threadpool(_refuse_unstorable_json, body)
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    return Request(request.scope, replay)


def _refuse_unstorable_json(body: bytes) -> None:
    """NaN/Infinity (not JSON, though Python reads them) and NUL characters (PostgreSQL cannot store them): 400.

    Anything else that is not valid JSON is left to FastAPI, which reports it as a validation error.
    """
    def constant(name: str) -> Any:
        raise HTTPError(400, "bad_request", f"{name} is not a JSON number")

    try:
        value = json.loads(body, parse_constant=constant) if body else None
    except (ValueError, RecursionError):
        return
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise HTTPError(400, "bad_request", "strings in the request may not contain NUL characters")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


router = APIRouter(prefix="/api/v1", tags=["api v1"], route_class=_V1Route)


# ----- schemas (the published OpenAPI document) ------------------------------------------------------

class ErrorDetail(BaseModel):
    code: str
    message: str
    missing: list[str] | None = None
    offset: int | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


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
    tag: str | None = Field(None, max_length=128)
    force: bool = False
    message: str | None = Field(None, max_length=65_536)
    base_model: str | None = Field(None, max_length=400)
    parents: list[dict[str, Any]] | None = Field(None, max_length=1_000)


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


class UploadDone(BaseModel):
    digest: str
    size: int


class TagIn(BaseModel):
    ref: str = Field("main", max_length=200, description="tag, branch, revision number or sha256:<hex> prefix")
    force: bool = False


class GcIn(BaseModel):
    grace_seconds: float = Field(3600.0, ge=0, le=10 * 365 * 86400, allow_inf_nan=False)
    dry_run: bool = False


class GcOut(BaseModel):
    blobs_removed: int
    bytes_removed: int
    temp_files_removed: int
    blobs_kept: int
    partial_uploads_removed: int


class StatsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    bytes_received: int
    blobs_stored: int
    requests: int
    uploads_in_progress: int


# Path parameters are documented with the grammar (DESIGN.md section 2) but checked by registry.ids, so a
# bad one is answered 400 invalid_id with the parser's own message, as on every other surface.
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


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorOut} for s in statuses}


# ----- auth dependencies ------------------------------------------------------------------------------

def _read_ns(request: Request, ns: NS) -> tokens.TokenInfo | None:
    return require(request, "read", ns)


def _write_ns(request: Request, ns: NS) -> tokens.TokenInfo | None:
    return require(request, "write", ns)


def _read_any(request: Request) -> tokens.TokenInfo | None:
    return require(request, "read", None)


def _write_any(request: Request) -> tokens.TokenInfo | None:
    return require(request, "write", None)


def _admin(request: Request) -> tokens.TokenInfo | None:
    return require(request, "admin", None)


def _read_listing(request: Request) -> tokens.TokenInfo | None:
    return require(request, "read", request.query_params.get("namespace") or None)


Caller = tokens.TokenInfo | None


# ----- helpers ------------------------------------------------------------------------------------------

def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _scoped(caller: Caller) -> bool:
    return caller is not None and caller.namespaces is not None


def _visible(request: Request, caller: Caller, digest: str) -> bool:
    """Whether the caller may treat a stored blob as its own (see Registry.blob_in_namespaces).

    Tokens scoped to namespaces see only the blobs those namespaces hold or that they uploaded
    themselves (the upload proved they have the bytes); everyone else sees the whole store.
    """
    if not _scoped(caller):
        return True
    assert caller is not None and caller.namespaces is not None
    if digest in request.app.state.proven.get(caller.id, ()):
        return True
    return _registry(request).blob_in_namespaces(digest, caller.namespaces)


def _prove(request: Request, caller: Caller, digest: str) -> None:
    if _scoped(caller):
        assert caller is not None
        proven = request.app.state.proven.setdefault(caller.id, set())
        if len(proven) > 100_000:
            proven.clear()
        proven.add(digest)


def _repo(ns: str, name: str) -> str:
    return f"{check_name(ns, 'namespace')}/{check_name(name, 'name')}"


def _at(ns: str, name: str, ref: str) -> str:
    """`ns/name@ref`, every part checked on its own first so nothing can smuggle in another '@' or '/'."""
    return f"{_repo(ns, name)}@{parse_ref(ref).value}"


def _uploads_dir(request: Request) -> Path:
    reg = _registry(request)
    root = getattr(reg.store, "root", None)
    folder = (Path(root) if root is not None else reg.home) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _partial(request: Request, digest: str) -> Path:
    return _uploads_dir(request) / (validate_digest(digest)[len("sha256:"):] + PARTIAL_SUFFIX)


def _lock(partial: Path) -> filelock.FileLock:
    return filelock.FileLock(str(partial.with_suffix(".lock")), thread_local=False)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _int_header(value: str | None, name: str) -> int:
    if value is None or not value.isdigit() or len(value) > 20:
        raise HTTPError(400, "bad_request", f"the {name} header must be a non-negative integer")
    return int(value)


def _without_manifest(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    d.pop("manifest", None)
    return d


def _check_manifest_shape(manifest: ManifestModel) -> None:
    """Refuse what would make a checkpoint folder impossible: duplicate paths, a file used as a folder."""
    paths = [f.path for f in manifest.files]
    seen = set(paths)
    if len(seen) != len(paths):
        raise HTTPError(400, "bad_request", "the manifest names a path more than once")
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise HTTPError(400, "bad_request", f"{p[:200]!r}: {'/'.join(parts[:i])[:200]!r} is a file in this "
                                "manifest and cannot also be a folder")


# ----- reading ------------------------------------------------------------------------------------------

@router.get("/repos", summary="List repositories (adapters and base models)", response_model=list[RepoOut],
            responses=_errors(400, 401, 403))
def list_repos(request: Request, caller: Annotated[Caller, Depends(_read_listing)],
               namespace: Annotated[str | None, Query(max_length=96)] = None) -> Response:
    if namespace:
        check_name(namespace, "namespace")
    repos = _registry(request).list(namespace or None)
    if caller is not None and caller.namespaces is not None:
        repos = [r for r in repos if r.repo.split("/", 1)[0] in caller.namespaces]
    return JSONResponse([r.to_dict() for r in repos])


@router.get("/repos/{ns}/{name}/revisions", summary="Revisions of a repository, newest first (no manifests)",
            response_model=list[RevisionSummary], responses=_errors(400, 401, 403, 404))
def list_revisions(request: Request, ns: NS, name: NAME, _: Annotated[Caller, Depends(_read_ns)]) -> Response:
    return JSONResponse([_without_manifest(r.to_dict()) for r in _registry(request).log(_repo(ns, name))])


@router.get("/repos/{ns}/{name}/refs/{ref}", summary="One revision by tag, branch, number or sha256:<hex>, "
            "with its files in the requested format", response_model=RevisionFilesOut,
            responses=_errors(400, 401, 403, 404, 409, 422))
def show_ref(request: Request, ns: NS, name: NAME, ref: REF, _: Annotated[Caller, Depends(_read_ns)],
             format: Literal["peft", "swift"] | None = None) -> Response:
    reg = _registry(request)
    info = reg.show(_at(ns, name, ref)).to_dict()
    if format is None or format == info["format"]:
        files = info["manifest"]["files"]
    else:  # pinned to the revision number just read: a tag moving meanwhile cannot mix two revisions
        files = reg.manifest(f"{info['repo']}@{info['number']}", format).to_json()["files"]
    return JSONResponse({**info, "files": files})


@router.get("/blobs/{digest}", summary="A blob's bytes (Range supported)", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the blob"},
                       206: {"description": "the requested range"}, **_errors(400, 401, 403, 404, 416)})
def get_blob(request: Request, digest: DIGEST, caller: Annotated[Caller, Depends(_read_any)]) -> Response:
    store = _registry(request).store
    validate_digest(digest)
    try:
        path = store.path(digest)
        stat = os.stat(path) if path is not None else None
        if not _visible(request, caller, digest):  # the same answer as absent: existence is not leaked
            raise FileNotFoundError(digest)
    except (BlobNotFound, FileNotFoundError):
        raise HTTPError(404, "blob_not_found", f"blob {digest} is not in the store") from None
    if path is None:  # a remote store: no file to hand to the server (not built yet)
        raise HTTPError(501, "not_implemented", "this store cannot serve blobs over HTTP yet")
    return BlobResponse(path, media_type="application/octet-stream", stat_result=stat,
                        headers={"ETag": f'"{digest}"', "Accept-Ranges": "bytes"})


# ----- pushing: missing blobs, resumable uploads, commit ------------------------------------------------------

@router.post("/blobs/missing", summary="Which of these blobs the server lacks (present ones are kept from gc)",
             response_model=MissingOut, responses=_errors(400, 401, 403, 413, 422))
def blobs_missing(request: Request, body: MissingIn, caller: Annotated[Caller, Depends(_write_any)]) -> Response:
    store = _registry(request).store
    absent = store.missing(body.digests)
    gone = set(absent)
    for digest in dict.fromkeys(body.digests):
        if digest in gone:
            continue
        if not _visible(request, caller, digest):  # stored for another namespace: prove it by uploading
            absent.append(digest)
            continue
        try:
            store.touch(digest)  # a commit is about to rely on it: refresh it for gc's grace period
        except BlobNotFound:
            absent.append(digest)
    return JSONResponse({"missing": absent})


@router.head("/uploads/{digest}", summary="How many bytes of an upload the server holds",
             status_code=200, responses={200: {"description": "Upload-Offset and Upload-Complete headers",
                                               "headers": {"Upload-Offset": {"schema": {"type": "integer"}},
                                                           "Upload-Complete": {"schema": {"type": "string"}}}},
                                         **_errors(400, 401, 403)})
def upload_status(request: Request, digest: DIGEST, caller: Annotated[Caller, Depends(_write_any)]) -> Response:
    store = _registry(request).store
    partial = _partial(request, digest)
    headers = {"Cache-Control": "no-store"}
    try:
        if store.exists(digest) and _visible(request, caller, digest):
            return Response(status_code=200, headers={**headers, "Upload-Offset": str(store.size(digest)),
                                                      "Upload-Complete": "true"})
    except BlobNotFound:
        pass
    return Response(status_code=200, headers={**headers, "Upload-Offset": str(_size(partial)),
                                              "Upload-Complete": "false"})


@router.patch("/uploads/{digest}", summary="Append bytes to an upload; the last byte stores the verified blob",
              status_code=204,
              responses={201: {"model": UploadDone, "description": "complete, verified and stored"},
                         204: {"description": "bytes appended; Upload-Offset is the new offset"},
                         **_errors(400, 401, 403, 409, 413, 422)},
              openapi_extra={"requestBody": {"required": False, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_bytes(
    request: Request, digest: DIGEST, caller: Annotated[Caller, Depends(_write_any)],
    upload_offset: Annotated[str, Header(alias="Upload-Offset", description="bytes the server holds (HEAD)",
                                         json_schema_extra={"pattern": "^[0-9]{1,20}$"})],
    upload_length: Annotated[str, Header(alias="Upload-Length", description="the blob's total size in bytes",
                                         json_schema_extra={"pattern": "^[0-9]{1,20}$"})],
) -> Response:
    reg = _registry(request)
    settings = request.app.state.settings
    stats = request.app.state.stats
    partial = _partial(request, digest)  # validates the digest before anything touches a path
    offset = _int_header(upload_offset, "Upload-Offset")
    length = _int_header(upload_length, "Upload-Length")
    if length > settings.max_blob_bytes:
        raise HTTPError(413, "too_large", f"Upload-Length {length} exceeds this server's limit of "
                        f"{settings.max_blob_bytes} bytes per blob")
    declared = request.headers.get("content-length", "")
    if offset > length or (declared.isdigit() and offset + int(declared) > length):
        raise HTTPError(400, "too_many_bytes", "the body would run past Upload-Length")
    if await run_in_threadpool(lambda: _stored(reg, digest) and _visible(request, caller, digest)):
        size = await run_in_threadpool(reg.store.size, digest)
        return JSONResponse({"digest": digest, "size": size}, status_code=201,
                            headers={"Upload-Offset": str(size), "Upload-Complete": "true"})

    lock = _lock(partial)
    try:
        await anyio.to_thread.run_sync(lambda: lock.acquire(timeout=UPLOAD_LOCK_WAIT))
    except filelock.Timeout:
        raise HTTPError(409, "upload_in_progress", "another upload of this blob is in progress; ask HEAD for the "
                        "offset and retry", offset=_size(partial)) from None
    try:
        held = _size(partial)
        if offset != held:
            raise HTTPError(409, "offset_mismatch", f"Upload-Offset is {offset} but the server holds {held} bytes "
                            "of this blob; continue from there", offset=held)
        received = 0
        disconnected = False
        # Unbuffered appends: every byte counted here is in the file, so HEAD's offset is never ahead of it.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                if offset + received + len(chunk) > length:
                    await anyio.to_thread.run_sync(os.ftruncate, fd, held)
                    raise HTTPError(400, "too_many_bytes", f"the body runs past Upload-Length ({length} bytes); "
                                    "the bytes of this request were dropped", offset=held)
                await anyio.to_thread.run_sync(write_all, fd, chunk)
                received += len(chunk)
                stats["bytes_received"] += len(chunk)
        except ClientDisconnect:
            disconnected = True  # keep what arrived: the client resumes from HEAD's offset
        finally:
            os.close(fd)
        if disconnected:
            return error_response(400, "client_disconnected", "the connection closed before the body ended",
                                  offset=offset + received)
        now = offset + received
        if now < length:
            return Response(status_code=204, headers={"Upload-Offset": str(now), "Upload-Complete": "false"})
        try:
            info = await run_in_threadpool(reg.store.put_file, partial, digest)
        except BlobDigestMismatch as exc:
            raise HTTPError(422, "digest_mismatch", f"the {exc.size} uploaded bytes hash to {exc.actual}, not "
                            f"{digest}; nothing was stored: upload the blob again from offset 0") from None
        finally:
            partial.unlink(missing_ok=True)
        stats["blobs_stored"] += 1
        _prove(request, caller, digest)
        return JSONResponse({"digest": info.digest, "size": info.size}, status_code=201,
                            headers={"Upload-Offset": str(info.size), "Upload-Complete": "true"})
    finally:
        lock.release()


def _stored(reg: Registry, digest: str) -> bool:
    """Whether the blob is already stored; refreshed for gc if so (a commit is about to rely on it)."""
    try:
        reg.store.touch(digest)
        return True
    except BlobNotFound:
        return False


@router.post("/repos/{ns}/{name}/revisions", summary="Commit a revision whose blobs are uploaded",
             status_code=201, response_model=PushOut,
             responses={200: {"model": PushOut, "description": "this content already was a revision"},
                        **_errors(400, 401, 403, 404, 409, 413, 422)})
def push_revision(request: Request, ns: NS, name: NAME, body: PushIn,
                  caller: Annotated[Caller, Depends(_write_ns)]) -> Response:
    repo = _repo(ns, name)
    if body.tag is not None:
        check_tag(body.tag)
    _check_manifest_shape(body.manifest)
    if _scoped(caller):  # a namespace-scoped writer builds only on blobs it holds or has uploaded
        unseen = [d for d in dict.fromkeys(f.sha256 for f in body.manifest.files) if not _visible(request, caller, d)]
        if unseen:
            raise E.BlobsMissingError(f"{len(unseen)} blob(s) of this manifest are not in the store for "
                                      "this token's namespaces: upload them first", unseen)
    result = _registry(request).push_manifest(
        body.manifest.model_dump(), repo, kind=body.kind, tag=body.tag, force=body.force, message=body.message,
        author=caller.owner if caller is not None else None, base_model=body.base_model, parents=body.parents)
    return JSONResponse({"revision": result.revision.to_dict(), "created": result.created,
                         "blobs_written": result.blobs_written, "bytes_written": result.bytes_written,
                         "notices": result.notices}, status_code=201 if result.created else 200)


# ----- refs -----------------------------------------------------------------------------------------------

@router.put("/repos/{ns}/{name}/tags/{tag}", summary="Point a tag at a revision (moving one needs force)",
            response_model=RevisionOut, responses=_errors(400, 401, 403, 404, 409, 413, 422))
def put_tag(request: Request, ns: NS, name: NAME, tag: TAG, body: TagIn,
            _: Annotated[Caller, Depends(_write_ns)]) -> Response:
    info = _registry(request).tag(_at(ns, name, body.ref), check_tag(tag), force=body.force)
    return JSONResponse(info.to_dict())


@router.delete("/repos/{ns}/{name}/tags/{tag}", summary="Delete a tag (the revision stays)", status_code=204,
               responses=_errors(400, 401, 403, 404))
def delete_tag(request: Request, ns: NS, name: NAME, tag: TAG, _: Annotated[Caller, Depends(_write_ns)]) -> Response:
    _registry(request).untag(_repo(ns, name), check_tag(tag))
    return Response(status_code=204)


@router.delete("/repos/{ns}/{name}/refs/{ref}", summary="Delete a tag or branch (main needs force)",
               status_code=204, responses=_errors(400, 401, 403, 404))
def delete_ref(request: Request, ns: NS, name: NAME, ref: REF, _: Annotated[Caller, Depends(_write_ns)],
               force: bool = False) -> Response:
    _registry(request).remove_ref(_at(ns, name, ref), force=force)
    return Response(status_code=204)


# ----- serving checks (registry/vllm_checks.py) ----------------------------------------------------------------

class ServingCheckIn(BaseModel):
    max_lora_rank: int = Field(16, ge=1, le=4096, description="the --max-lora-rank vLLM runs with")
    base_model: str | None = Field(None, max_length=200, description="the registry base model vLLM serves, "
                                   "ns/name[@ref], compared with the base the revision records")


@router.post("/repos/{ns}/{name}/refs/{ref}/checks/vllm", summary="Check what vLLM can serve of a revision and "
             "record the verdict (validation_runs)", responses=_errors(400, 401, 403, 404, 409, 413, 422))
def post_vllm_check(request: Request, ns: NS, name: NAME, ref: REF, body: ServingCheckIn,
                    _: Annotated[Caller, Depends(_write_ns)]) -> Response:
    from ..ids import parse_id

    served = None
    if body.base_model:  # a registry id the token may read, never a path on the server's disk
        served = body.base_model
        require(request, "read", parse_id(served).namespace)
        if _registry(request).show(served).kind != "base":  # unknown: 404 here, before served_base looks elsewhere
            raise HTTPError(422, "bad_request", f"{served} is an adapter; base_model names a registry base model")
    result = _registry(request).check_serving(_at(ns, name, ref), "vllm", max_lora_rank=body.max_lora_rank,
                                              served_model=served)
    return JSONResponse(result)


# ----- operations --------------------------------------------------------------------------------------------

@router.post("/gc", summary="Delete unreferenced blobs and stale partial uploads older than the grace period",
             response_model=GcOut, responses=_errors(401, 403, 413, 422))
def gc(request: Request, _: Annotated[Caller, Depends(_admin)], body: GcIn | None = None) -> Response:
    body = body or GcIn()
    result = dataclasses.asdict(_registry(request).gc(grace_seconds=body.grace_seconds, dry_run=body.dry_run))
    result["partial_uploads_removed"] = _remove_stale_partials(request, body.grace_seconds, body.dry_run)
    return JSONResponse(result)


def _remove_stale_partials(request: Request, grace_seconds: float, dry_run: bool) -> int:
    cutoff = time.time() - grace_seconds
    removed = 0
    for partial in sorted(_uploads_dir(request).glob("*" + PARTIAL_SUFFIX)):
        lock = _lock(partial)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            continue  # a PATCH is writing it right now
        try:
            if partial.stat().st_mtime > cutoff:
                continue
            if not dry_run:
                partial.unlink()
            removed += 1
        except FileNotFoundError:
            continue
        finally:
            lock.release()
    return removed


@router.get("/stats", summary="Server counters since start", response_model=StatsOut, responses=_errors(401, 403))
def stats(request: Request, _: Annotated[Caller, Depends(_admin)]) -> Response:
    uploads = sum(1 for _p in _uploads_dir(request).glob("*" + PARTIAL_SUFFIX))
    return JSONResponse({**request.app.state.stats, "uploads_in_progress": uploads})


__all__ = ["router"]
