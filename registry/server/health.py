"""The server's dependencies (database, blob store, disk) as /healthz reports them, and their failures
answered 503 or 507 instead of 500, logged once per outage instead of once per request.

Where failures are translated: at the server's edge, in one method (`Dependencies.refusal_for`) that the
app's handlers, the catch-all middleware below and the hub dialects' `hub_errors` all call. The service
raises what its database driver or the OS raised; the edge is the one place every such exception passes
and still carries its cause, and the place that knows the server's folders (to tell the store from the
rest of the disk). Mapped:

    the database unreachable, dropped, shutting down, busy ... 503 unavailable   (registry/db/faults.py)
    EIO, EROFS, ESTALE, ENOTCONN, ... on a file of the registry 503 unavailable  dependency store | disk
    ENOENT / ENOTDIR / EACCES / EPERM there, when the store's   503 unavailable  (a blob missing from an
    folder (or the home) itself is gone or refused                                existing store stays 404)
    ENOSPC, EDQUOT anywhere                                     507 insufficient_storage (.writing)

Every 503 carries `Retry-After`; the client retries it within its bounds (client/transport.py).

The log, per dependency: one line when it fails (with the driver's or the OS's reason), at most one
"still unavailable" line every SUMMARY_EVERY seconds with the count of requests answered meanwhile, and one
line when it is back. A watcher thread (one per outage) probes the dependency every WATCH_EVERY seconds to
notice the recovery even without traffic.

Readiness (`GET /healthz`, also `/healthz/ready`): each dependency checked now (the database with one
query on a connection of its own, short timeouts; the store's folders there and a file created and
removed in it; the same in the home, with the disk's free bytes reported), 200 when all are up, else
503 (with Retry-After) naming the failing one. Liveness
(`GET /healthz/live`): 200 while the process serves, whatever its dependencies do.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Engine, exc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import converters

from .. import errors as E
from ..db.faults import cause_of, database_fault, ping, probe_engine
from ..store.errors import BlobNotFound
from ..store.local import TEMP_PREFIX, LocalBlobStore
from .errors import answer, error_response, scrub_for
from .responses import ABORTED

log = logging.getLogger("swiftreg.server")

#: Seconds a client is asked to wait (Retry-After) before retrying a 503.
RETRY_AFTER = 5
#: Seconds between two "still unavailable" lines of one outage.
SUMMARY_EVERY = 10.0
#: Seconds between two probes of a dependency that is down.
WATCH_EVERY = 1.0
#: errno values meaning "this filesystem cannot be used now" (hardware, network filesystem, read-only).
UNAVAILABLE_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EIO", "EROFS", "ESTALE", "ENOTCONN", "EHOSTDOWN", "EHOSTUNREACH", "ENODEV", "ENXIO", "ETIMEDOUT", "ENOMEDIUM",
    "EREMOTEIO") if hasattr(errno, name))
#: errno values meaning "the folder itself is gone or refused" (when the store's or the home's root is).
ROOT_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM})
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

Refusal = E.UnavailableError | E.InsufficientStorageError


# ----- translation of one exception ----------------------------------------------------------------------

def os_fault(error: OSError, store_root: Path | None, home: Path, store_dirs: tuple[Path, ...] = ()) -> Refusal | None:
    """The refusal for an OS error of the registry's files: full, unusable, or its root folder gone
    (`store_dirs`: the folders a store cannot work without, its root by default)."""
    name = error.filename if isinstance(error.filename, str) else None
    path = Path(os.path.abspath(name)) if name else None
    if path is not None and store_root is not None and path.is_relative_to(store_root):
        dependency, root, where = "store", store_root, "the blob store"
    elif path is not None and path.is_relative_to(home):
        dependency, root, where = "disk", home, "the registry's home"
    else:
        dependency, root, where = "disk", None, "a temporary folder"
    shown = str(path.relative_to(root)) if path is not None and root is not None else (path.name if path else "?")
    if error.errno in FULL_ERRNOS:
        return E.InsufficientStorageError(f"no space left on the disk of {where} while writing {shown}: nothing was "
                                          "stored; free space (or run `swiftreg gc`) and retry",
                                          writing=f"{where}: {shown}")
    unusable = error.errno in UNAVAILABLE_ERRNOS
    if not unusable and error.errno in ROOT_ERRNOS and root is not None:
        needed = (store_dirs or (root,)) if dependency == "store" else (root,)
        unusable = error.errno in (errno.EACCES, errno.EPERM) or not all(_usable_dir(d) for d in needed)
    if not unusable:
        return None
    reason = os.strerror(error.errno) if error.errno else type(error).__name__
    return E.UnavailableError(f"{where} is unavailable ({reason}): nothing was changed; retry in a few seconds",
                              dependency=dependency, retry_after=RETRY_AFTER)


def _usable_dir(root: Path) -> bool:
    try:
        return root.is_dir() and os.access(root, os.R_OK | os.W_OK | os.X_OK)
    except OSError:
        return False


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and what it was raised from or during (a wrapped OSError or driver error), nearest first."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 8 and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


# ----- the outage log ------------------------------------------------------------------------------------

@dataclass
class _Outage:
    name: str                  # "database", "store", "disk"
    state: str                 # "unavailable" (503) or "full" (507)
    status: int
    started: float
    cause: str
    answered: int = 0          # requests answered with a refusal since the outage began
    since_line: int = 0        # ... since the last line logged
    last_line: float = 0.0
    last_seen: float = 0.0
    probe_error: str = ""
    watcher: threading.Thread | None = field(default=None, repr=False)


class Dependencies:
    """The registry's dependencies as the server sees them: readiness checks, the translation of their
    failures into refusals, and the rate-limited outage log. One per app (`app.state.dependencies`)."""

    def __init__(self, registry: Any, *, summary_every: float = SUMMARY_EVERY, watch_every: float = WATCH_EVERY,
                 logger: logging.Logger = log) -> None:
        self.registry = registry
        self.summary_every, self.watch_every, self.log = summary_every, watch_every, logger
        self._outages: dict[str, _Outage] = {}
        self._lock = threading.Lock()
        self._probe: Engine = probe_engine(registry.db.url)  # connects only when a probe runs

    @property
    def store_root(self) -> Path | None:
        root = getattr(self.registry.store, "root", None)
        return Path(root) if root is not None else None

    def store_dirs(self) -> tuple[Path, ...]:
        """The folders the store cannot work without (a local store's root, blob and temp folders)."""
        store = self.registry.store
        if isinstance(store, LocalBlobStore):
            return store.root, store.blob_dir, store.tmp_dir
        return (self.store_root,) if self.store_root is not None else ()

    # ----- translation --------------------------------------------------------------------------------

    def translate(self, error: BaseException) -> Refusal | None:
        """The refusal answering `error` when a dependency caused it; None for a bug or any other refusal."""
        if isinstance(error, (E.UnavailableError, E.InsufficientStorageError)):
            return error
        if isinstance(error, BlobNotFound):
            dirs = self.store_dirs()  # the whole store gone is an outage, not a blob nobody pushed
            if dirs and not all(_usable_dir(d) for d in dirs):
                return E.UnavailableError("the blob store is unavailable (its folder is missing): nothing was "
                                          "changed; retry in a few seconds", dependency="store",
                                          retry_after=RETRY_AFTER)
            return None
        if isinstance(error, (E.RegistryError, converters.FormatError)):
            return None
        for cause in _causes(error):
            found: Refusal | None = None
            if isinstance(cause, (exc.DBAPIError, exc.DisconnectionError, exc.TimeoutError)):
                found = database_fault(cause)
            elif isinstance(cause, OSError):
                found = os_fault(cause, self.store_root, Path(self.registry.home).absolute(), self.store_dirs())
            if found is not None:
                return found
        return None

    def refusal_for(self, error: BaseException) -> Refusal | None:
        """`translate`, and the failure noted in the outage log when there is one."""
        refusal = self.translate(error)
        if refusal is not None:
            self.failed(refusal, error)
        return refusal

    # ----- the log ------------------------------------------------------------------------------------

    def failed(self, refusal: Refusal, cause: BaseException) -> None:
        """A request was answered `refusal` because of `cause`: logged once per outage, then summarised."""
        if isinstance(refusal, E.UnavailableError):
            name, state, retry = refusal.dependency, "unavailable", f" with Retry-After: {refusal.retry_after}"
        else:
            name, state, retry = "disk", "full", ""
        key = f"{name} {state}"
        now = time.monotonic()
        with self._lock:
            outage = self._outages.get(key)
            if outage is not None and outage.watcher is None and now - outage.last_seen > self.summary_every:
                if outage.since_line:  # no probe for this one: a quiet spell ends the burst
                    self._summary(outage, now)
                self._outages.pop(key)
                outage = None
            if outage is None:
                reason = str(refusal) if isinstance(cause, E.RegistryError) else cause_of(cause)
                outage = _Outage(name, state, refusal.status, now, reason, last_line=now, last_seen=now)
                self._outages[key] = outage
                self.log.error("%s %s: %s (%s); answering %d%s until it is over", name, state, reason,
                               type(cause).__name__, refusal.status, retry)
                probe = self._probe_for(name) if state == "unavailable" else None
                if probe is not None:
                    outage.watcher = threading.Thread(target=self._watch, args=(key, outage, probe), daemon=True,
                                                      name=f"swiftreg-watch-{name}")
                    outage.watcher.start()
            outage.answered += 1
            outage.since_line += 1
            outage.last_seen = now
            if outage.watcher is None and now - outage.last_line >= self.summary_every:
                self._summary(outage, now)

    def _summary(self, outage: _Outage, now: float) -> None:
        extra = f"; {outage.probe_error}" if outage.probe_error else ""
        self.log.warning("%s still %s after %.0f s: %d requests answered %d in the last %.0f s%s", outage.name,
                         outage.state, now - outage.started, outage.since_line, outage.status,
                         now - outage.last_line, extra)
        outage.since_line, outage.last_line = 0, now

    def _recovered(self, key: str, outage: _Outage, now: float) -> None:
        self._outages.pop(key, None)
        self.log.warning("%s is back after %.1f s: %d requests were answered %d meanwhile", outage.name,
                         now - outage.started, outage.answered, outage.status)

    def _watch(self, key: str, outage: _Outage, probe: Callable[[], None]) -> None:
        """Probe until the dependency answers; then log its recovery. A summary line every summary_every s."""
        while True:
            time.sleep(self.watch_every)
            try:
                probe()
            except Exception as error:  # noqa: BLE001 - any failure of the probe means "still down"
                with self._lock:
                    outage.probe_error = f"probe: {cause_of(error)}"
                    now = time.monotonic()
                    if now - outage.last_line >= self.summary_every:
                        self._summary(outage, now)
                continue
            with self._lock:
                self._recovered(key, outage, time.monotonic())
            return

    def _probe_for(self, name: str) -> Callable[[], None] | None:
        return {"database": self._ping_database, "store": self._probe_store, "disk": self._probe_disk}.get(name)

    def outages(self) -> list[str]:
        """The outages noted now ("database unavailable", "disk full", ...)."""
        with self._lock:
            return sorted(self._outages)

    # ----- probes ---------------------------------------------------------------------------------------

    def _ping_database(self) -> None:
        ping(self._probe)

    def _probe_store(self) -> None:
        store = self.registry.store
        if isinstance(store, LocalBlobStore):
            for folder in self.store_dirs():
                if not folder.is_dir():
                    raise FileNotFoundError(errno.ENOENT, "a folder of the store is missing")
            _write_and_remove(store.tmp_dir / f"{TEMP_PREFIX}health-{secrets.token_hex(6)}")
        else:  # another backend: one cheap call that must reach it
            store.exists("sha256:" + "0" * 64)

    def _probe_disk(self) -> None:
        """The home takes a small file (a full disk refuses it; its free bytes are reported, not judged:
        reads still work on a full disk, and how much a push needs is known only when it comes)."""
        _write_and_remove(Path(self.registry.home) / f".health-{secrets.token_hex(6)}")

    def readiness(self) -> dict[str, Any]:
        """Each dependency checked now: `{"ok", "database": {"ok", ...}, "store": {...}, "disk": {...}}`."""
        report: dict[str, Any] = {}
        for name, probe in (("database", self._ping_database), ("store", self._probe_store),
                            ("disk", self._probe_disk)):
            started = time.perf_counter()
            try:
                probe()
            except Exception as error:  # noqa: BLE001 - the failure is the finding
                report[name] = {"ok": False, "error": _reason(error)}
            else:
                report[name] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}
        try:
            home = Path(self.registry.home)
            report["disk"]["free_bytes"] = min(shutil.disk_usage(p).free for p in {home, self.store_root or home})
        except OSError:
            pass
        return {"ok": all(part["ok"] for part in report.values()), **report}


def _write_and_remove(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def _reason(error: BaseException) -> str:
    """Why a check failed, without a path, host or password: the OS's words, or the driver's class."""
    if isinstance(error, OSError) and error.errno:
        return f"{errno.errorcode.get(error.errno, error.errno)}: {os.strerror(error.errno)}"
    if isinstance(error, exc.DBAPIError) and error.orig is not None:
        return f"not answering ({type(error.orig).__name__})"
    return f"not answering ({type(error).__name__})"


# ----- the catch-all --------------------------------------------------------------------------------------

class Failures:
    """ASGI middleware, innermost of the app's own: every exception no handler took.

    A dependency's failure is answered 503 / 507 in the /api/v1 error shape and noted in the outage log;
    anything else is a bug: logged once with its traceback and answered 500 with `Connection: close`, so
    a keep-alive client opens a fresh connection instead of failing on one the server drops. It is
    handled here rather than by Starlette's 500 handler, which re-raises after answering (a second
    traceback in uvicorn's log, and the connection dropped). Once a response has started, nothing can be
    answered any more: the response is left unfinished (responses.ABORTED), so the client sees a short
    body on a closed connection, never a complete-looking one.
    """

    def __init__(self, app: ASGIApp, dependencies: Dependencies) -> None:
        self.app, self.dependencies = app, dependencies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_started(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_started)
        except Exception as error:
            refusal = self.dependencies.refusal_for(error)
            if started:
                if refusal is None:
                    raise  # uvicorn logs it and closes the connection: the client sees a short body
                scope.setdefault("state", {})[ABORTED] = True  # noted in the outage log; never completed
                return
            if refusal is not None:
                response = answer(refusal, scrub_for(self.dependencies.registry, str(refusal)))
            else:
                log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=error)
                response = crash_response()
            await response(scope, receive, send)


def crash_response() -> Any:
    """The answer to a bug: a bare 500 (no stack trace reaches a client) that closes the connection."""
    return error_response(500, "internal_error", "internal server error (logged on the server)",
                          {"Connection": "close"})
