"""The Hugging Face Hub upload protocol (LFS path): `push_to_hub`, `upload_folder`, `create_commit` and
`hf upload` from an unmodified huggingface_hub land as registry revisions (docs/HF_PROTOCOL.md, "Upload").

    POST   /api/repos/create                              {name, organization, visibility?, type?} -> {url}; 409
                                                          when it exists (the client's exist_ok takes that)
    POST   /api/validate-yaml                             {content, repoType} -> {errors, warnings} (no token:
                                                          the client sends none; it only parses the card)
    POST   /api/models/{ns}/{name}/preupload/{rev}        {files: [{path, sample, size}]} -> uploadMode, oid
    POST   /{ns}/{name}.git/info/lfs/objects/batch        git-lfs batch: signed basic / multipart hrefs, or no
                                                          `actions` for an object the token may already name
    PUT    /api/lfs-uploads/{oid}?<grant>&sig=            a whole object (basic)       } no Authorization:
    PUT    /api/lfs-uploads/{oid}/part/{n}?<grant>&sig=   one part -> ETag              } the signed href is
    POST   /api/lfs-uploads/{oid}?<grant>&sig=            multipart completion          } the credential
    POST   /api/lfs-uploads/{oid}/verify                  {oid, size}, with the token: stored and the caller's
    POST   /api/models/{ns}/{name}/commit/{rev}           NDJSON: header, file, lfsFile, deletedFile,
                                                          deletedFolder, copyFile -> {commitUrl, commitOid}
    POST   /api/models/{ns}/{name}/branch/{branch}        {startingPoint?}; DELETE removes it
    POST   /api/models/{ns}/{name}/tag/{rev}              {tag, message?}; DELETE .../tag/{tag} removes it
    GET    /api/models/{ns}/{name}/commits/{rev}          list_repo_commits (paged by Link)

A commit is a registry commit (service/commits.py): applied to the branch head's stored files and pushed
as one revision through `swiftreg push`'s checks, or refused with the push's words (422) and nothing
stored; a stale `parentCommit` is 412. `commitOid` is the revision's commit id as the read routes show it
(lookup.py). Uploads go into the blob store through service/hub_uploads.py, hashed against the oid
before they count. Tokens are swiftreg tokens (`HF_TOKEN`): writes need a write token for the namespace;
refusals are the Hub's shape (`{"error"}`, `X-Error-Code`, `X-Error-Message`).
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, quote

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Scope

import converters

from .. import errors as E
from ..api import RevisionInfo
from ..ids import DEFAULT_REF, check_tag
from ..manifest import Manifest
from ..params import natural
from ..service import Registry
from ..service import hub_uploads as H
from ..service.commits import CommitOperation
from ..store.errors import BlobDigestMismatch
from ..store.uploads import UploadArea
from ..tokens import TokenInfo
from .auth import EVERYONE, owner_namespaces, present_to, require, upload_owner, visible
from .errors import HubRefusal, hub_errors, refusal, scrub_for
from .schemas import read_capped
from .lookup import hub_repo, lookup, registry_of, repo_not_found, revision_not_found

log = logging.getLogger("swiftreg.server.hf_upload")

router = APIRouter(tags=["huggingface"])

UPLOADS = "/api/lfs-uploads/"
LFS_JSON = "application/vnd.git-lfs+json"
#: The NDJSON commit body is sent whole; inline ("regular") files are small (PREUPLOAD_REGULAR), so this bounds it.
MAX_COMMIT_BYTES = 256 << 20
MAX_JSON_BYTES = 4 << 20
#: Files at most this big and with no NUL byte in their first 512 bytes are sent inline in the commit.
REGULAR_MAX = 1 << 20
#: Seconds an upload waits for another writer of the same object.
LOCK_WAIT = 5.0
COMMITS_PAGE = 100
#: Paths that take a write without a bearer token: the client sends none there (see the module docstring).
VALIDATE_YAML = "/api/validate-yaml"


# ----- answers ----------------------------------------------------------------------------------------------

def _render(exc: HubRefusal) -> JSONResponse:
    """The Hub's error shape: `{"error": message}`, `X-Error-Code` and `X-Error-Message`."""
    headers = dict(exc.headers)
    if exc.code:
        headers["X-Error-Code"] = exc.code
    headers["X-Error-Message"] = "".join(c if " " <= c <= "~" else "?" for c in exc.message)[:500].strip()
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


_hf_errors = hub_errors(_render, "HF upload protocol", log)


def _hf_errors_async(route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """`hub_errors` for the routes that read their body themselves (async)."""

    @functools.wraps(route)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        request = kwargs["request"]
        try:
            return await route(*args, **kwargs)
        except HubRefusal as exc:
            return _render(HubRefusal(exc.status, exc.code, scrub_for(registry_of(request), exc.message),
                                      exc.headers))
        except Exception as exc:
            down = request.app.state.dependencies.refusal_for(exc)
            if down is None and not isinstance(exc, (E.RegistryError, converters.FormatError)):
                raise
            shown = down if down is not None else exc
            assert isinstance(shown, (E.RegistryError, converters.FormatError))
            status = refusal(shown)[0]
            if status >= 500 and down is None:
                log.error("%s in the HF upload protocol: %s", type(exc).__name__, exc)
            return _render(HubRefusal(status, None, scrub_for(registry_of(request), str(shown)),
                                      dict(getattr(shown, "headers", None) or {})))

    return wrapper


# ----- who and where ------------------------------------------------------------------------------------------

def _writer(request: Request, namespace: str) -> TokenInfo:
    """The caller's token if it may write `namespace`: 401 without a usable token, 403 with a weak one."""
    try:
        token = require(request, "write", namespace)
    except E.AccessDeniedError as exc:
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "www-authenticate"}
        raise HubRefusal(exc.status, None, str(exc), headers) from None
    assert token is not None  # writes always have one
    return token


def _repo(request: Request, namespace: str, name: str) -> tuple[str, TokenInfo]:
    """`ns/name` checked as an id, the caller's write token, and the repository's existence (RepoNotFound)."""
    caller = _writer(request, namespace)
    repo = hub_repo(request, namespace, name)
    try:
        registry_of(request).log(repo, limit=1)
    except E.NotFoundError:
        raise repo_not_found(repo) from None
    return repo, caller


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def commit_id(request: Request, info: RevisionInfo) -> str:
    """The revision's commit id as the read routes show it (lookup.py); the stored digest's first 40 hex when
    its PEFT form cannot be served (a Swift revision PEFT cannot express)."""
    namespace, name = info.repo.split("/", 1)
    try:
        return lookup(request, namespace, name, str(info.number)).commit
    except HubRefusal:
        return info.digest.removeprefix("sha256:")[:40]


async def _json(request: Request, limit: int = MAX_JSON_BYTES) -> Any:
    body = await read_capped(request, limit)
    try:
        return json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise HubRefusal(400, None, "the request body is not JSON") from None


# ----- create, validate-yaml, preupload -----------------------------------------------------------------------

@router.post("/api/repos/create")
@_hf_errors_async
async def create_repo(request: Request) -> Response:
    """An adapter repository with no revision yet (service/commits.py); 409 when the id is taken."""
    body = await _json(request)
    name, organization = body.get("name"), body.get("organization")
    kind = body.get("type") or "model"
    if kind != "model":
        raise HubRefusal(400, None, f"this registry holds model repositories only, not {kind!r}")
    if not isinstance(name, str) or not name:
        raise HubRefusal(400, None, "name: the repository's name")
    if organization is None:
        token = await run_in_threadpool(require, request, "write", None)
        spaces = sorted(token.namespaces or []) if token is not None else []
        if len(spaces) != 1:
            raise HubRefusal(400, None, "give the repository as namespace/name: this token does not name exactly one "
                             "namespace")
        organization = spaces[0]
    if not isinstance(organization, str):
        raise HubRefusal(400, None, "organization: the namespace of the repository")
    await run_in_threadpool(_writer, request, organization)
    repo = hub_repo(request, organization, name)
    created = await run_in_threadpool(registry_of(request).create_repo, repo)
    url = f"{_base(request)}/{repo}"
    if not created:  # the client's exist_ok reads `url` from this 409's body too (hf_api.create_repo)
        message = f"You already created this model repo: {repo}"
        return JSONResponse({"error": message, "url": url}, status_code=409, headers={"X-Error-Message": message})
    return JSONResponse({"url": url, "name": repo, "id": repo})


@router.post(VALIDATE_YAML)
@_hf_errors_async
async def validate_yaml(request: Request) -> Response:
    """The client (RepoCard.validate) asks before pushing a README; it sends no token and reads JSON. The
    registry does not judge model cards: the card is stored as a file of the revision."""
    await _json(request)
    return JSONResponse({"errors": [], "warnings": []})


@router.post("/api/models/{namespace}/{name}/preupload/{rev:path}")
@_hf_errors
def preupload(request: Request, namespace: str, name: str, rev: str, body: dict[str, Any]) -> Response:
    """Per file: `lfs` (straight into the blob store) unless small text, which rides inline in the commit;
    `oid` when the branch head already holds the same bytes at that path (the client then skips the file:
    sha256 for LFS, git's sha1 for inline files)."""
    repo, _ = _repo(request, namespace, name)
    files = body.get("files")
    if not isinstance(files, list):
        raise HubRefusal(400, None, "files: a list of {path, sample, size}")
    head = _head_files(registry_of(request), repo, rev)
    answered = []
    for item in files:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise HubRefusal(400, None, "each file: {path, sample, size}")
        path, size = item["path"], item.get("size")
        try:
            sample = base64.b64decode(item.get("sample") or "", validate=True)
        except (binascii.Error, ValueError):
            raise HubRefusal(400, None, f"{path}: sample is not base64") from None
        mode = "regular" if isinstance(size, int) and size <= REGULAR_MAX and b"\0" not in sample else "lfs"
        entry: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": False}
        known = head.get(path)
        if known is not None:
            entry["oid"] = known[0] if mode == "lfs" else _git_sha1(registry_of(request), known[0], known[1])
        answered.append(entry)
    return JSONResponse({"files": answered, "commitOid": None})


def _head_files(registry: Registry, repo: str, rev: str) -> dict[str, tuple[str, int]]:
    """path -> (sha256 hex, size) of the stored files at branch `rev` ({} for a repository with no revision)."""
    try:
        info = registry.show(f"{repo}@{rev}")
    except (E.NotFoundError, E.InvalidIdError, E.AmbiguousRefError):
        return {}
    return {f.path: (f.sha256.removeprefix("sha256:"), f.size) for f in Manifest.from_json(info.manifest).files}


def _git_sha1(registry: Registry, hex256: str, size: int) -> str | None:
    """git's blob id of a small stored file (what the client compares its inline files by)."""
    if size > REGULAR_MAX:
        return None
    with registry.store.open("sha256:" + hex256) as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ----- LFS batch and the signed upload hrefs ------------------------------------------------------------------

@router.post("/{namespace}/{name}.git/info/lfs/objects/batch")
@_hf_errors
def lfs_batch(request: Request, namespace: str, name: str, body: dict[str, Any]) -> Response:
    """git-lfs batch for uploads: an object the caller may already name (stored, and its namespaces' or its
    own upload: `auth.visible`) is answered without `actions`; others get signed hrefs, basic or multipart."""
    _, caller = _repo(request, namespace, name)
    if body.get("operation") != "upload":
        raise HubRefusal(400, None, "this endpoint takes uploads only (operation: upload)")
    objects = body.get("objects")
    if not isinstance(objects, list):
        raise HubRefusal(400, None, "objects: a list of {oid, size}")
    transfers = body.get("transfers") or ["basic"]
    settings = request.app.state.settings
    signer = _signer(request)
    owner = upload_owner(caller)
    answered, chosen = [], "basic"
    for obj in objects:
        oid, size = _object(obj)
        if size > settings.max_blob_bytes:
            answered.append({"oid": oid, "size": size, "error": {
                "code": 413, "message": f"{size} bytes exceed this server's limit of {settings.max_blob_bytes}"}})
            continue
        digest = "sha256:" + oid
        if present_to(request, caller, digest, size):
            answered.append({"oid": oid, "size": size})
            continue
        grant = H.grant_for(owner, caller.id, oid, size)
        if grant.chunk is not None and "multipart" not in transfers:
            grant = H.Grant(grant.owner, grant.token_id, oid, size, None, grant.expires)
        href = _href(request, signer, grant)
        upload: dict[str, Any] = {"href": href, "expires_at": _iso(grant.expires)}
        if grant.chunk is not None:
            chosen = "multipart"
            upload["header"] = {"chunk_size": str(grant.chunk), **{
                str(n): _href(request, signer, grant, n) for n in range(1, H.part_count(size, grant.chunk) + 1)}}
        answered.append({"oid": oid, "size": size, "authenticated": True, "actions": {
            "upload": upload,
            "verify": {"href": f"{_base(request)}{UPLOADS}{oid}/verify", "expires_at": _iso(grant.expires)}}})
    return JSONResponse({"transfer": chosen, "objects": answered, "hash_algo": "sha256"}, media_type=LFS_JSON)


def _object(obj: Any) -> tuple[str, int]:
    oid = obj.get("oid") if isinstance(obj, dict) else None
    size = obj.get("size") if isinstance(obj, dict) else None
    if not isinstance(oid, str) or len(oid) != 64 or any(c not in "0123456789abcdef" for c in oid):
        raise HubRefusal(400, None, f"oid {str(oid)[:80]!r}: the sha256 of the file, 64 lowercase hex characters")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise HubRefusal(400, None, f"size of {oid}: a whole number of bytes")
    return oid, size




def _signer(request: Request) -> H.Signer:
    state = request.app.state
    signer: H.Signer | None = getattr(state, "hub_signer", None)
    if signer is None:
        signer = state.hub_signer = H.Signer.of_home(registry_of(request).home)
    return signer


def _href(request: Request, signer: H.Signer, grant: H.Grant, part: int | None = None) -> str:
    where = f"{UPLOADS}{grant.oid}" + (f"/part/{part}" if part is not None else "")
    query = (f"owner={quote(grant.owner, safe='')}&tid={grant.token_id}&size={grant.size}&chunk={grant.chunk or 0}"
             f"&exp={grant.expires}&sig={signer.sign(grant, part)}")
    return f"{_base(request)}{where}?{query}"


def _iso(when: int) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _grant(query: dict[str, str], oid: str) -> tuple[H.Grant, str]:
    """The grant a signed href states (not yet checked) and its signature; 403 when it is not one."""
    try:
        chunk = int(query["chunk"])
        grant = H.Grant(query["owner"], int(query["tid"]), oid, int(query["size"]), chunk or None,
                        int(query["exp"]))
        return grant, query["sig"]
    except (KeyError, ValueError):
        raise HubRefusal(403, None, "this upload link is not signed: ask the batch endpoint for one") from None


def _query(scope_query: bytes | str) -> dict[str, str]:
    text = scope_query.decode("latin-1") if isinstance(scope_query, bytes) else scope_query
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}


def signed_write(scope: Scope) -> bool:
    """Whether a write without a bearer token may go on to its route (hygiene.py asks before the body is read):
    the model-card check the client makes with no token, or an upload href that carries a signature. The
    upload routes check the signature first thing, before reading a byte of the body, and answer 403 with
    the reason (another object's link, an expired one)."""
    path: str = scope.get("path", "")
    if path == VALIDATE_YAML:
        return True
    if not path.startswith(UPLOADS) or path.endswith("/verify"):
        return False
    return "sig" in _query(scope.get("query_string", b""))


def _checked_grant(request: Request, oid: str, part: int | None) -> H.Grant:
    grant, signature = _grant(_query(request.url.query), oid)
    why = _signer(request).valid(grant, signature, part)
    if why is not None:
        raise HubRefusal(403, None, why)
    return grant


def _count(request: Request, grant: H.Grant, n: int) -> None:
    """Bytes received, for the server's counters and those of the owner's namespaces (auth.counters)."""
    request.app.state.stats["bytes_received"] += n
    spaces = owner_namespaces(grant.owner)
    if spaces is not None:
        by_limit = request.app.state.stats_by_namespaces
        by_limit.setdefault(tuple(sorted(spaces)), {"requests": 0, "bytes_received": 0, "blobs_stored": 0})[
            "bytes_received"] += n


def _stored(request: Request, grant: H.Grant, digest: str) -> None:
    """An object stored: counted, and remembered as the token's (auth.visible's "uploaded it themselves")."""
    request.app.state.stats["blobs_stored"] += 1
    if grant.owner != EVERYONE:
        proven = request.app.state.proven.setdefault(grant.token_id, set())
        if len(proven) > 100_000:
            proven.clear()
        proven.add(digest)


def _fits(request: Request, grant: H.Grant) -> UploadArea:
    """The owner's upload area, once this object fits its quota of unfinished bytes (413)."""
    area: UploadArea = request.app.state.uploads.of(grant.owner)
    limit = request.app.state.settings.max_partial_bytes
    others = area.held_bytes(but="sha256:" + grant.oid)
    if others + grant.size > limit:
        raise HubRefusal(413, None, f"this upload of {grant.size:,} bytes would bring the unfinished uploads of its "
                         f"namespaces to {others + grant.size:,} bytes, over this server's limit of {limit:,}")
    return area


@router.put(UPLOADS + "{oid}")
@_hf_errors_async
async def upload_whole(request: Request, oid: str) -> Response:
    """A whole object (basic transfer), stored only if its bytes hash to `oid`."""
    grant = _checked_grant(request, oid, None)
    if grant.chunk is not None:
        raise HubRefusal(400, None, "this object is uploaded in parts: PUT each part's link, then POST this one")
    area = await run_in_threadpool(_fits, request, grant)
    digest = "sha256:" + oid
    upload = await anyio.to_thread.run_sync(H.start_whole, area, digest, LOCK_WAIT)
    if upload is None:
        raise E.UploadInProgressError("another upload of this object is in progress; retry")
    try:
        received = 0
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                received += len(chunk)
                if received > grant.size:
                    await anyio.to_thread.run_sync(upload.rollback)
                    raise HubRefusal(400, None, f"the body runs past the object's size {grant.size}")
                await anyio.to_thread.run_sync(upload.append, chunk)
                _count(request, grant, len(chunk))
        except ClientDisconnect:
            raise E.ClientDisconnectedError("the connection closed before the object's last byte") from None
        if received != grant.size:
            raise HubRefusal(400, None, f"the body holds {received} bytes, the object {grant.size}")
        try:
            info = await run_in_threadpool(upload.finish)
        except BlobDigestMismatch as exc:
            raise HubRefusal(400, None, f"the bytes sent hash to {exc.actual.removeprefix('sha256:')}, not to the "
                             f"object's oid {oid}: nothing was stored") from None
    finally:
        upload.close()
    _stored(request, grant, info.digest)
    return Response(status_code=200, headers={"ETag": f'"{oid}"'})


@router.put(UPLOADS + "{oid}/part/{number}")
@_hf_errors_async
async def upload_part(request: Request, oid: str, number: int) -> Response:
    """One part of a multipart object, written at its offset; answers the ETag the completion must list."""
    grant = _checked_grant(request, oid, number)
    if grant.chunk is None or not 1 <= number <= H.part_count(grant.size, grant.chunk):
        raise HubRefusal(400, None, f"part {number} is not a part of this object")
    offset, length = H.part_range(grant, number)
    area = await run_in_threadpool(_fits, request, grant)
    writer = await anyio.to_thread.run_sync(H.start_part, area, "sha256:" + oid, offset, LOCK_WAIT)
    if writer is None:
        raise E.UploadInProgressError("another upload of this object is in progress; retry")
    try:
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                if writer.written + len(chunk) > length:
                    raise HubRefusal(400, None, f"part {number} runs past its {length} bytes")
                await anyio.to_thread.run_sync(writer.write, chunk)
                _count(request, grant, len(chunk))
        except ClientDisconnect:
            raise E.ClientDisconnectedError(f"the connection closed before part {number}'s last byte") from None
        if writer.written != length:
            raise HubRefusal(400, None, f"part {number} holds {writer.written} bytes, not {length}")
    finally:
        await anyio.to_thread.run_sync(writer.close)
    return Response(status_code=200, headers={"ETag": f'"{_signer(request).etag(grant, number, length)}"'})


@router.post(UPLOADS + "{oid}")
@_hf_errors_async
async def upload_complete(request: Request, oid: str) -> Response:
    """Multipart completion `{oid, parts: [{partNumber, etag}]}`: the object hashed where it lies, stored
    only if it matches `oid`."""
    grant = _checked_grant(request, oid, None)
    if grant.chunk is None:
        raise HubRefusal(400, None, "this object is uploaded whole: PUT it to this link")
    body = await _json(request)
    if body.get("oid") != oid:
        raise HubRefusal(400, None, f"the completion names oid {str(body.get('oid'))[:80]!r}, the link {oid}")
    parts = body.get("parts")
    if not isinstance(parts, list) or not all(isinstance(p, dict) and isinstance(p.get("partNumber"), int)
                                              and isinstance(p.get("etag"), str) for p in parts):
        raise HubRefusal(400, None, "parts: a list of {partNumber, etag}")
    why = H.checked_parts(_signer(request), grant, [(p["partNumber"], p["etag"]) for p in parts])
    if why is not None:
        raise HubRefusal(400, None, why)
    area: UploadArea = request.app.state.uploads.of(grant.owner)
    try:
        done = await anyio.to_thread.run_sync(H.finish, area, "sha256:" + oid, grant.size, LOCK_WAIT)
    except BlobDigestMismatch as exc:
        raise HubRefusal(400, None, f"the parts hash to {exc.actual.removeprefix('sha256:')}, not to the object's "
                         f"oid {oid}: nothing was stored; upload it again") from None
    if isinstance(done, str):
        raise HubRefusal(400, None, done)
    _stored(request, grant, done.digest)
    return JSONResponse({"oid": oid, "size": done.size})


@router.post(UPLOADS + "{oid}/verify")
@_hf_errors
def upload_verify(request: Request, oid: str, body: dict[str, Any]) -> Response:
    """`{oid, size}` with the token: 200 when the object is stored and the caller's to name."""
    try:
        caller = require(request, "write", None)
    except E.AccessDeniedError as exc:
        raise HubRefusal(exc.status, None, str(exc)) from None
    assert caller is not None
    digest = "sha256:" + oid
    size = body.get("size")
    if body.get("oid") != oid or not present_to(request, caller, digest, size if isinstance(size, int) else -1):
        raise HubRefusal(404, None, f"object {oid} of {size} bytes is not stored")
    return JSONResponse({"oid": oid, "size": size})


# ----- commit -----------------------------------------------------------------------------------------------------

@router.post("/api/models/{namespace}/{name}/commit/{rev:path}")
@_hf_errors_async
async def commit(request: Request, namespace: str, name: str, rev: str) -> Response:
    """NDJSON: a header line, then one line per operation -> `{commitUrl, commitOid}`: one revision, or nothing."""
    if request.query_params.get("create_pr") in ("1", "true", "True"):
        raise HubRefusal(400, None, "pull requests are not supported by this registry: commit to a branch")
    repo, caller = await run_in_threadpool(_repo, request, namespace, name)
    lines = (await read_capped(request, MAX_COMMIT_BYTES)).splitlines()
    header, operations = await run_in_threadpool(_operations, request, caller, lines)
    registry = registry_of(request)
    parent = None
    if header.get("parentCommit"):
        parent = await run_in_threadpool(_parent_number, request, namespace, name, str(header["parentCommit"]))
    summary = str(header.get("summary") or "").strip()
    description = str(header.get("description") or "").strip()
    message = summary + (f"\n\n{description}" if description else "") or None
    try:
        result = await run_in_threadpool(functools.partial(
            registry.commit, repo, operations, branch=rev, parent=parent, message=message,
            author=caller.owner))
    except E.NotFoundError as exc:
        text = str(exc)
        if "has no branch" in text or "has no tag or branch" in text:
            raise revision_not_found(repo, rev, text) from None
        raise HubRefusal(404, "EntryNotFound", text + " (A file with this name doesn't exist)") from None
    except E.InvalidIdError as exc:
        raise revision_not_found(repo, rev, str(exc)) from None
    oid = await run_in_threadpool(commit_id, request, result.revision)
    return JSONResponse({"commitUrl": f"{_base(request)}/{repo}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None, "swiftreg": {
                             "revision": result.revision.number, "created": result.created,
                             "left_out": result.left_out, "notices": result.notices}})


def _operations(request: Request, caller: TokenInfo, lines: list[bytes]) -> tuple[dict[str, Any],
                                                                               list[CommitOperation]]:
    """The header and the operations of an NDJSON commit; an LFS file the caller may not name is refused."""
    header: dict[str, Any] | None = None
    operations: list[CommitOperation] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError):
            raise HubRefusal(400, None, f"line {number} of the commit is not {{key, value}} JSON") from None
        if not isinstance(value, dict):
            raise HubRefusal(400, None, f"line {number}: value must be an object")
        if key == "header":
            header = value
            continue
        path = value.get("path")
        if not isinstance(path, str):
            raise HubRefusal(400, None, f"line {number} ({key}): path must be a string")
        if key == "file":
            try:
                content = base64.b64decode(value.get("content") or "", validate=True)
            except (binascii.Error, ValueError):
                raise HubRefusal(400, None, f"{path}: content is not base64") from None
            operations.append(CommitOperation("add", path, content=content))
        elif key == "lfsFile":
            oid = value.get("oid")
            if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str):
                raise HubRefusal(400, None, f"{path}: an LFS file is named by its sha256 oid")
            digest = "sha256:" + oid
            size = value.get("size")
            stored = registry_of(request).store.exists(digest) if len(oid) == 64 else False
            if not stored or not visible(request, caller, digest):
                raise HubRefusal(422, None, f"{path}: LFS object {oid[:80]} was not uploaded (or is not this "
                                 "token's to name): upload it through the LFS batch endpoint first")
            operations.append(CommitOperation("add", path, sha256=digest, size=size if isinstance(size, int) else None))
        elif key == "deletedFile":
            operations.append(CommitOperation("delete", path))
        elif key == "deletedFolder":
            operations.append(CommitOperation("delete_folder", path.rstrip("/")))
        elif key == "copyFile":  # not sent by huggingface_hub 2.4.0 (copies arrive as file / lfsFile lines)
            target = value.get("newPath") or value.get("destination")
            if not isinstance(target, str):
                raise HubRefusal(400, None, f"{path}: copyFile needs newPath")
            operations.append(CommitOperation("copy", target, src_path=path,
                                              src_revision=value.get("srcRevision") or None))
        else:
            raise HubRefusal(400, None, f"line {number}: unknown commit operation {str(key)[:40]!r}")
    if header is None:
        raise HubRefusal(400, None, "the commit has no header line")
    return header, operations


def _parent_number(request: Request, namespace: str, name: str, parent: str) -> int:
    try:
        return lookup(request, namespace, name, parent).info.number
    except HubRefusal as exc:
        if exc.code == "RevisionNotFound":
            raise HubRefusal(412, None, f"parent commit {parent[:80]} is not a commit of {namespace}/{name}: pull, "
                             "then commit again") from None
        raise


# ----- branches, tags, commits ------------------------------------------------------------------------------

@router.post("/api/models/{namespace}/{name}/branch/{branch:path}")
@_hf_errors
def create_branch(request: Request, namespace: str, name: str, branch: str,
                  body: dict[str, Any] | None = None) -> Response:
    repo, _ = _repo(request, namespace, name)
    check_tag(branch)
    registry = registry_of(request)
    if _ref_kind(registry, repo, branch) is not None:
        raise HubRefusal(409, None, f"Reference already exists: {repo}@{branch}")
    start = (body or {}).get("startingPoint") or DEFAULT_REF
    number = lookup(request, namespace, name, str(start)).info.number
    registry.branch(f"{repo}@{number}", branch)
    return JSONResponse({})


@router.delete("/api/models/{namespace}/{name}/branch/{branch:path}")
@_hf_errors
def delete_branch(request: Request, namespace: str, name: str, branch: str) -> Response:
    repo, _ = _repo(request, namespace, name)
    registry = registry_of(request)
    if _ref_kind(registry, repo, branch) != "branch":
        raise revision_not_found(repo, branch)
    if branch == DEFAULT_REF:
        raise HubRefusal(403, None, f"the {DEFAULT_REF} branch of {repo} cannot be deleted")
    registry.remove_ref(f"{repo}@{branch}", force=True)
    return JSONResponse({})


@router.post("/api/models/{namespace}/{name}/tag/{rev:path}")
@_hf_errors
def create_tag(request: Request, namespace: str, name: str, rev: str, body: dict[str, Any]) -> Response:
    """A registry tag: immutable (409 when it exists: the client's exist_ok takes that; `swiftreg tag --force`
    moves one)."""
    repo, _ = _repo(request, namespace, name)
    tag = body.get("tag")
    if not isinstance(tag, str):
        raise HubRefusal(400, None, "tag: the tag's name")
    check_tag(tag)
    registry = registry_of(request)
    if _ref_kind(registry, repo, tag) is not None:
        raise HubRefusal(409, None, f"Reference already exists: {repo}@{tag} (tags are immutable; move one with "
                         f"swiftreg tag --force)")
    number = lookup(request, namespace, name, rev).info.number
    registry.tag(f"{repo}@{number}", tag)
    return JSONResponse({})


@router.delete("/api/models/{namespace}/{name}/tag/{tag:path}")
@_hf_errors
def delete_tag(request: Request, namespace: str, name: str, tag: str) -> Response:
    repo, _ = _repo(request, namespace, name)
    registry = registry_of(request)
    if _ref_kind(registry, repo, tag) != "tag":
        raise revision_not_found(repo, tag)
    registry.untag(repo, tag)
    return JSONResponse({})


def _ref_kind(registry: Registry, repo: str, ref: str) -> str | None:
    """"tag", "branch" or None: what `ref` is in `repo`."""
    try:
        info = registry.show(f"{repo}@{ref}")
    except (E.NotFoundError, E.InvalidIdError, E.AmbiguousRefError):
        return None
    return "tag" if ref in info.tags else "branch" if ref in info.branches else None


@router.get("/api/models/{namespace}/{name}/commits/{rev:path}")
@_hf_errors
def list_commits(request: Request, namespace: str, name: str, rev: str, after: str | None = None) -> Response:
    """The revisions up to `rev`, newest first (a repository's history is one line of numbered revisions),
    COMMITS_PAGE a page, the next page linked (`Link: <...>; rel="next"`, keyset: `after` the last shown)."""
    served = lookup(request, namespace, name, rev)
    below = natural(after, "after") if after is not None else served.info.number + 1
    revisions = registry_of(request).log(served.repo, limit=COMMITS_PAGE, after=below)
    page = []
    for info in revisions:
        title, _, rest = (info.message or f"revision {info.number}").partition("\n")
        page.append({"id": commit_id(request, info), "title": title, "message": rest.strip(),
                     "authors": [{"user": info.author or "unknown"}],
                     "date": info.created_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")})
    headers = {}
    if len(revisions) == COMMITS_PAGE and revisions[-1].number > 1:
        headers["Link"] = f'<{request.url.include_query_params(after=revisions[-1].number)}>; rel="next"'
    return JSONResponse(page, headers=headers)


__all__ = ["router", "signed_write", "commit_id"]
