"""Who may do what: bearer tokens checked against the tokens table, per scope and namespace."""
from __future__ import annotations

from fastapi import Request

from .. import tokens
from .app import HTTPError


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
        raise HTTPError(401, "unauthorized", "this route needs a bearer token (swiftreg token create)",
                        headers={"WWW-Authenticate": "Bearer"})
    token = tokens.verify(request.app.state.registry, secret)
    if token is None or token.revoked:
        raise HTTPError(401, "unauthorized", "the token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    request.state.token_id, request.state.token_owner = token.id, token.owner  # for the access log
    if not token.allows(scope, namespace):
        where = f" on namespace {namespace!r}" if namespace else ""
        raise HTTPError(403, "forbidden", f"the token (scope {token.scope}) does not allow {scope}{where}")
    return token
