"""swiftreg: an adapter registry on top of the format layer in `converters`.

    import registry
    path = registry.resolve("team/sql-lora@v3", format="peft")   # a verified local folder

`Registry` holds every operation (push, pull, resolve, tag, log, gc); the CLI is a thin surface
over it. Imports are lazy so `import registry` stays cheap.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    AmbiguousRefError, IntegrityError, InvalidCheckpointError, InvalidIdError, NotFoundError, RefExistsError,
    RegistryError, UnsafePathError,
)

if TYPE_CHECKING:
    from .service import Registry

_default: dict[tuple[str, str | None], "Registry"] = {}
_lock = threading.Lock()


def default_registry() -> "Registry":
    """The registry SWIFTREG_HOME / SWIFTREG_DATABASE_URL point at, opened once per process."""
    from . import constants
    from .service import Registry

    key = (str(constants.home()), constants.database_url())
    with _lock:
        if key not in _default:
            _default[key] = Registry()
        return _default[key]


_environ = os.environ
_last: list[Any] = [None, None, None]  # SWIFTREG_HOME, SWIFTREG_DATABASE_URL, Registry


def resolve(repo_id: str, format: str | None = None) -> Path:
    """`team/sql-lora@v3` -> a verified local folder with that revision (converted to `format` if asked)."""
    home, url = _environ.get("SWIFTREG_HOME"), _environ.get("SWIFTREG_DATABASE_URL")
    if _last[2] is None or _last[0] != home or _last[1] != url:
        _last[:] = [home, url, default_registry()]
    return _last[2].resolve(repo_id, format)


def __getattr__(name: str) -> Any:
    if name == "Registry":
        from .service import Registry

        return Registry
    raise AttributeError(f"module 'registry' has no attribute {name!r}")


__all__ = ["AmbiguousRefError", "IntegrityError", "InvalidCheckpointError", "InvalidIdError", "NotFoundError",
           "RefExistsError", "Registry", "RegistryError", "UnsafePathError", "default_registry", "resolve"]
