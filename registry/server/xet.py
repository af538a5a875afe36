"""The Xet upload protocol (huggingface_hub + hf_xet push through it unless HF_HUB_DISABLE_XET is set).

    GET  /api/models/{ns}/{name}/xet-write-token/{rev}   write token on ns -> {accessToken, exp, casUrl}
                                                           (and the same in X-Xet-Cas-Url, X-Xet-Access-Token,
                                                           X-Xet-Token-Expiration)
    GET  {casUrl}/v1/chunks/{prefix}/{chunk}              global dedup query: a shard of the stored xorbs
                                                           holding the chunk that the token may use, or 404
    POST {casUrl}/v1/xorbs/{prefix}/{hash}                a xorb, verified (every chunk, then the xorb hash)
                                                           -> {"was_inserted": bool}
    POST {casUrl}/v1/shards                               a shard: every file verified and rebuilt into the
                                                           blob store -> {"result": 1}

`casUrl` is `<server>/xet/cas`. Its access tokens are short-lived (`TOKEN_TTL`) and scoped to one
repository and one operation (write): the grant (registry token id, repository, operation, expiry) signed
with HMAC-SHA256 under the registry's own key (`xet-cas.key` in its home, made on first use), so any server
process of the registry accepts it and a restart does not void it; each use re-reads the registry token
(one row by id), so a revoked token's CAS tokens stop at once. A request
is checked against it before a byte of its body is read (hygiene.py lets `/xet/cas/` through to this
check). The files a shard defines are then "proven" for the registry token behind the grant (auth.prove),
so its commit naming them by sha256 (`lfsFile`) proceeds exactly as after an LFS upload (hf_upload.py). A
xorb may be built upon only by a token that uploaded it (recorded beside the xorb) or by tokens whose
namespaces reference a blob it rebuilds (auth.visible), so a digest or xorb hash learnt elsewhere grants
nothing.

No read route is served: downloads stay on the plain resolve routes (no `X-Xet-Hash` header), so clients
never switch to Xet reads. hf_xet's other calls (`/v1/xorb-grants/...`, `/v2/shards`, `/v1/telemetry`) get
404 and it falls back. The xorbs live on the server's disk beside its blobs (registry/xet/store.py), also
when the blobs are in object storage: every server process of a registry must share that home.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from .. import atomic, tokens
from .. import errors as E
from ..atomic import write_all
from ..ids import check_name
from . import auth

router = APIRouter(tags=["xet"])

CAS_PATH = "/xet/cas"
TOKEN_TTL = 900  # seconds a CAS token lives; hf_xet asks for a new one through the token route before expiry
TOKEN_PREFIX = "xet1."
KEY_FILE = "xet-cas.key"


@dataclass(frozen=True)
class Grant:
    """What a CAS token allows: `op` on repository `repo`, for the registry token `caller`, until `exp`."""

    caller: tokens.TokenInfo
    repo: str
    op: str
    exp: int

    def encode(self, key: bytes) -> str:
        body = json.dumps({"id": self.caller.id, "repo": self.repo, "op": self.op, "exp": self.exp},
                          separators=(",", ":"), sort_keys=True).encode()
        text = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return TOKEN_PREFIX + text + "." + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()

    @classmethod
    def decode(cls, secret: str, key: bytes) -> Grant | None:
        """The grant a token carries, or None when it is not one this registry signed."""
        if not secret.startswith(TOKEN_PREFIX):
            return None
        text, _, signature = secret[len(TOKEN_PREFIX):].rpartition(".")
        if not hmac.compare_digest(hmac.new(key, text.encode(), hashlib.sha256).hexdigest(), signature):
            return None
        try:
            d = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
            # the token as far as the grant knows it: _grant replaces it by the tokens table's row
            caller = tokens.TokenInfo(int(d["id"]), "", "write", [], datetime.fromtimestamp(0, timezone.utc), False)
            return cls(caller, str(d["repo"]), str(d["op"]), int(d["exp"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class XetState:
    key: bytes
    store: Any


def _key(home: Path) -> bytes:
    """The registry's key for CAS tokens: `home/xet-cas.key`, created (0600, atomically) on first use."""
    return atomic.secret_key(Path(home) / KEY_FILE)


def _state(request: Request) -> XetState:
    app = request.app
    state: XetState | None = getattr(app.state, "xet", None)
    if state is None:
        try:
            from ..xet.store import XetStore
        except ImportError:  # blake3 / lz4 missing: the swiftreg[xet] extra is not installed
            raise E.NotSupportedError("this server cannot take Xet uploads: install swiftreg[xet]") from None
        registry = app.state.registry
        state = app.state.xet = XetState(_key(registry.home), XetStore.beside(registry.store, registry.home))
    return state


@router.get("/api/models/{namespace}/{name}/xet-write-token/{revision:path}")
def write_token(request: Request, namespace: str, name: str, revision: str) -> JSONResponse:
    """A CAS token for uploading to `namespace/name` (the caller's token must allow write there)."""
    check_name(namespace, "namespace")
    check_name(name, "name")
    caller = auth.require(request, "write", namespace)
    assert caller is not None  # writes always name a token
    state = _state(request)
    exp = int(time.time()) + TOKEN_TTL
    secret = Grant(caller, f"{namespace}/{name}", "write", exp).encode(state.key)
    cas = str(request.base_url).rstrip("/") + CAS_PATH
    return JSONResponse({"accessToken": secret, "exp": exp, "casUrl": cas},
                        headers={"X-Xet-Cas-Url": cas, "X-Xet-Access-Token": secret,
                                 "X-Xet-Token-Expiration": str(exp)})


def _grant(request: Request, op: str = "write") -> Grant:
    """The live grant of the request's CAS token; 401 for none, an unknown or an expired one."""
    grant = Grant.decode(auth.bearer(request) or "", _state(request).key)
    if grant is None or grant.exp <= time.time():
        raise E.UnauthorizedError("the Xet access token is unknown or expired: ask the token route for a new one",
                                  headers={"WWW-Authenticate": "Bearer"})
    token = tokens.by_id(request.app.state.registry, grant.caller.id)  # revoked since: refused at once
    if token is None or token.revoked or not token.allows(op, grant.repo.split("/")[0]):
        raise E.UnauthorizedError("the registry token behind this Xet access token is revoked or no longer "
                                  "allows it", headers={"WWW-Authenticate": "Bearer"})
    grant = Grant(token, grant.repo, grant.op, grant.exp)
    if grant.op != op:
        raise E.ForbiddenError(f"this Xet access token allows {grant.op}, not {op}")
    return grant


def _hash(text: str) -> bytes:
    from ..xet import hashing
    try:
        return hashing.from_hex(text)
    except ValueError:
        raise E.InvalidRequestError(f"{text[:80]!r} is not a Xet hash (64 hex digits)") from None


def _may_use(request: Request, grant: Grant) -> Callable[[bytes], bool]:
    """Whether the grant's token may build on a stored xorb: its own upload, or one a visible blob uses."""
    state = _state(request)
    caller = grant.caller

    def may_use(h: bytes) -> bool:
        if not auth.scoped(caller) or auth.reads_open(request) or caller.id in state.store.uploaders(h):
            return True
        return any(auth.visible(request, caller, digest) for digest in state.store.files_of(h))
    return may_use


def _received(request: Request, grant: Grant, n: int) -> None:
    request.app.state.stats["bytes_received"] += n
    if auth.scoped(grant.caller):
        auth.counters(request, grant.caller)["bytes_received"] += n


def _limit(request: Request, cap: int, what: str) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise E.RequestTooLargeError(f"the {what} is {int(length)} bytes, over the {cap} this server takes")


@router.get(CAS_PATH + "/v1/chunks/{prefix}/{chunk}")
async def dedup_query(request: Request, prefix: str, chunk: str) -> Response:
    """The global dedup query: the stored xorbs holding `chunk` that the token may use, as a shard."""
    grant = _grant(request)
    h = _hash(chunk)
    store = _state(request).store
    answer = await run_in_threadpool(store.dedup_answer, h, _may_use(request, grant))
    if answer is None:
        return JSONResponse({"error": {"code": "not_found", "message": "no stored xorb holds this chunk"}},
                            status_code=404)
    return Response(answer, media_type="application/octet-stream")


@router.post(CAS_PATH + "/v1/xorbs/{prefix}/{name}")
async def upload_xorb(request: Request, prefix: str, name: str) -> JSONResponse:
    """A xorb, streamed to a file, verified chunk by chunk against its name, then kept."""
    from ..xet import xorb
    grant = _grant(request)
    h = _hash(name)
    _limit(request, xorb.MAX_XORB_BYTES, "xorb")
    state = _state(request)
    path = state.store.temp_path()
    size = 0
    try:
        fd = open(path, "wb")  # noqa: SIM115 - closed below, before the verification reads it
        try:
            async for part in request.stream():
                size += len(part)
                _received(request, grant, len(part))
                if size > xorb.MAX_XORB_BYTES:
                    raise E.RequestTooLargeError(f"the xorb runs past {xorb.MAX_XORB_BYTES} bytes")
                write_all(fd.fileno(), part)
        finally:
            fd.close()
        inserted = await run_in_threadpool(state.store.put_xorb, h, path, grant.caller.id)
    except ClientDisconnect:
        raise E.ClientDisconnectedError("the connection closed before the xorb ended", size) from None
    finally:
        path.unlink(missing_ok=True)
    return JSONResponse({"was_inserted": inserted})


@router.post(CAS_PATH + "/v1/shards")
async def upload_shard(request: Request) -> JSONResponse:
    """A shard: every file it defines checked against the stored chunks and rebuilt into the blob store."""
    from ..xet import shard
    grant = _grant(request)
    _limit(request, shard.MAX_SHARD_BYTES, "shard")
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            _received(request, grant, len(part))
            if len(body) > shard.MAX_SHARD_BYTES:
                raise E.RequestTooLargeError(f"the shard runs past {shard.MAX_SHARD_BYTES} bytes")
    except ClientDisconnect:
        raise E.ClientDisconnectedError("the connection closed before the shard ended", len(body)) from None
    state = _state(request)
    files = await run_in_threadpool(state.store.accept_shard, bytes(body), _may_use(request, grant))
    for f in files:
        assert f.sha256 is not None  # accept_shard refuses a file without one
        auth.prove(request, grant.caller, f.sha256)
    return JSONResponse({"result": 1})
