"""Every environment variable swiftreg reads, with its default, in one place.

Read at call time (not import time) so a process, or a test, can point swiftreg elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

N = TypeVar("N", int, float)


def home() -> Path:
    """SWIFTREG_HOME: the embedded registry (database, blobs, snapshots). Default: the user's cache folder."""
    explicit = os.environ.get("SWIFTREG_HOME")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "swiftreg"


def database_url() -> str | None:
    """SWIFTREG_DATABASE_URL: any SQLAlchemy URL (postgresql:// uses psycopg 3). Default: SQLite in the home."""
    return os.environ.get("SWIFTREG_DATABASE_URL") or None


def ref_staleness() -> float:
    """SWIFTREG_REF_STALENESS_MS: on a PostgreSQL registry, how long (milliseconds) a process trusts its cached
    answers for tags and branches before it asks the database whether any ref moved (one indexed read of one
    row). A tag moved by another process is seen by `resolve` within this bound after its commit; this process's
    own moves are seen at once. SQLite registries need no bound (a file stamp is checked on every call).
    Default: 5."""
    return _number("SWIFTREG_REF_STALENESS_MS", 5.0, float) / 1000.0


def store_url() -> str | None:
    """SWIFTREG_STORE_URL: where blobs live: `s3://bucket/prefix` (object storage: AWS S3 or any S3-compatible
    server, with the usual AWS_* credentials and AWS_ENDPOINT_URL), `file:///path` or a folder. Default: HOME/blobs."""
    return os.environ.get("SWIFTREG_STORE_URL", "").strip() or None


def s3_part_size() -> int:
    """SWIFTREG_S3_PART_SIZE: bytes per part of a multipart upload to object storage (at least 5 MiB on
    AWS S3; grown as needed to stay within 10,000 parts). Default: 16 MiB."""
    return _number("SWIFTREG_S3_PART_SIZE", 16 << 20, int)


def s3_concurrency() -> int:
    """SWIFTREG_S3_CONCURRENCY: parts of one blob moved at once to or from object storage. Default: 10."""
    return _number("SWIFTREG_S3_CONCURRENCY", 10, int)


def s3_cache_bytes() -> int:
    """SWIFTREG_S3_CACHE_BYTES: with object storage, the most bytes of blobs a process keeps in HOME/blob-cache
    (blobs it uploaded, verified or read, least recently used evicted first; 0: no cache). Default: 4 GiB."""
    return _number("SWIFTREG_S3_CACHE_BYTES", 4 << 30, int)


def presign_seconds() -> int:
    """SWIFTREG_PRESIGN_SECONDS: how long a presigned download or upload URL the server hands out stays
    valid (a transfer must start within it). Default: 900."""
    return _number("SWIFTREG_PRESIGN_SECONDS", 900, int)


def url() -> str | None:
    """SWIFTREG_URL: a `swiftreg serve` (http://host:port) to use instead of the embedded registry. Default: none."""
    value = os.environ.get("SWIFTREG_URL", "").strip()
    return value.rstrip("/") or None


def token() -> str | None:
    """SWIFTREG_TOKEN: the bearer token for SWIFTREG_URL (`swiftreg token create` on the server). Default: none."""
    return os.environ.get("SWIFTREG_TOKEN", "").strip() or None


def retries() -> int:
    """SWIFTREG_RETRIES: how many times a client call (or one blob's transfer) is tried again after failures
    in a row that made no progress. Default: 4."""
    return _number("SWIFTREG_RETRIES", 4, int)


def retry_seconds() -> float:
    """SWIFTREG_RETRY_SECONDS: how long a client call (or one blob's transfer) goes on retrying after a
    failure before it gives up (progress restarts the clock). Default: 120."""
    return _number("SWIFTREG_RETRY_SECONDS", 120.0, float)


def _number(name: str, default: N, kind: Callable[[str], N]) -> N:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        number = None
    if number is None or not number >= 0 or number == float("inf"):
        from .errors import RegistryError

        whole = " whole" if kind is int else ""
        raise RegistryError(f"{name}={value!r}: expected a{whole} number >= 0 (default {default})")
    return number


def swift_python() -> str | None:
    """SWIFTREG_SWIFT_PYTHON: an interpreter with ms-swift installed (its own venv: it pins an older peft)."""
    return os.environ.get("SWIFTREG_SWIFT_PYTHON") or None


def webhook_key() -> str | None:
    """SWIFTREG_WEBHOOK_KEY: the Fernet key webhook secrets are encrypted with at rest (every server and worker
    of one registry needs the same). Default: the file `webhook.key` in the home, created 0600 on first use."""
    return os.environ.get("SWIFTREG_WEBHOOK_KEY", "").strip() or None


def hub_upload_key() -> str | None:
    """SWIFTREG_HUB_UPLOAD_KEY: the hex key signing hub upload links (registry/service/hub_uploads.py); servers
    on several machines sharing one database set the same one. Unset: `hub-upload.key` in the home, made once."""
    return os.environ.get("SWIFTREG_HUB_UPLOAD_KEY", "").strip() or None


def webhook_allow_private() -> bool:
    """SWIFTREG_WEBHOOK_ALLOW_PRIVATE: "1" lets webhooks target loopback and private addresses. Default: off."""
    return os.environ.get("SWIFTREG_WEBHOOK_ALLOW_PRIVATE", "").strip().lower() in ("1", "true", "yes", "on")


def webhook_retry_seconds() -> float:
    """SWIFTREG_WEBHOOK_RETRY_SECONDS: how long a delivery is retried (exponential backoff) before it is marked
    failed and the next event of its stream goes. Default: 86400 (a day)."""
    return _number("SWIFTREG_WEBHOOK_RETRY_SECONDS", 86400.0, float)


def webhook_backoff() -> float:
    """SWIFTREG_WEBHOOK_BACKOFF: seconds before the first retry of a delivery; each retry doubles it, up to
    15 minutes. Default: 5."""
    return _number("SWIFTREG_WEBHOOK_BACKOFF", 5.0, float)


def webhook_timeout() -> float:
    """SWIFTREG_WEBHOOK_TIMEOUT: seconds a receiver has to answer one delivery (connect: at most 5). Default: 10."""
    return _number("SWIFTREG_WEBHOOK_TIMEOUT", 10.0, float)


def webhook_keep() -> int:
    """SWIFTREG_WEBHOOK_KEEP: finished deliveries kept per webhook (`webhook deliveries`). Default: 200."""
    return _number("SWIFTREG_WEBHOOK_KEEP", 200, int)


#: SWIFTREG_FAILPOINTS (tests only): comma-separated failpoints that SIGKILL the process (failpoints.py).
FAILPOINTS_VARIABLE = "SWIFTREG_FAILPOINTS"
