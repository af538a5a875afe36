"""swiftreg's own JSON API under /api/v1 (protocol in registry/server/__init__.py).

Every route is thin: parse, check the caller's token (a dependency, so a request without one is
answered 401 before its shape is judged), call the Registry, answer JSON. Blocking work runs in
FastAPI's threadpool (`def` routes); only the upload PATCH is `async`, to stream its body. Bodies
are capped and errors shaped by the route class (schemas.V1Route).

Uploads are resumable: the bytes of a blob in transit are kept by the store's upload area
(registry/store/uploads.py) and each PATCH appends to them from the offset the server holds, under a
per-digest lock; the last byte stores the blob, hashed and checked against its digest.
"""
from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from .. import errors as E
from ..ids import check_name, check_tag, parse_id
from ..service import Registry
from ..store import BlobDigestMismatch, BlobNotFound, validate_digest
from ..store.uploads import UploadArea
from .auth import Caller, admin, prove, read_any, read_listing, read_ns, require, scoped, visible, write_any, write_ns
from .lookup import registry_of
from .responses import BlobResponse
from .schemas import (
    DIGEST,
    NAME,
    NS,
    REF,
    TAG,
    GcIn,
    GcOut,
    ManifestModel,
    MissingIn,
    MissingOut,
    PushIn,
    PushOut,
    RepoOut,
    RevisionFilesOut,
    RevisionOut,
    RevisionSummary,
    ServingCheckIn,
    StatsOut,
    TagIn,
    UploadDone,
    V1Route,
    error_docs,
    ref_id,
    repo_id,
)

#: How long a PATCH waits for another PATCH of the same blob to finish before answering 409.
UPLOAD_LOCK_WAIT = 30.0

router = APIRouter(prefix="/api/v1", tags=["api v1"], route_class=V1Route)


# ----- helpers ------------------------------------------------------------------------------------------

def _uploads(request: Request) -> UploadArea:
    area: UploadArea = request.app.state.uploads
    return area


def _int_header(value: str | None, name: str) -> int:
    if value is None or not value.isdigit() or len(value) > 20:
        raise E.RegistryError(f"the {name} header must be a non-negative integer")
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
        raise E.RegistryError("the manifest names a path more than once")
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise E.RegistryError(f"{p[:200]!r}: {'/'.join(parts[:i])[:200]!r} is a file in this manifest "
                                      "and cannot also be a folder")


# ----- reading ------------------------------------------------------------------------------------------

@router.get("/repos", summary="List repositories (adapters and base models)", response_model=list[RepoOut],
            responses=error_docs(400, 401, 403))
def list_repos(request: Request, caller: Annotated[Caller, Depends(read_listing)],
               namespace: Annotated[str | None, Query(max_length=96)] = None) -> Response:
    if namespace:
        check_name(namespace, "namespace")
    repos = registry_of(request).list(namespace or None)
    if caller is not None and caller.namespaces is not None:
        repos = [r for r in repos if r.repo.split("/", 1)[0] in caller.namespaces]
    return JSONResponse([r.to_dict() for r in repos])


@router.get("/repos/{ns}/{name}/revisions", summary="Revisions of a repository, newest first (no manifests)",
            response_model=list[RevisionSummary], responses=error_docs(400, 401, 403, 404))
def list_revisions(request: Request, ns: NS, name: NAME, _: Annotated[Caller, Depends(read_ns)]) -> Response:
    return JSONResponse([_without_manifest(r.to_dict()) for r in registry_of(request).log(repo_id(ns, name))])


@router.get("/repos/{ns}/{name}/refs/{ref}", summary="One revision by tag, branch, number or sha256:<hex>, "
            "with its files in the requested format", response_model=RevisionFilesOut,
            responses=error_docs(400, 401, 403, 404, 409, 422))
def show_ref(request: Request, ns: NS, name: NAME, ref: REF, _: Annotated[Caller, Depends(read_ns)],
             format: Literal["peft", "swift"] | None = None) -> Response:
    reg = registry_of(request)
    info = reg.show(ref_id(ns, name, ref)).to_dict()
    if format is None or format == info["format"]:
        files = info["manifest"]["files"]
    else:  # pinned to the revision number just read: a tag moving meanwhile cannot mix two revisions
        files = reg.manifest(f"{info['repo']}@{info['number']}", format).to_json()["files"]
    return JSONResponse({**info, "files": files})


@router.get("/blobs/{digest}", summary="A blob's bytes (Range supported)", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the blob"},
                       206: {"description": "the requested range"}, **error_docs(400, 401, 403, 404, 416)})
def get_blob(request: Request, digest: DIGEST, caller: Annotated[Caller, Depends(read_any)]) -> Response:
    store = registry_of(request).store
    validate_digest(digest)
    try:
        path = store.path(digest)
        stat = os.stat(path) if path is not None else None
        if not visible(request, caller, digest):  # the same answer as absent: existence is not leaked
            raise FileNotFoundError(digest)
    except (BlobNotFound, FileNotFoundError):
        raise BlobNotFound(digest) from None
    if path is None:  # a remote store: no file to hand to the server (not built yet)
        raise E.NotSupportedError("this store cannot serve blobs over HTTP yet")
    return BlobResponse(path, media_type="application/octet-stream", stat_result=stat,
                        headers={"ETag": f'"{digest}"', "Accept-Ranges": "bytes"})


# ----- pushing: missing blobs, resumable uploads, commit ------------------------------------------------------

@router.post("/blobs/missing", summary="Which of these blobs the server lacks (present ones are kept from gc)",
             response_model=MissingOut, responses=error_docs(400, 401, 403, 413, 422))
def blobs_missing(request: Request, body: MissingIn, caller: Annotated[Caller, Depends(write_any)]) -> Response:
    store = registry_of(request).store
    absent = store.missing(body.digests)
    gone = set(absent)
    for digest in dict.fromkeys(body.digests):
        if digest in gone:
            continue
        if not visible(request, caller, digest):  # stored for another namespace: prove it by uploading
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
                                         **error_docs(400, 401, 403)})
def upload_status(request: Request, digest: DIGEST, caller: Annotated[Caller, Depends(write_any)]) -> Response:
    store = registry_of(request).store
    validate_digest(digest)
    headers = {"Cache-Control": "no-store"}
    try:
        if store.exists(digest) and visible(request, caller, digest):
            return Response(status_code=200, headers={**headers, "Upload-Offset": str(store.size(digest)),
                                                      "Upload-Complete": "true"})
    except BlobNotFound:
        pass
    return Response(status_code=200, headers={**headers, "Upload-Offset": str(_uploads(request).offset(digest)),
                                              "Upload-Complete": "false"})


@router.patch("/uploads/{digest}", summary="Append bytes to an upload; the last byte stores the verified blob",
              status_code=204,
              responses={201: {"model": UploadDone, "description": "complete, verified and stored"},
                         204: {"description": "bytes appended; Upload-Offset is the new offset"},
                         **error_docs(400, 401, 403, 409, 413, 422)},
              openapi_extra={"requestBody": {"required": False, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_bytes(
    request: Request, digest: DIGEST, caller: Annotated[Caller, Depends(write_any)],
    upload_offset: Annotated[str, Header(alias="Upload-Offset", description="bytes the server holds (HEAD)",
                                         json_schema_extra={"pattern": "^[0-9]{1,20}$"})],
    upload_length: Annotated[str, Header(alias="Upload-Length", description="the blob's total size in bytes",
                                         json_schema_extra={"pattern": "^[0-9]{1,20}$"})],
) -> Response:
    reg = registry_of(request)
    settings = request.app.state.settings
    stats = request.app.state.stats
    uploads = _uploads(request)
    validate_digest(digest)  # before anything touches a path
    offset = _int_header(upload_offset, "Upload-Offset")
    length = _int_header(upload_length, "Upload-Length")
    if length > settings.max_blob_bytes:
        raise E.RequestTooLargeError(f"Upload-Length {length} exceeds this server's limit of "
                                     f"{settings.max_blob_bytes} bytes per blob")
    declared = request.headers.get("content-length", "")
    if offset > length or (declared.isdigit() and offset + int(declared) > length):
        raise E.UploadTooLongError("the body would run past Upload-Length")
    if await run_in_threadpool(lambda: _stored(reg, digest) and visible(request, caller, digest)):
        size = await run_in_threadpool(reg.store.size, digest)
        return JSONResponse({"digest": digest, "size": size}, status_code=201,
                            headers={"Upload-Offset": str(size), "Upload-Complete": "true"})

    upload = await anyio.to_thread.run_sync(uploads.open, digest, UPLOAD_LOCK_WAIT)
    if upload is None:
        raise E.UploadInProgressError("another upload of this blob is in progress; ask HEAD for the offset and "
                                      "retry", offset=uploads.offset(digest))
    try:
        if offset != upload.held:
            raise E.UploadOffsetError(f"Upload-Offset is {offset} but the server holds {upload.held} bytes of this "
                                      "blob; continue from there", offset=upload.held)
        received = 0
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                if offset + received + len(chunk) > length:
                    await anyio.to_thread.run_sync(upload.rollback)
                    raise E.UploadTooLongError(f"the body runs past Upload-Length ({length} bytes); the bytes of "
                                               "this request were dropped", offset=upload.held)
                await anyio.to_thread.run_sync(upload.append, chunk)
                received += len(chunk)
                stats["bytes_received"] += len(chunk)
        except ClientDisconnect:  # keep what arrived: the client resumes from HEAD's offset
            raise E.ClientDisconnectedError("the connection closed before the body ended",
                                            offset=offset + received) from None
        now = offset + received
        if now < length:
            return Response(status_code=204, headers={"Upload-Offset": str(now), "Upload-Complete": "false"})
        try:
            info = await run_in_threadpool(upload.finish)
        except BlobDigestMismatch as exc:
            raise BlobDigestMismatch(digest, exc.actual, exc.size, "this upload") from None
        stats["blobs_stored"] += 1
        prove(request, caller, digest)
        return JSONResponse({"digest": info.digest, "size": info.size}, status_code=201,
                            headers={"Upload-Offset": str(info.size), "Upload-Complete": "true"})
    finally:
        upload.close()


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
                        **error_docs(400, 401, 403, 404, 409, 413, 422)})
def push_revision(request: Request, ns: NS, name: NAME, body: PushIn,
                  caller: Annotated[Caller, Depends(write_ns)]) -> Response:
    repo = repo_id(ns, name)
    if body.tag is not None:
        check_tag(body.tag)
    _check_manifest_shape(body.manifest)
    if scoped(caller):  # a namespace-scoped writer builds only on blobs it holds or has uploaded
        unseen = [d for d in dict.fromkeys(f.sha256 for f in body.manifest.files) if not visible(request, caller, d)]
        if unseen:
            raise E.BlobsMissingError(f"{len(unseen)} blob(s) of this manifest are not in the store for "
                                      "this token's namespaces: upload them first", unseen)
    result = registry_of(request).push_manifest(
        body.manifest.model_dump(), repo, kind=body.kind, tag=body.tag, force=body.force, message=body.message,
        author=caller.owner if caller is not None else None, base_model=body.base_model, parents=body.parents)
    return JSONResponse({"revision": result.revision.to_dict(), "created": result.created,
                         "blobs_written": result.blobs_written, "bytes_written": result.bytes_written,
                         "notices": result.notices}, status_code=201 if result.created else 200)


# ----- refs -----------------------------------------------------------------------------------------------

@router.put("/repos/{ns}/{name}/tags/{tag}", summary="Point a tag at a revision (moving one needs force)",
            response_model=RevisionOut, responses=error_docs(400, 401, 403, 404, 409, 413, 422))
def put_tag(request: Request, ns: NS, name: NAME, tag: TAG, body: TagIn,
            _: Annotated[Caller, Depends(write_ns)]) -> Response:
    info = registry_of(request).tag(ref_id(ns, name, body.ref), check_tag(tag), force=body.force)
    return JSONResponse(info.to_dict())


@router.delete("/repos/{ns}/{name}/tags/{tag}", summary="Delete a tag (the revision stays)", status_code=204,
               responses=error_docs(400, 401, 403, 404))
def delete_tag(request: Request, ns: NS, name: NAME, tag: TAG, _: Annotated[Caller, Depends(write_ns)]) -> Response:
    registry_of(request).untag(repo_id(ns, name), check_tag(tag))
    return Response(status_code=204)


@router.delete("/repos/{ns}/{name}/refs/{ref}", summary="Delete a tag or branch (main needs force)",
               status_code=204, responses=error_docs(400, 401, 403, 404))
def delete_ref(request: Request, ns: NS, name: NAME, ref: REF, _: Annotated[Caller, Depends(write_ns)],
               force: bool = False) -> Response:
    registry_of(request).remove_ref(ref_id(ns, name, ref), force=force)
    return Response(status_code=204)


# ----- serving checks (registry/vllm_checks.py) ----------------------------------------------------------------

@router.post("/repos/{ns}/{name}/refs/{ref}/checks/vllm", summary="Check what vLLM can serve of a revision and "
             "record the verdict (validation_runs)", responses=error_docs(400, 401, 403, 404, 409, 413, 422))
def post_vllm_check(request: Request, ns: NS, name: NAME, ref: REF, body: ServingCheckIn,
                    _: Annotated[Caller, Depends(write_ns)]) -> Response:
    served = None
    if body.base_model:  # a registry id the token may read, never a path on the server's disk
        served = body.base_model
        require(request, "read", parse_id(served).namespace)
        if registry_of(request).show(served).kind != "base":  # unknown: 404 here, before served_base looks elsewhere
            raise E.InvalidRequestError(f"{served} is an adapter; base_model names a registry base model")
    result = registry_of(request).check_serving(ref_id(ns, name, ref), "vllm", max_lora_rank=body.max_lora_rank,
                                                served_model=served)
    return JSONResponse(result)


# ----- operations --------------------------------------------------------------------------------------------

@router.post("/gc", summary="Delete unreferenced blobs and stale partial uploads older than the grace period",
             response_model=GcOut, responses=error_docs(401, 403, 413, 422))
def gc(request: Request, _: Annotated[Caller, Depends(admin)], body: GcIn | None = None) -> Response:
    body = body or GcIn()
    return JSONResponse(registry_of(request).gc(grace_seconds=body.grace_seconds, dry_run=body.dry_run).to_dict())


@router.get("/stats", summary="Server counters since start", response_model=StatsOut, responses=error_docs(401, 403))
def stats(request: Request, _: Annotated[Caller, Depends(admin)]) -> Response:
    return JSONResponse({**request.app.state.stats, "uploads_in_progress": _uploads(request).in_progress()})


__all__ = ["router"]
