"""Who may do what: bearer tokens checked against the tokens table, per scope and namespace.

`require` is the one check every dialect makes; the `read_ns` ... `admin` dependencies are its
/api/v1 forms (a dependency answers 401 before the request's shape is judged). `visible` and
`prove` keep a namespace-scoped token to the blobs its namespaces hold or that it uploaded;
`upload_owner` names whose partial uploads a token works on.

With --anonymous-read, whatever is readable without a token is readable with any valid token: a
token limited to some namespaces never reads less than no token at all.
"""
from __future__ import annotations

import hashlib

from fastapi import Request

from .. import tokens
from ..errors import ForbiddenError, InvalidIdError, NotFoundError, UnauthorizedError
from ..ids import check_name
from .schemas import NS

#: The caller of a route: its token, or None for an anonymous read (--anonymous-read).
Caller = tokens.TokenInfo | None


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require(request: Request, scope: str, namespace: str | None = None, *,
            secret: str | None = None) -> tokens.TokenInfo | None:
    """The caller's token if it allows `scope` on `namespace`; 401 without a usable token, 403 with a weak one.

    Reads pass without a token when the server runs with --anonymous-read, and then with any valid
    token too, whatever its namespaces. `secret`: a token the dialect found elsewhere than the
    Authorization header (ModelScope's `m_session_id` cookie).
    """
    secret = bearer(request) or secret
    if secret is None:
        if scope == "read" and reads_open(request):
            return None
        raise UnauthorizedError("this route needs a bearer token (swiftreg token create)",
                                headers={"WWW-Authenticate": "Bearer"})
    token = tokens.verify(request.app.state.registry, secret)
    if token is None or token.revoked:
        raise UnauthorizedError("the token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    if getattr(request.state, "token_id", None) is None:  # once per request, however many checks it makes
        request.state.token_id, request.state.token_owner = token.id, token.owner  # for the access log
        tokens.touch(request.app.state.registry, token.id)  # `last_used_at`, at most once a minute
        if token.namespaces is not None:
            counters(request, token)["requests"] += 1
    if scope == "read" and reads_open(request):
        return token
    if not token.allows(scope, namespace):
        where = f" on namespace {namespace!r}" if namespace else ""
        raise ForbiddenError(f"the token (scope {token.scope}) does not allow {scope}{where}")
    return token


# ----- /api/v1 dependencies -------------------------------------------------------------------------------

def read_ns(request: Request, ns: NS) -> Caller:
    return require(request, "read", ns)


def write_ns(request: Request, ns: NS) -> Caller:
    return require(request, "write", ns)


def read_any(request: Request) -> Caller:
    return require(request, "read", None)


def write_any(request: Request) -> Caller:
    return require(request, "write", None)


def admin(request: Request) -> Caller:
    return require(request, "admin", None)


def read_listing(request: Request) -> Caller:
    return require(request, "read", request.query_params.get("namespace") or None)


# ----- blobs a namespace-scoped token may see ---------------------------------------------------------------

def reads_open(request: Request) -> bool:
    """Whether the server runs with --anonymous-read (every repository and blob readable without a token)."""
    return bool(request.app.state.settings.anonymous_read)


def scoped(caller: Caller) -> bool:
    """Whether the caller's token is limited to some namespaces."""
    return caller is not None and caller.namespaces is not None


def read_limit(request: Request, caller: Caller) -> list[str] | None:
    """The namespaces a listing shows the caller: its token's, or None (all) for an unlimited token, an
    anonymous reader, and any token when reads are open."""
    return caller.namespaces if caller is not None and caller.namespaces is not None and not reads_open(request) \
        else None


def visible(request: Request, caller: Caller, digest: str) -> bool:
    """Whether the caller may treat a stored blob as its own (see Registry.blob_in_namespaces).

    Tokens scoped to namespaces see only the blobs those namespaces hold or that they uploaded
    themselves (the upload proved they have the bytes); everyone else sees the whole store, and so
    does every token when reads are open (any blob can then be read without one).
    """
    if caller is None or caller.namespaces is None or reads_open(request):
        return True
    if digest in request.app.state.proven.get(caller.id, ()):
        return True
    return bool(request.app.state.registry.blob_in_namespaces(digest, caller.namespaces))


def present_to(request: Request, caller: Caller, digest: str, size: int) -> bool:
    """Whether a hub upload of `digest` can be skipped: stored, of this size, and the caller's to name
    (`visible`); touched, so gc's grace period starts again before the commit that follows."""
    store = request.app.state.registry.store
    try:
        if not store.exists(digest) or store.size(digest) != size or not visible(request, caller, digest):
            return False
        store.touch(digest)
        return True
    except NotFoundError:  # gone between two calls (gc)
        return False


def prove(request: Request, caller: Caller, digest: str) -> None:
    """Remember that the caller uploaded `digest` (so holds its bytes), for `visible`."""
    if caller is not None and caller.namespaces is not None:
        proven = request.app.state.proven.setdefault(caller.id, set())
        if len(proven) > 100_000:
            proven.clear()
        proven.add(digest)


# ----- whose uploads and counters ------------------------------------------------------------------------------

#: The upload owner of tokens without a namespace limit (they may write everywhere, so they share).
EVERYONE = "all"


def upload_owner(caller: tokens.TokenInfo) -> str:
    """Whose partial uploads the caller works on (registry/store/uploads.py): "all" for a token without a
    namespace limit, "ns-alpha" (or "ns-alpha+beta") for one limited to namespaces, so an upload in
    progress belongs to those namespaces and no other can see, extend or complete it. A limit whose
    names cannot make a folder name gets the token's own folder, "token-<id>"."""
    if caller.namespaces is None:
        return EVERYONE
    names = sorted(set(caller.namespaces))
    try:
        for name in names:
            check_name(name, "namespace")
    except InvalidIdError:
        return f"token-{caller.id}"
    owner = "ns-" + "+".join(names)
    return owner if len(owner) <= 200 else "nsh-" + hashlib.sha256(owner.encode()).hexdigest()


def owner_namespaces(owner: str) -> set[str] | None:
    """The namespaces an `upload_owner` name stands for (None: not a namespace owner, or a hashed one)."""
    return set(owner[3:].split("+")) if owner.startswith("ns-") else None


def counters(request: Request, token: tokens.TokenInfo) -> dict[str, int]:
    """The server counters of the tokens limited to exactly `token`'s namespaces (for a namespace admin's stats)."""
    key = tuple(sorted(set(token.namespaces or ())))
    by_limit: dict[tuple[str, ...], dict[str, int]] = request.app.state.stats_by_namespaces
    return by_limit.setdefault(key, {"requests": 0, "bytes_received": 0, "blobs_stored": 0})
