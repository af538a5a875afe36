"""What the server does on its own clock: partial uploads idle longer than the upload TTL are removed.

An upload a client abandoned holds disk and its owner's quota (registry/store/uploads.py); waiting for
an admin's `gc` would let one write token block pushes indefinitely. The sweep runs once at start-up
and then every `interval(ttl)` seconds in the server's event loop (the file work in a thread), for as
long as the app's lifespan lasts; an upload being written is never removed (its lock is held).
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, suppress
from typing import Any, AsyncIterator

import anyio
from fastapi import FastAPI

from ..store.uploads import UploadArea

log = logging.getLogger("swiftreg.server")


def interval(ttl: float) -> float:
    """Seconds between sweeps: half the TTL, at least one second and at most ten minutes."""
    return max(1.0, min(ttl / 2, 600.0))


def expire_uploads(app: FastAPI, area: UploadArea, ttl: float) -> None:
    """Sweep `area` of uploads idle for `ttl` seconds while `app` runs (chained into its lifespan, so
    whatever lifespan the app has keeps running around it)."""
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[Any]:
        async with previous(running) as state:
            task = asyncio.create_task(_sweep_forever(area, ttl))
            try:
                yield state
            finally:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan


async def _sweep_forever(area: UploadArea, ttl: float) -> None:
    failing = False
    while True:
        try:
            removed = await anyio.to_thread.run_sync(area.sweep, ttl)
            failing = False
            if removed:
                log.info("removed %d partial upload(s) idle for more than %g s", removed, ttl)
        except OSError as exc:  # a disk error must not end the sweeping; logged once until it recovers
            if not failing:
                log.warning("could not sweep idle partial uploads: %s", exc.strerror or exc)
            failing = True
        await asyncio.sleep(interval(ttl))
