"""The registry over HTTP: `RemoteRegistry`, the same `registry.api.RegistryAPI` as the embedded
`Registry`, spoken to a `swiftreg serve`.

    client.py      RemoteRegistry: push (resumable uploads), resolve/pull (verified snapshot cache), refs, jobs
    transport.py   the HTTP: one keep-alive client, timeouts, retries, the server's errors rebuilt as classes
    downloads.py   blob downloads: resumable .part files, Range, verified before they count

The errors only a remote registry meets are part of this package's API (they live in registry.errors).
"""
from __future__ import annotations

from ..errors import AccessDeniedError, RemoteError, ServerUnreachableError
from .client import RemoteRegistry, cache_dir_name

__all__ = ["AccessDeniedError", "RemoteError", "RemoteRegistry", "ServerUnreachableError", "cache_dir_name"]
