"""The periodic scrub: every `interval` seconds, rehash the stored blobs not verified within `max_age`.

Serving verifies a blob on its first read and trusts it afterwards while its file keeps the fingerprint
it was verified at (registry/service/integrity.py); bit rot on the medium changes no fingerprint, so the
scrub rereads what has not been verified recently and quarantines what no longer matches (one log line
per blob, and `stats` reports it). It runs in a worker thread (hashing releases the GIL), one pass at a
time, first `interval` seconds after start-up (so a short-lived server, a test's, never scrubs unless
asked); `POST /api/v1/scrub` runs a pass now. Chained into the app's lifespan like upkeep.py.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError

from ..errors import RegistryError
from ..service import Registry

log = logging.getLogger("swiftreg.integrity")


def scrub_periodically(app: FastAPI, registry: Registry, interval: float, max_age: float) -> None:
    """While `app` runs, scrub `registry`'s store every `interval` seconds (0: never)."""
    if interval <= 0:
        return
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[Any]:
        async with previous(running) as state:
            task = asyncio.create_task(_scrub_forever(registry, interval, max_age))
            try:
                yield state
            finally:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan


async def _scrub_forever(registry: Registry, interval: float, max_age: float) -> None:
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            result = await anyio.to_thread.run_sync(lambda: registry.scrub(max_age=max_age), abandon_on_cancel=True)
            failing = False
            if result.checked or result.missing:
                log.info("scrub: %d blob(s) rehashed (%d bytes) in %.1f s, %d quarantined, %d missing",
                         result.checked, result.bytes, result.seconds, len(result.corrupt), len(result.missing))
        except (OSError, SQLAlchemyError, RegistryError) as exc:  # a pass that fails must not end the scrubbing
            if not failing:
                log.warning("scrub pass failed (retried every %g s): %s", interval, exc)
            failing = True
