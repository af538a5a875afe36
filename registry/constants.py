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


#: SWIFTREG_FAILPOINTS (tests only): comma-separated failpoints that SIGKILL the process (failpoints.py).
FAILPOINTS_VARIABLE = "SWIFTREG_FAILPOINTS"
