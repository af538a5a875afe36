"""What the server does on its own clock: partial uploads idle past the upload TTL removed, and the scrub.

- Expiry: an upload a client abandoned holds disk and its owner's quota (registry/store/uploads.py); waiting for an
  admin's `gc` would let one write token block pushes indefinitely. It runs at start-up, then every half TTL (at
  least a second, at most ten minutes); an upload being written is never removed (its lock is held).
- Scrub: serving verifies a blob on its first read and trusts it afterwards while its file keeps the fingerprint
  it was verified at (registry/service/integrity.py); bit rot on the medium changes no fingerprint, so the scrub
  rereads what has not been verified for `max_age` and quarantines what no longer matches (one log line per blob,
  reported by `stats`). Its first pass comes one interval after start-up, so a short-lived server (a test's)
  never scrubs unless asked; `POST /api/v1/scrub` runs a pass now.

Each runs in a worker thread, one pass at a time, chained into the app's lifespan (so whatever lifespan the app
has keeps running around it). A failing pass is logged once until one succeeds again; it never ends the timer.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from ..errors import RegistryError
from ..service import Registry
from ..store.uploads import UploadArea

log = logging.getLogger("swiftreg.server")

#: What a pass may fail with without ending its timer (a disk or database hiccup; the next pass retries).
PASSING_FAULTS = (OSError, SQLAlchemyError, RegistryError)


def interval(ttl: float) -> float:
    """Seconds between upload sweeps: half the TTL, at least one second and at most ten minutes."""
    return max(1.0, min(ttl / 2, 600.0))


def expire_uploads(app: FastAPI, area: UploadArea, ttl: float) -> None:
    """While `app` runs, remove the uploads of `area` idle for `ttl` seconds (at start-up, then every interval)."""
    def sweep() -> str | None:
        removed = area.sweep(ttl)
        return f"removed {removed} partial upload(s) idle for more than {ttl:g} s" if removed else None

    _every(app, interval(ttl), sweep, first=0.0, what="sweep idle partial uploads", logger=log)


def scrub_periodically(app: FastAPI, registry: Registry, every: float, max_age: float) -> None:
    """While `app` runs, scrub `registry`'s store every `every` seconds (0: never), the first pass after one."""
    if every <= 0:
        return

    def scrub() -> str | None:
        result = registry.scrub(max_age=max_age)
        if not (result.checked or result.missing):
            return None
        return (f"scrub: {result.checked} blob(s) rehashed ({result.bytes} bytes) in {result.seconds:.1f} s, "
                f"{len(result.corrupt)} quarantined, {len(result.missing)} missing")

    _every(app, every, scrub, first=every, what="scrub the blob store", logger=logging.getLogger("swiftreg.integrity"))


def _every(app: FastAPI, seconds: float, work: Callable[[], str | None], *, first: float, what: str,
           logger: logging.Logger) -> None:
    """Run `work` in a thread `first` seconds after start-up and then every `seconds`, logging what it says."""
    previous = app.router.lifespan_context

    async def forever() -> None:
        failing = False
        await asyncio.sleep(first)
        while True:
            try:
                said = await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
            except PASSING_FAULTS as exc:
                if not failing:
                    logger.warning("could not %s (retried every %g s): %s", what, seconds,
                                   getattr(exc, "strerror", None) or exc)
                failing = True
            else:
                failing = False
                if said:
                    logger.info("%s", said)
            await asyncio.sleep(seconds)

    @asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[Any]:
        async with previous(running) as state:
            task = asyncio.create_task(forever())
            try:
                yield state
            finally:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
