"""How a receiver knows a delivery came from this registry and is fresh.

Every delivery carries
- `X-Webhook-Secret: <secret>`, as the Hugging Face Hub sends it (a receiver compares it);
- `X-Swiftreg-Signature: t=<unix seconds>,v1=<hex>`, where hex is HMAC-SHA256 with the secret as key over
  `<t>.` followed by the exact body bytes; a receiver recomputes it and refuses a `t` outside its replay
  window (`verify`, default 300 s), so a captured request cannot be replayed later;
- `X-Swiftreg-Delivery: <uuid>`: the same on every retry of one delivery (a receiver that already
  handled it answers 2xx and does nothing), a new one for a redelivery;
- `X-Swiftreg-Event: <kind>` (revision.created, tag.moved, ...).

`verify` is what a Python receiver calls; the README shows the same in a few lines for others.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Mapping

SIGNATURE_HEADER = "X-Swiftreg-Signature"
SECRET_HEADER = "X-Webhook-Secret"
DELIVERY_HEADER = "X-Swiftreg-Delivery"
EVENT_HEADER = "X-Swiftreg-Event"
#: Seconds a signature's timestamp may be away from the receiver's clock (either way).
REPLAY_WINDOW = 300


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale or does not match the body."""


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` keyed by `secret`."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def headers(secret: str, body: bytes, *, delivery: str, kind: str, now: float | None = None) -> dict[str, str]:
    """Every header a delivery carries."""
    t = int(time.time() if now is None else now)
    return {"Content-Type": "application/json", "User-Agent": "swiftreg-webhooks/1",
            SECRET_HEADER: secret, SIGNATURE_HEADER: f"t={t},v1={signature(secret, body, t)}",
            DELIVERY_HEADER: delivery, EVENT_HEADER: kind}


def verify(secret: str, body: bytes, header: str | None, *, tolerance: float = REPLAY_WINDOW,
           now: float | None = None) -> int:
    """Check a delivery's `X-Swiftreg-Signature` against its raw body; its timestamp, or SignatureError."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} has no t=<unix seconds>") from None
    if abs((time.time() if now is None else now) - t) > tolerance:
        raise SignatureError(f"the signature's timestamp is more than {tolerance:.0f} s away: a replay, or a clock off")
    expected = signature(secret, body, t)
    if not any(hmac.compare_digest(expected, v) for v in parts.get("v1", [])):
        raise SignatureError("the signature does not match the body (wrong secret, or the body was changed)")
    return t


def verify_headers(secret: str, body: bytes, received: Mapping[str, str], *,
                   tolerance: float = REPLAY_WINDOW) -> int:
    """`verify` on a request's headers (any mapping with case-insensitive get, e.g. Starlette's)."""
    return verify(secret, body, received.get(SIGNATURE_HEADER), tolerance=tolerance)
