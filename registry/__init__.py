"""swiftreg: an adapter registry on top of the format layer in `converters`.

    import registry
    path = registry.resolve("team/sql-lora@v3", format="peft")   # a verified local folder

`Registry` holds every operation (push, pull, resolve, tag, log, gc); the CLI is a thin surface
over it. With SWIFTREG_URL set, the same calls go to that `swiftreg serve` through
`registry.client.RemoteRegistry` (SWIFTREG_TOKEN as the bearer token). Both implement
`registry.api.RegistryAPI`, the one contract every consumer is typed against. Imports are lazy so
`import registry` stays cheap.
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
    from .api import RegistryAPI

_default: dict[tuple[str, ...], "RegistryAPI"] = {}
_lock = threading.Lock()


def default_registry() -> "RegistryAPI":
    """The registry the environment names, opened once per process.

    SWIFTREG_URL set: a RemoteRegistry for that server (token SWIFTREG_TOKEN, cache in SWIFTREG_HOME).
    Otherwise the embedded registry SWIFTREG_HOME / SWIFTREG_DATABASE_URL point at.
    """
    from . import constants

    url = constants.url()
    key = ("remote", url, constants.token() or "", str(constants.home())) if url else \
        ("local", str(constants.home()), constants.database_url() or "")
    with _lock:
        if key not in _default:
            if url:
                from .client import RemoteRegistry

                _default[key] = RemoteRegistry(url, constants.token())
            else:
                from .service import Registry

                _default[key] = Registry()
        return _default[key]


_environ = os.environ
_VARIABLES = ("SWIFTREG_HOME", "SWIFTREG_DATABASE_URL", "SWIFTREG_URL", "SWIFTREG_TOKEN")
try:  # os.environ's own dict: reading it skips .get()'s per-call encoding (resolve is a hot path)
    _RAW = os.environ._data  # type: ignore[attr-defined]
    _KEYS = tuple(os.environ.encodekey(name) for name in _VARIABLES)
except AttributeError:  # pragma: no cover - another os.environ implementation
    _RAW, _KEYS = None, ()
_last: list[Any] = [None, None]  # the values of _VARIABLES, the registry they gave


def resolve(repo_id: str, format: str | None = None) -> Path:
    """`team/sql-lora@v3` -> a verified local folder with that revision (converted to `format` if asked).

    From the embedded registry, or from the server SWIFTREG_URL names (cached, and usable offline once
    cached).
    """
    if _RAW is not None and _environ is os.environ:
        home, db, url, token = _KEYS
        env: tuple[Any, ...] = (_RAW.get(home), _RAW.get(db), _RAW.get(url), _RAW.get(token))
    else:
        env = tuple(_environ.get(name) for name in _VARIABLES)
    if _last[1] is None or _last[0] != env:
        cached = _cached_on_disk(env, repo_id, format)
        if cached is not None:
            return cached
        _last[:] = [env, default_registry()]
    return _last[1].resolve(repo_id, format)


def _cached_on_disk(env: tuple[Any, ...], repo_id: str, format: str | None) -> Path | None:
    """A fresh process's `resolve` of an immutable `ns/name@<number>` (stored format) that the embedded registry's
    snapshot cache already holds: answered from the disk, without importing SQLAlchemy or opening the database
    (the registry opens on the first call this cannot answer). Tags, branches and conversions always ask."""
    database = env[1].decode() if isinstance(env[1], bytes) else env[1]  # os.environ's raw values are bytes
    if format is not None or env[2] or database and not database.startswith("sqlite"):
        return None  # a server, or a shared database whose other machines may delete revisions: ask it
    from .ids import parse_id

    try:
        rid = parse_id(repo_id)
    except InvalidIdError:
        return None  # the registry gives the error
    if rid.ref.kind != "number":
        return None
    from . import constants
    from .snapshots import mark_used, stored_snapshot

    folder = stored_snapshot(str(constants.home() / "snapshots"), rid.namespace, rid.name, rid.ref.number)
    if folder is None:
        return None
    mark_used(Path(folder))
    return Path(folder)


def import_from(source: str, repo_id: str, **options: Any) -> Any:
    """Import `hf://owner/name[@rev]` or `ms://owner/name[@rev]` as a new revision of `repo_id` (see
    Registry.import_from: tag, base_model, subfolder, message), into the registry the environment names."""
    return default_registry().import_from(source, repo_id, **options)


def __getattr__(name: str) -> Any:
    if name == "Registry":
        from .service import Registry

        return Registry
    if name == "RemoteRegistry":
        from .client import RemoteRegistry

        return RemoteRegistry
    if name == "RegistryAPI":
        from .api import RegistryAPI

        return RegistryAPI
    raise AttributeError(f"module 'registry' has no attribute {name!r}")


__all__ = ["AmbiguousRefError", "IntegrityError", "InvalidCheckpointError", "InvalidIdError", "NotFoundError",
           "RefExistsError", "Registry", "RegistryAPI", "RegistryError", "RemoteRegistry", "UnsafePathError",
           "default_registry", "import_from", "resolve"]
