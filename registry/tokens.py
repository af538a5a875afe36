"""Bearer tokens: created once (the secret is shown once), stored only as a sha256 hash, revocable.

Scopes are ordered: read < write < admin. A token may be limited to namespaces; writes always need
a write (or admin) token for the namespace written to.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update

from .db.models import TokenRecord
from .errors import NotFoundError, RegistryError
from .service import Registry

SCOPES = ("read", "write", "admin")
PREFIX = "srg_"
log = logging.getLogger("swiftreg.tokens")


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


#: When each token's use was last written (monotonic seconds), so a busy token costs one write a minute.
_touched: dict[tuple[str, int], float] = {}
TOUCH_INTERVAL = 60.0


def touch(reg: Registry, token_id: int) -> None:
    """Record that a token was used now (`last_used_at`), at most once a minute per token and process.
    Best effort: a database that refuses the write costs the request nothing (its own queries will say)."""
    key = (reg.database_url, token_id)
    now = time.monotonic()
    if now - _touched.get(key, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
        return
    _touched[key] = now
    try:
        with reg.db.write() as session:
            session.execute(update(TokenRecord).where(TokenRecord.id == token_id)
                            .values(last_used_at=datetime.now(timezone.utc)))
    except Exception:  # noqa: BLE001 - advisory bookkeeping; the request goes on
        log.debug("could not record the use of token %s", token_id, exc_info=True)


def last_used(reg: Registry) -> dict[int, datetime | None]:
    """Each token's last recorded use (None: never), by token id."""
    with reg.db.read() as session:
        return {i: (w if w is None or w.tzinfo else w.replace(tzinfo=timezone.utc))
                for i, w in session.execute(select(TokenRecord.id, TokenRecord.last_used_at))}


def by_id(reg: Registry, token_id: int) -> TokenInfo | None:
    """The token with id `token_id` as it stands now (revoked or not), or None: for grants that name a token
    (the Xet CAS tokens of server/xet.py) to follow its revocation and namespaces."""
    with reg.db.read() as session:
        row = session.get(TokenRecord, token_id)
        return None if row is None else _info(row)


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
