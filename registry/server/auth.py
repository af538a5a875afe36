"""Who may do what: bearer tokens checked against the tokens table, per scope and namespace.

`require` is the one check every dialect makes; the `read_ns` ... `admin` dependencies are its
/api/v1 forms (a dependency answers 401 before the request's shape is judged). `visible` and
`prove` keep a namespace-scoped token to the blobs its namespaces hold or that it uploaded.
"""
from __future__ import annotations

from fastapi import Request

from .. import tokens
from ..errors import ForbiddenError, UnauthorizedError
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

    Reads pass without a token when the server runs with --anonymous-read. `secret`: a token the
    dialect found elsewhere than the Authorization header (ModelScope's `m_session_id` cookie).
    """
    secret = bearer(request) or secret
    if secret is None:
        if scope == "read" and request.app.state.settings.anonymous_read:
            return None
        raise UnauthorizedError("this route needs a bearer token (swiftreg token create)",
                                headers={"WWW-Authenticate": "Bearer"})
    token = tokens.verify(request.app.state.registry, secret)
    if token is None or token.revoked:
        raise UnauthorizedError("the token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    request.state.token_id, request.state.token_owner = token.id, token.owner  # for the access log
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

def scoped(caller: Caller) -> bool:
    """Whether the caller's token is limited to some namespaces."""
    return caller is not None and caller.namespaces is not None


def visible(request: Request, caller: Caller, digest: str) -> bool:
    """Whether the caller may treat a stored blob as its own (see Registry.blob_in_namespaces).

    Tokens scoped to namespaces see only the blobs those namespaces hold or that they uploaded
    themselves (the upload proved they have the bytes); everyone else sees the whole store.
    """
    if caller is None or caller.namespaces is None:
        return True
    if digest in request.app.state.proven.get(caller.id, ()):
        return True
    return bool(request.app.state.registry.blob_in_namespaces(digest, caller.namespaces))


def prove(request: Request, caller: Caller, digest: str) -> None:
    """Remember that the caller uploaded `digest` (so holds its bytes), for `visible`."""
    if caller is not None and caller.namespaces is not None:
        proven = request.app.state.proven.setdefault(caller.id, set())
        if len(proven) > 100_000:
            proven.clear()
        proven.add(digest)
