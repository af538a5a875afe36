"""Webhook secrets at rest: encrypted with Fernet (AES-128-CBC + HMAC-SHA256, `cryptography`), so the
database never holds one in clear, yet the dispatcher can still send `X-Webhook-Secret` and sign.

The key is SWIFTREG_WEBHOOK_KEY (a Fernet key: `python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"`), else the file `webhook.key` in the registry home, created
with mode 0600 the first time a secret is stored. Every process that adds webhooks or delivers them
(server, workers) must use the same key: share the home, or set the variable on each. Secrets are
never logged and never returned after `webhook add`.
"""
from __future__ import annotations

import os
import secrets as _random
from pathlib import Path

from .. import constants
from ..errors import WebhookError

KEY_FILE = "webhook.key"


def generate() -> str:
    """A new webhook secret (shown once by `webhook add` when none is given)."""
    return "whsec_" + _random.token_urlsafe(32)


def _key(home: Path) -> bytes:
    given = constants.webhook_key()
    if given:
        return given.encode()
    from cryptography.fernet import Fernet

    path = home / KEY_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    key = Fernet.generate_key()
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # never replaces a key another process wrote meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes().strip()


def _fernet(home: Path):  # type: ignore[no-untyped-def]
    from cryptography.fernet import Fernet

    try:
        return Fernet(_key(home))
    except ValueError:
        raise WebhookError("SWIFTREG_WEBHOOK_KEY (or the registry's webhook.key) is not a Fernet key: 32 url-safe "
                           "base64-encoded bytes") from None


def encrypt(home: Path, secret: str) -> str:
    return str(_fernet(home).encrypt(secret.encode()).decode())


def decrypt(home: Path, token: str) -> str:
    from cryptography.fernet import InvalidToken

    try:
        return str(_fernet(home).decrypt(token.encode()).decode())
    except InvalidToken:
        raise WebhookError("a webhook secret cannot be decrypted with this key: every process that adds or delivers "
                           "webhooks needs the same SWIFTREG_WEBHOOK_KEY (or the home's webhook.key)") from None
