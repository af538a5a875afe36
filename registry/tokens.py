"""Bearer tokens: created once (the secret is shown once), stored only as a sha256 hash, revocable.

Scopes are ordered: read < write < admin. A token may be limited to namespaces; writes always need
a write (or admin) token for the namespace written to.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select

from .db.models import TokenRecord
from .errors import NotFoundError, RegistryError
from .service import Registry

SCOPES = ("read", "write", "admin")
PREFIX = "srg_"


@dataclass(frozen=True)
class TokenInfo:
    id: int
    owner: str
    scope: str
    namespaces: list[str] | None
    created_at: datetime
    revoked: bool

    def allows(self, scope: str, namespace: str | None = None) -> bool:
        if self.revoked or SCOPES.index(self.scope) < SCOPES.index(scope):
            return False
        return namespace is None or self.namespaces is None or namespace in self.namespaces


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(row: TokenRecord) -> TokenInfo:
    scope = max(row.scopes, key=SCOPES.index) if row.scopes else "read"
    return TokenInfo(row.id, row.owner, scope, row.namespaces, row.created_at, row.revoked_at is not None)


def create(reg: Registry, scope: str, owner: str, namespaces: list[str] | None = None) -> tuple[str, TokenInfo]:
    """(secret, info): the secret exists only in this return value."""
    if scope not in SCOPES:
        raise RegistryError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    secret = PREFIX + secrets.token_urlsafe(32)
    with reg.db.write() as session:
        row = TokenRecord(secret_hash=_hash(secret), owner=owner, scopes=[scope], namespaces=namespaces or None)
        session.add(row)
        session.flush()
        return secret, _info(row)


def revoke(reg: Registry, token_id: int) -> None:
    with reg.db.write() as session:
        row = session.get(TokenRecord, token_id)
        if row is None:
            raise NotFoundError(f"no token with id {token_id}")
        row.revoked_at = datetime.now(timezone.utc)


def list_tokens(reg: Registry) -> list[TokenInfo]:
    with reg.db.read() as session:
        return [_info(r) for r in session.scalars(select(TokenRecord).order_by(TokenRecord.id))]


def verify(reg: Registry, secret: str) -> TokenInfo | None:
    """The token for `secret`, or None. The lookup is by hash; the final check is constant-time."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    digest = _hash(secret)
    with reg.db.read() as session:
        row = session.scalars(select(TokenRecord).where(TokenRecord.secret_hash == digest)).one_or_none()
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            return None
        return _info(row)
