"""The ModelScope write protocol as modelscope 1.40 / modelscope-hub 0.5 speak it: `HubApi.create_repo`,
`upload_folder` and `upload_file` land as registry revisions (docs/MODELSCOPE.md, "Write side").

    POST /api/v1/login                                             {"AccessToken"}: the token's owner
    GET  /openapi/v1/users/me                                      the token's owner (login's whoami)
    POST /api/v1/models                                            create {Path, Name, Visibility, ...}
    POST /api/v1/repos/models/{owner}/{name}/info/lfs/objects/batch  {operation, objects: [{oid, size}]}
    PUT  /api/v1/repos/models/{owner}/{name}/lfs/objects/{oid}     ?Size=: the href the batch hands out
    POST /api/v1/repos/models/{owner}/{name}/commit/{revision}     {commit_message, actions: [...]}
    POST /api/v1/models/{owner}/{name}/repo/tag                    {TagName, Ref}: create_repo_tag

The client sends `Authorization: Bearer <token>` and the cookie `m_session_id=<token>` on every call,
the blob PUT included, so the href needs no signature: the PUT is checked like every write (a write
token for the namespace) and its bytes are stored only if they hash to the oid. The batch answers an
object without `actions` (present: the client skips it) only when the store holds it and the token
may name it (its namespaces' blobs or its own uploads, `auth.visible`); a digest learnt elsewhere
grants nothing.

A commit is a registry commit (service/commits.py): its actions (`create`/`update` with inline
base64 `content` or an `lfs` sha256, `delete`) are applied to the branch head's files and pushed as
one revision, validated like `swiftreg push` (pickles left out and recorded), or refused with the
push's words and nothing stored. The revision `master` (the client's default) is the branch `main`
unless the repository has a branch called `master`. A repository made by `create_repo` exists with
no revision until its first commit.

Answers are `{"Code": 200, "Success": true, "Data": ...}`; refusals ModelScope's error envelope
`{"Code", "Success": false, "Message", "RequestId"}` with the HTTP status in `Code`. Validation
refusals (422 elsewhere in the server) are answered 400 here: the client raises `InvalidParameter` for
400 and does not retry it, while it treats an unknown 4xx as transient and commits the batch again.
A write with no token, or one the server does not know, is refused before its body is read by the
server's hygiene layer (hygiene.py), which answers these routes in ModelScope's envelope too.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
import uuid
from typing import Any, Awaitable, Callable

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

import converters

from .. import errors as E
from ..api import RevisionInfo
from ..ids import DEFAULT_REF
from ..params import natural, unstorable
from ..service.commits import CommitOperation, CommitResult
from ..service.hub_uploads import start_whole
from ..store.errors import BlobDigestMismatch
from ..tokens import TokenInfo, verify
from .auth import counters, present_to, prove, require, scoped, upload_owner, visible
from .errors import HubRefusal, hub_errors, refusal, scrub_for
from .schemas import read_capped
from .lookup import hub_repo, lookup, registry_of
from .modelscope import MASTER, SESSION_COOKIE

log = logging.getLogger("swiftreg.server.modelscope_upload")

router = APIRouter(tags=["modelscope"])

OID = re.compile(r"^[0-9a-f]{64}$")
#: A commit's JSON body: the client keeps a batch of inline files near 8 MiB of base64 but sends one larger
#: inline file (a big README or config.json) alone, so the cap is well above its budget.
MAX_COMMIT_BYTES = 64 << 20
MAX_JSON_BYTES = 4 << 20
#: Seconds a PUT waits for another writer of the same object to finish.
UPLOAD_LOCK_WAIT = 5.0
#: Bytes of a PUT's body gathered before they are written (each write is a hop to a worker thread).
WRITE_BYTES = 1 << 20
#: Statuses ModelScope's client reads differently from the rest of the server: a refusal of the request's
#: content is 400 (InvalidParameter, never retried), not 422 (an APIError it retries as unknown).
STATUS = {422: 400}


#: This dialect's write routes: a write hygiene.py refuses before its body is read is answered in their shape.
WRITE_ROUTES = re.compile(r"/api/v1/(?:models|login|models/[^/]+/[^/]+/repo/tag|repos/models/[^/]+/[^/]+/"
                          r"(?:info/lfs/objects/batch|lfs/objects/[0-9a-f]{64}|commit/[^/]+))")


# ----- answers ----------------------------------------------------------------------------------------------

def refusal_before_body(path: str, exc: E.RegistryError) -> JSONResponse | None:
    """`exc` in ModelScope's envelope when `path` is one of this dialect's write routes (for hygiene.py's
    "a token before the body" refusals, which the client then reports with their message), else None."""
    if not WRITE_ROUTES.fullmatch(path):
        return None
    return _render(HubRefusal(E.status_of(exc), None, str(exc), dict(getattr(exc, "headers", None) or {})))


def _render(exc: HubRefusal) -> JSONResponse:
    status = STATUS.get(exc.status, exc.status)
    return JSONResponse({"Code": status, "Success": False, "Message": exc.message, "RequestId": uuid.uuid4().hex},
                        status_code=status, headers=exc.headers)


_ms_errors = hub_errors(_render, "ModelScope write API", log)


def _envelope(data: Any) -> JSONResponse:
    return JSONResponse({"Code": 200, "Success": True, "Message": "success", "RequestId": uuid.uuid4().hex,
                         "Data": data})


def _refusal_of(request: Request, exc: BaseException) -> Response:
    """`exc` in ModelScope's error shape, as `hub_errors` answers it in a synchronous route (a dependency
    that is down: 503 with Retry-After); anything that is not a refusal is raised again."""
    if isinstance(exc, HubRefusal):
        return _render(HubRefusal(exc.status, exc.code, scrub_for(registry_of(request), exc.message), exc.headers))
    down = request.app.state.dependencies.refusal_for(exc)
    if down is None and not isinstance(exc, (E.RegistryError, converters.FormatError)):
        raise exc
    shown = down if down is not None else exc
    assert isinstance(shown, (E.RegistryError, converters.FormatError))
    status = refusal(shown)[0]
    if status >= 500 and down is None:
        log.error("%s in the ModelScope write API: %s", type(exc).__name__, exc)
    return _render(HubRefusal(status, None, scrub_for(registry_of(request), str(shown)),
                              dict(getattr(shown, "headers", None) or {})))


def _ms_errors_async(route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """`hub_errors` for the routes that read their body themselves (async)."""

    @functools.wraps(route)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await route(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - refusals answered, anything else raised again
            return _refusal_of(kwargs["request"], exc)

    return wrapper


async def _json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, read with a cap (413 past `limit` bytes)."""
    raw = await read_capped(request, limit)
    try:
        body = json.loads(raw or b"{}", parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise HubRefusal(400, None, f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HubRefusal(400, None, "the request body must be a JSON object")
    problem = unstorable(body)  # NUL and lone surrogates: no database or file name takes them
    if problem is not None:
        raise HubRefusal(400, None, f"{problem}: strings may not hold NUL characters or lone surrogates")
    return body


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# ----- who may write ------------------------------------------------------------------------------------------

def _secret(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


def _writer(request: Request, owner: str) -> TokenInfo:
    """The caller's token if it may write namespace `owner` (401 / 403 in ModelScope's shape otherwise)."""
    caller = require(request, "write", owner, secret=_secret(request))
    assert caller is not None  # writes never pass without a token
    return caller


def _repo(request: Request, owner: str, name: str) -> tuple[str, TokenInfo]:
    """`owner/name` and the caller's token, once the token may write it and it is a repository id."""
    caller = _writer(request, owner)
    return hub_repo(request, owner, name, _secret(request)), caller


def _branch(request: Request, repo: str, revision: str) -> str:
    """The branch a ModelScope revision names: `master` is `main` unless the repo has a branch `master`."""
    if revision != MASTER:
        return revision
    try:
        info = registry_of(request).show(f"{repo}@{MASTER}")
    except (E.NotFoundError, E.InvalidIdError):
        return DEFAULT_REF
    return MASTER if MASTER in info.branches else DEFAULT_REF


def _commit_id(request: Request, owner: str, name: str, info: RevisionInfo) -> str:
    """The commit id the ModelScope read routes show for this revision (lookup.py)."""
    return lookup(request, owner, name, str(info.number), swift_fallback=True, secret=_secret(request)).commit


# ----- login --------------------------------------------------------------------------------------------------

def _user(token: TokenInfo) -> dict[str, Any]:
    return {"Username": token.owner, "username": token.owner, "name": token.owner, "Email": "",
            "SwiftReg": {"scope": token.scope, "namespaces": token.namespaces}}


@router.post("/api/v1/login")
@_ms_errors_async
async def login(request: Request) -> Response:
    """`HubApi.login(token)`: the token must be one this registry knows. No git token is handed out: the
    registry takes pushes through this API, never over git."""
    body = await _json(request, MAX_JSON_BYTES)
    secret = body.get("AccessToken")
    if not isinstance(secret, str) or not secret.strip():
        raise HubRefusal(400, None, "AccessToken: a swiftreg token (swiftreg token create)")
    token = await run_in_threadpool(_known, request, secret.strip())
    return _envelope({**_user(token), "AccessToken": ""})


def _known(request: Request, secret: str) -> TokenInfo:
    token = verify(registry_of(request), secret)
    if token is None or token.revoked:
        raise HubRefusal(401, None, "the token is unknown or revoked", {"WWW-Authenticate": "Bearer"})
    return token


@router.get("/openapi/v1/users/me")
@_ms_errors
def whoami(request: Request) -> Response:
    token = require(request, "read", None, secret=_secret(request))
    if token is None:  # --anonymous-read lets a read through without a token: there is no one to name
        raise HubRefusal(401, None, "this route needs a bearer token (swiftreg token create)")
    return JSONResponse({"success": True, "code": "", "message": "", "data": _user(token)})


# ----- create -------------------------------------------------------------------------------------------------

@router.post("/api/v1/models")
@_ms_errors_async
async def create_model(request: Request) -> Response:
    """`HubApi.create_repo(..., "model")`: an adapter repository with no revision yet. One that exists is
    409 ("already exists": the client's exist_ok and upload_folder take it as success). Visibility,
    License and the display fields are accepted and not kept: access is the tokens'."""
    body = await _json(request, MAX_JSON_BYTES)
    owner, name = body.get("Path"), body.get("Name")
    if not isinstance(owner, str) or not owner or not isinstance(name, str) or not name:
        raise HubRefusal(400, None, "Path (the namespace) and Name are required to create a model")
    return await run_in_threadpool(_create, request, owner, name)


def _create(request: Request, owner: str, name: str) -> Response:
    repo, _ = _repo(request, owner, name)
    if not registry_of(request).create_repo(repo):
        raise HubRefusal(409, None, f"The model {repo} already exists")
    return _envelope({"Path": owner, "Name": name, "Id": repo, "Visibility": 5, "Revisions": 0})


# ----- large files --------------------------------------------------------------------------------------------

@router.post("/api/v1/repos/models/{owner}/{name}/info/lfs/objects/batch")
@_ms_errors_async
async def lfs_batch(request: Request, owner: str, name: str) -> Response:
    """Which blobs the client must PUT: an href each, except those the store holds for this token."""
    body = await _json(request, MAX_JSON_BYTES)
    if body.get("operation", "upload") != "upload":
        raise HubRefusal(400, None, f"operation {body.get('operation')!r}: only 'upload' is served here")
    objects = body.get("objects")
    if not isinstance(objects, list):
        raise HubRefusal(400, None, "objects: a list of {oid, size}")
    wanted = [_object(o) for o in objects]
    return await run_in_threadpool(_batch, request, owner, name, wanted)


def _object(obj: Any) -> tuple[str, int]:
    oid = obj.get("oid") if isinstance(obj, dict) else None
    size = obj.get("size") if isinstance(obj, dict) else None
    if not isinstance(oid, str) or not OID.fullmatch(oid):
        raise HubRefusal(400, None, f"oid {oid!r}: the sha256 of the file, 64 lowercase hex characters")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise HubRefusal(400, None, f"size of {oid}: a whole number of bytes")
    return oid, size


def _batch(request: Request, owner: str, name: str, wanted: list[tuple[str, int]]) -> Response:
    repo, caller = _repo(request, owner, name)
    limit = request.app.state.settings.max_blob_bytes
    base = str(request.base_url).rstrip("/")
    answered = []
    for oid, size in dict.fromkeys(wanted):
        if size > limit:
            raise HubRefusal(413, None, f"{oid}: {size} bytes exceed this server's limit of {limit} bytes per file")
        digest = "sha256:" + oid
        if present_to(request, caller, digest, size):
            answered.append({"oid": oid, "size": size})
            continue
        href = f"{base}/api/v1/repos/models/{repo}/lfs/objects/{oid}?Size={size}"
        answered.append({"oid": oid, "size": size, "actions": {"upload": {"href": href, "expires_in": 86400}}})
    return _envelope({"objects": answered})




@router.put("/api/v1/repos/models/{owner}/{name}/lfs/objects/{oid}")
@_ms_errors_async
async def lfs_put(request: Request, owner: str, name: str, oid: str,
                  Size: str | None = None) -> Response:  # noqa: N803
    """One whole blob, stored only if its bytes hash to `oid` and number `Size`."""
    if not OID.fullmatch(oid):
        raise HubRefusal(400, None, f"{oid!r} is not a sha256 (64 lowercase hex characters)")
    if Size is None:
        raise HubRefusal(400, None, "the Size query parameter (the object's bytes) is required: use the batch's href")
    size = natural(Size, "Size")
    caller = await run_in_threadpool(_put_allowed, request, owner, name, size)
    declared = request.headers.get("content-length")
    if declared is not None and natural(declared, "Content-Length") != size:
        raise HubRefusal(400, None, f"Content-Length {declared} is not the object's size {size}")
    digest = "sha256:" + oid
    stored = await _receive_whole(request, caller, digest, size)
    prove(request, caller, digest)
    return _envelope({"oid": oid, "size": stored})


async def _receive_whole(request: Request, caller: TokenInfo, digest: str, size: int) -> int:
    """Stream the body into the caller's part of the upload area (swept by the upload TTL and gc) and store
    it as `digest` if it hashes so, nothing otherwise; a partial left by a cut PUT is started over."""
    uploads = request.app.state.uploads.of(upload_owner(caller))
    stats, mine = request.app.state.stats, counters(request, caller) if scoped(caller) else {}
    # emptied first: the client sends the whole object again after a cut attempt (hub_uploads.py)
    upload = await anyio.to_thread.run_sync(start_whole, uploads, digest, UPLOAD_LOCK_WAIT)
    if upload is None:
        raise E.UploadInProgressError("another upload of this object is in progress; retry")
    try:
        received, pending = 0, bytearray()
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > size:
                    await anyio.to_thread.run_sync(upload.rollback)
                    raise HubRefusal(400, None, f"the body runs past the object's size {size}")
                pending += chunk
                if len(pending) >= WRITE_BYTES:  # one thread hop per MiB, not per socket read
                    await anyio.to_thread.run_sync(upload.append, bytes(pending))
                    _count(stats, mine, "bytes_received", len(pending))
                    pending.clear()
        except ClientDisconnect:
            raise E.ClientDisconnectedError("the connection closed before the object's last byte") from None
        if pending:
            await anyio.to_thread.run_sync(upload.append, bytes(pending))
            _count(stats, mine, "bytes_received", len(pending))
        if received != size:
            raise HubRefusal(400, None, f"the body holds {received} bytes, the object {size}")
        try:
            info = await run_in_threadpool(upload.finish)
        except BlobDigestMismatch as exc:
            raise HubRefusal(400, None, f"the bytes sent hash to {exc.actual}, not to the object's oid "
                             f"{digest.removeprefix('sha256:')}: nothing was stored") from None
        _count(stats, mine, "blobs_stored", 1)
        return info.size
    finally:
        upload.close()


def _count(stats: dict[str, int], mine: dict[str, int], key: str, n: int) -> None:
    """The server's counters, and those of the caller's namespaces when its token is scoped (auth.counters)."""
    stats[key] += n
    if mine:
        mine[key] += n


def _put_allowed(request: Request, owner: str, name: str, size: int) -> TokenInfo:
    _, caller = _repo(request, owner, name)
    limit = request.app.state.settings.max_blob_bytes
    if size > limit:
        raise HubRefusal(413, None, f"{size} bytes exceed this server's limit of {limit} bytes per file")
    return caller


# ----- commit -------------------------------------------------------------------------------------------------

@router.post("/api/v1/repos/models/{owner}/{name}/commit/{revision}")
@_ms_errors_async
async def commit(request: Request, owner: str, name: str, revision: str) -> Response:
    """A commit of `actions` on branch `revision`: one revision, or nothing and the reason."""
    body = await _json(request, MAX_COMMIT_BYTES)
    actions = body.get("actions")
    if not isinstance(actions, list) or not actions:
        raise HubRefusal(400, None, "actions: a non-empty list of {action, path, type, ...}")
    message = body.get("commit_message")
    return await run_in_threadpool(_commit, request, owner, name, revision, actions,
                                   message if isinstance(message, str) else None)


def _commit(request: Request, owner: str, name: str, revision: str, actions: list[Any],
            message: str | None) -> Response:
    repo, caller = _repo(request, owner, name)
    operations = [_operation(request, caller, action) for action in actions]
    registry = registry_of(request)
    try:
        done: CommitResult = registry.commit(repo, operations, branch=_branch(request, repo, revision),
                                             message=message, author=caller.owner)
    except E.NotFoundError as exc:
        if str(exc).startswith("no adapter"):
            raise HubRefusal(404, None, f"The model {repo} does not exist: create it first "
                             "(HubApi.create_repo, which upload_folder calls)") from None
        raise
    info = done.revision
    commit_id = _commit_id(request, owner, name, info)
    return _envelope({"CommitId": commit_id, "Revision": commit_id, "Message": message or "",
                      "SwiftReg": {"revision": info.number, "digest": info.digest, "format": info.format,
                                   "created": done.created, "left_out": done.left_out, "notices": done.notices}})


def _operation(request: Request, caller: TokenInfo, action: Any) -> CommitOperation:
    """One ModelScope commit action as a registry commit operation."""
    if not isinstance(action, dict):
        raise HubRefusal(400, None, "each action is an object {action, path, type, ...}")
    kind, path = action.get("action"), action.get("path")
    if not isinstance(path, str) or not path:
        raise HubRefusal(400, None, f"action {kind!r}: path is required")
    if kind == "delete":
        return CommitOperation("delete", path)
    if kind not in ("create", "update"):
        raise HubRefusal(400, None, f"{path}: action {kind!r} is not one of create, update, delete")
    size = action.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise HubRefusal(400, None, f"{path}: size must be a whole number of bytes")
    if action.get("type") == "lfs":
        oid = action.get("sha256")
        if not isinstance(oid, str) or not OID.fullmatch(oid):
            raise HubRefusal(400, None, f"{path}: sha256 {oid!r} is not 64 lowercase hex characters")
        digest = "sha256:" + oid
        if not visible(request, caller, digest):  # the dedup rule: only its namespaces' blobs or its own uploads
            raise E.BlobsMissingError(f"{path}: the object {oid} was not uploaded for this token's namespaces; "
                                      "upload it through the LFS batch first", [digest])
        return CommitOperation("add", path, sha256=digest, size=size)
    if action.get("type", "normal") != "normal":
        raise HubRefusal(400, None, f"{path}: type {action.get('type')!r} is not normal or lfs")
    content = action.get("content", "")
    if not isinstance(content, str) or action.get("encoding", "base64") not in ("base64", ""):
        raise HubRefusal(400, None, f"{path}: content must be base64 text (encoding 'base64')")
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise HubRefusal(400, None, f"{path}: content is not valid base64") from None
    if size is not None and size != len(data):
        raise HubRefusal(400, None, f"{path}: size says {size} bytes, the content holds {len(data)}")
    return CommitOperation("add", path, content=data)


# ----- tags ---------------------------------------------------------------------------------------------------

@router.post("/api/v1/models/{owner}/{name}/repo/tag")
@_ms_errors_async
async def create_tag(request: Request, owner: str, name: str) -> Response:
    """`HubApi.create_repo_tag` / `create_model_tag`: a registry tag (immutable: an existing one is 409)."""
    body = await _json(request, MAX_JSON_BYTES)
    tag, ref = body.get("TagName"), body.get("Ref") or MASTER
    if not isinstance(tag, str) or not tag or not isinstance(ref, str):
        raise HubRefusal(400, None, "TagName (the tag) and Ref (a branch, tag or commit) are required")
    return await run_in_threadpool(_tag, request, owner, name, tag, ref)


def _tag(request: Request, owner: str, name: str, tag: str, ref: str) -> Response:
    repo, _ = _repo(request, owner, name)
    served = lookup(request, owner, name, ref, swift_fallback=True, secret=_secret(request),
                    or_else=DEFAULT_REF if ref == MASTER else None)
    info = registry_of(request).tag(f"{repo}@{served.info.number}", tag)
    return _envelope({"TagName": tag, "Revision": served.commit, "SwiftReg": {"revision": info.number}})
