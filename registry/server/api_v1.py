"""swiftreg's own JSON API under /api/v1 (protocol in registry/server/__init__.py).

Every route is thin: parse, check the caller's token (a dependency, so a request without one is
answered 401 before its shape is judged), call the Registry, answer JSON. Blocking work runs in
FastAPI's threadpool (`def` routes); only the upload PATCH is `async`, to stream its body. Bodies
are capped and errors shaped by the route class (schemas.V1Route).

Uploads are resumable: the bytes of a blob in transit are kept by the store's upload area
(registry/store/uploads.py), in the part of it that belongs to the token's namespaces (auth.upload_owner),
and each PATCH appends to them from the offset the server holds, under a per-digest lock; the last
byte stores the blob (the partial file itself, hashed and checked against its digest). Before a byte
is read, an upload must fit its owner's quota of unfinished bytes (413) and the filesystem (507).

gc is store-wide (a blob is stored once for every namespace that uses it), so only an admin token
without a namespace limit may run it; stats answer a namespace admin with its namespaces' figures.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from .. import errors as E
from ..ids import check_name, check_tag, parse_id
from ..params import INT32_MAX, MAX_PAGE, natural
from ..service import Registry
from ..store import BlobDigestMismatch, BlobNotFound, validate_digest
from ..store.uploads import UploadArea
from ..store.local import disk_full, free_bytes
from ..tokens import TokenInfo
from .auth import (
    Caller,
    admin,
    counters,
    owner_namespaces,
    prove,
    read_any,
    read_limit,
    read_listing,
    read_ns,
    require,
    scoped,
    upload_owner,
    visible,
    write_any,
    write_ns,
)
from .lookup import registry_of
from .responses import blob_response, redirecting, remote_blob
from .schemas import (
    DIGEST,
    NAME,
    NS,
    REF,
    TAG,
    BranchIn,
    GcIn,
    GcOut,
    ManifestModel,
    MissingIn,
    MissingOut,
    PushIn,
    PushOut,
    RepoOut,
    RetentionApplyIn,
    RetentionIn,
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
#: A PATCH re-checks its owner's quota each time it has received this many more bytes (concurrent
#: uploads of one owner can overshoot the quota by at most this much each).
QUOTA_RECHECK_BYTES = 4 << 20

router = APIRouter(prefix="/api/v1", tags=["api v1"], route_class=V1Route)


# ----- helpers ------------------------------------------------------------------------------------------

def _uploads(request: Request, caller: Caller = None) -> UploadArea:
    """The whole upload area, or with `caller` the part of it that belongs to the caller's namespaces."""
    area: UploadArea = request.app.state.uploads
    if caller is None:
        return area
    return area.of(upload_owner(caller))


def _free(folder: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) `folder`."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return free_bytes(folder)


def _fits(request: Request, uploads: UploadArea, caller: TokenInfo, digest: str, held: int, length: int) -> None:
    """Refuse an upload before its body is read when the whole blob cannot fit: its owner's quota of
    bytes in unfinished uploads (413), or the free space of the filesystem (507)."""
    limit = request.app.state.settings.max_partial_bytes
    others = uploads.held_bytes(but=digest)
    if others + length > limit:
        raise E.UploadQuotaError(f"this upload of {length:,} bytes would bring the unfinished uploads of "
                                 f"{_whose(caller)} to {others + length:,} bytes, over this server's limit of "
                                 f"{limit:,}: finish or abandon the others (they expire after "
                                 f"{_hours(request.app.state.settings.upload_ttl)} idle), then retry",
                                 offset=held)
    need = length - held
    if need > _free(uploads.folder):
        raise disk_full(uploads.folder, f"upload of blob {digest}", f" ({need:,} more bytes needed)")


def _within(owner: set[str] | None, names: set[str]) -> bool:
    """Whether an upload owner's namespaces are known and all among `names`."""
    return owner is not None and owner <= names


def _whose(caller: TokenInfo) -> str:
    return "this server's unlimited tokens" if caller.namespaces is None else \
        f"namespace{'s' if len(caller.namespaces) > 1 else ''} {', '.join(sorted(caller.namespaces))}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def _int_header(value: str | None, name: str) -> int:
    """A byte-count header: ASCII digits, at most 2^63-1 (registry/params.py), else 400."""
    if value is None:
        raise E.RegistryError(f"the {name} header is required (a non-negative integer)")
    return natural(value, f"the {name} header")


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

@router.get("/repos", summary="List repositories (adapters and base models); with `limit`, one page, and a "
            "`Link: <...>; rel=\"next\"` header while more follow", response_model=list[RepoOut],
            responses=error_docs(400, 401, 403))
def list_repos(request: Request, caller: Annotated[Caller, Depends(read_listing)],
               namespace: Annotated[str | None, Query(max_length=96)] = None,
               limit: Annotated[str | None, Query(max_length=12)] = None,
               after: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    if namespace:
        check_name(namespace, "namespace")
    page = _page_size(limit)
    shown = read_limit(request, caller)
    namespaces = [namespace] if namespace else shown
    if namespace and shown is not None and namespace not in shown:
        namespaces = []
    repos = registry_of(request).list_visible(namespaces, limit=page and page + 1, after=after or None)
    more = page is not None and len(repos) > page
    repos = repos[:page] if page is not None else repos
    return _paged([r.to_dict() for r in repos], request, repos[-1].cursor if more else None)


@router.get("/repos/{ns}/{name}/revisions", summary="Revisions of a repository, newest first (no manifests); "
            "with `limit`, one page (`after`: the last number shown), and a `Link: rel=\"next\"` header while more "
            "follow", response_model=list[RevisionSummary], responses=error_docs(400, 401, 403, 404))
def list_revisions(request: Request, ns: NS, name: NAME, _: Annotated[Caller, Depends(read_ns)],
                   limit: Annotated[str | None, Query(max_length=12)] = None,
                   after: Annotated[str | None, Query(max_length=12)] = None) -> Response:
    page = _page_size(limit)
    last = natural(after, "after", maximum=INT32_MAX) if after is not None else None
    revs = registry_of(request).log(repo_id(ns, name), limit=page and page + 1, after=last or None)
    more = page is not None and len(revs) > page
    revs = revs[:page] if page is not None else revs
    return _paged([_without_manifest(r.to_dict()) for r in revs], request, str(revs[-1].number) if more else None)


def _page_size(limit: str | None) -> int | None:
    """A listing's `limit` query parameter: 1 to MAX_PAGE, or None (everything)."""
    if limit is None:
        return None
    value = natural(limit, "limit", maximum=MAX_PAGE)
    if value < 1:
        raise E.RegistryError("limit must be at least 1")
    return value


def _paged(items: list[dict[str, Any]], request: Request, after: str | None) -> JSONResponse:
    """A page of a listing, with the next page's address in a `Link` header (RFC 8288) while one follows:
    the body stays the plain list every client already reads."""
    response = JSONResponse(items)
    if after is not None:
        query = urlencode({**request.query_params, "after": after})
        response.headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return response


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


@router.get("/blobs/{digest}", summary="A blob's bytes (Range supported), verified: a corrupt blob is cut short "
            "and quarantined, never answered whole", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the blob"},
                       206: {"description": "the requested range"}, **error_docs(400, 401, 403, 404, 416)})
def get_blob(request: Request, digest: DIGEST, caller: Annotated[Caller, Depends(read_any)]) -> Response:
    reg = registry_of(request)
    validate_digest(digest)
    if not visible(request, caller, digest):  # the same answer as absent: existence is not leaked
        raise BlobNotFound(digest)
    if getattr(reg.store, "remote", False):  # object storage: a redirect to a presigned URL, or streamed
        return remote_blob(request, reg, digest, None, {"ETag": f'"{digest}"'}, None, referenced=False)
    blob = reg.servable_blob(digest, whole="range" in request.headers, head=request.method == "HEAD",
                             referenced=False)
    return blob_response(reg, blob, {"ETag": f'"{digest}"'}, None)


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
    # direct_uploads: the client may PUT the missing blobs straight to the object store (direct_uploads.py)
    direct = {"direct_uploads": True} if redirecting(request, registry_of(request)) else {}
    return JSONResponse({"missing": absent, **direct})


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
    held = _uploads(request, caller).offset(digest)  # this token's namespaces' upload, never another's
    return Response(status_code=200, headers={**headers, "Upload-Offset": str(held), "Upload-Complete": "false"})


@router.patch("/uploads/{digest}", summary="Append bytes to an upload; the last byte stores the verified blob",
              status_code=204,
              responses={201: {"model": UploadDone, "description": "complete, verified and stored"},
                         204: {"description": "bytes appended; Upload-Offset is the new offset"},
                         **error_docs(400, 401, 403, 409, 413, 422, 507)},
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
    assert caller is not None  # write_any: a token, always
    mine = counters(request, caller) if scoped(caller) else {}
    uploads = _uploads(request, caller)
    validate_digest(digest)  # before anything touches a path
    offset = _int_header(upload_offset, "Upload-Offset")
    length = _int_header(upload_length, "Upload-Length")
    if length > settings.max_blob_bytes:
        raise E.RequestTooLargeError(f"Upload-Length {length} exceeds this server's limit of "
                                     f"{settings.max_blob_bytes} bytes per blob")
    declared = request.headers.get("content-length")
    if offset > length or (declared is not None and offset + natural(declared, "Content-Length") > length):
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
        await anyio.to_thread.run_sync(_fits, request, uploads, caller, digest, upload.held, length)
        received = unchecked = 0
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
                unchecked += len(chunk)
                stats["bytes_received"] += len(chunk)
                if mine:
                    mine["bytes_received"] += len(chunk)
                if unchecked >= QUOTA_RECHECK_BYTES:  # other uploads of this owner may have grown meanwhile
                    unchecked = 0
                    if await anyio.to_thread.run_sync(uploads.held_bytes) > settings.max_partial_bytes:
                        await anyio.to_thread.run_sync(upload.rollback)
                        raise E.UploadQuotaError(f"the unfinished uploads of {_whose(caller)} grew past this "
                                                 f"server's limit of {settings.max_partial_bytes:,} bytes during "
                                                 "this request; its bytes were dropped", offset=upload.held)
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
        if mine:
            mine["blobs_stored"] += 1
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
        author=caller.owner if caller is not None else None, base_model=body.base_model, parents=body.parents,
        allow_nonfinite=body.allow_nonfinite)
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


@router.put("/repos/{ns}/{name}/branches/{branch}", summary="Point a branch at a revision, creating or moving it "
            "(main included: a rollback)", response_model=RevisionOut,
            responses=error_docs(400, 401, 403, 404, 409, 413, 422))
def put_branch(request: Request, ns: NS, name: NAME, branch: TAG, body: BranchIn,
               _: Annotated[Caller, Depends(write_ns)]) -> Response:
    info = registry_of(request).branch(ref_id(ns, name, body.ref), check_tag(branch))
    return JSONResponse(info.to_dict())


@router.delete("/repos/{ns}/{name}/revisions/{ref}", summary="Delete a revision that nothing needs, on the record "
               "(admin on its namespace); its blobs go at the next gc", response_model=RevisionOut,
               responses=error_docs(400, 401, 403, 404, 409))
def delete_revision(request: Request, ns: NS, name: NAME, ref: REF) -> Response:
    caller = require(request, "admin", ns)
    info = registry_of(request).delete_revision(ref_id(ns, name, ref),
                                                deleted_by=caller.owner if caller is not None else None)
    return JSONResponse(info.to_dict())


@router.get("/repos/{ns}/{name}/retention", summary="The repository's retention rule (null when it has none)",
            responses=error_docs(400, 401, 403, 404))
def get_retention(request: Request, ns: NS, name: NAME, _: Annotated[Caller, Depends(read_ns)]) -> Response:
    policy = registry_of(request).retention(repo_id(ns, name))
    return JSONResponse({"policy": policy.to_dict() if policy else None})


@router.put("/repos/{ns}/{name}/retention", summary="Set or remove the repository's retention rule (admin on its "
            "namespace); gc enforces it", responses=error_docs(400, 401, 403, 404, 413, 422))
def put_retention(request: Request, ns: NS, name: NAME, body: RetentionIn) -> Response:
    require(request, "admin", ns)
    policy = registry_of(request).set_retention(repo_id(ns, name), body.keep_last, keep_tagged=body.keep_tagged)
    return JSONResponse({"policy": policy.to_dict() if policy else None})


@router.post("/retention/apply", summary="Delete the revisions retention rules do not keep and nothing needs",
             responses=error_docs(400, 401, 403, 404, 413, 422))
def apply_retention(request: Request, body: RetentionApplyIn) -> Response:
    target = parse_id(body.repo, allow_ref=False).repo if body.repo else None
    caller = require(request, "admin", target.split("/", 1)[0] if target else None)
    if target is None and caller is not None and caller.namespaces is not None:
        raise E.ForbiddenError("applying every retention rule reaches every namespace: name the repository "
                               f"(this token is limited to {', '.join(sorted(caller.namespaces))})")
    return JSONResponse(registry_of(request).apply_retention(target, dry_run=body.dry_run).to_dict())


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

@router.post("/gc", summary="Delete unreferenced blobs and stale partial uploads older than the grace period "
             "(an admin token without a namespace limit)", response_model=GcOut,
             responses=error_docs(401, 403, 413, 422))
def gc(request: Request, caller: Annotated[Caller, Depends(admin)], body: GcIn | None = None) -> Response:
    if caller is not None and caller.namespaces is not None:
        raise E.ForbiddenError(
            "gc is store-wide: a blob is stored once for every namespace that uses it, and an uncommitted upload "
            "of any namespace would be deleted too, so only an admin token without a namespace limit may run it; "
            f"this token is limited to {', '.join(sorted(caller.namespaces))} (unfinished uploads expire by "
            f"themselves after {_hours(request.app.state.settings.upload_ttl)} idle)")
    body = body or GcIn()
    return JSONResponse(registry_of(request).gc(grace_seconds=body.grace_seconds, dry_run=body.dry_run).to_dict())


@router.post("/scrub", summary="Rehash the stored blobs not verified within max_age seconds now, quarantining "
             "corrupt ones (the server also does this every --scrub-interval); an admin token without a namespace "
             "limit", responses=error_docs(401, 403, 422))
def scrub(request: Request, caller: Annotated[Caller, Depends(admin)], max_age: float = 0.0) -> Response:
    if caller is not None and caller.namespaces is not None:
        raise E.ForbiddenError("a scrub reads the whole store, shared by every namespace: only an admin token "
                               "without a namespace limit may run one")
    return JSONResponse(registry_of(request).scrub(max_age=max(0.0, max_age)).to_dict())


@router.get("/stats", summary="Server counters since start (a namespace admin: those of its namespaces)",
            response_model=StatsOut, responses=error_docs(401, 403))
def stats(request: Request, caller: Annotated[Caller, Depends(admin)]) -> Response:
    area = _uploads(request)
    if caller is None or caller.namespaces is None:
        reg = registry_of(request)
        return JSONResponse({**request.app.state.stats, "uploads_in_progress": area.in_progress(),
                             "partial_upload_bytes": area.held_bytes(), **reg.integrity_counters,
                             **reg.integrity_report()})
    names = set(caller.namespaces)
    totals = {"requests": 0, "bytes_received": 0, "blobs_stored": 0}
    for limit, figures in list(request.app.state.stats_by_namespaces.items()):
        if set(limit) <= names:  # tokens limited to these namespaces (or some of them): their activity only
            for key in totals:
                totals[key] += figures[key]
    owned = [area.of(d.name) for d in (area.folder.iterdir() if area.folder.is_dir() else ())
             if d.is_dir() and _within(owner_namespaces(d.name), names)]
    reg = registry_of(request)
    return JSONResponse({"namespaces": sorted(names), **totals,
                         "uploads_in_progress": sum(a.in_progress() for a in owned),
                         "partial_upload_bytes": sum(a.held_bytes() for a in owned),
                         "repositories": sum(len(reg.list(ns)) for ns in sorted(names)),
                         **reg.integrity_report(sorted(names))})


__all__ = ["router"]
