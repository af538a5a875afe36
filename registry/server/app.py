"""The ASGI app, assembled: one Registry shared by every request, the dialects' routers, the error
handlers (registry/server/errors.py) and the request limits.

Errors: every RegistryError / FormatError becomes JSON `{"error": {"code", "message"}}` with the
right status; a dependency that is down (database, store, disk) is answered 503 with Retry-After, a
full disk 507, and logged once per outage (health.py); anything else is logged with its traceback
once and answered with a bare 500 and `Connection: close` (no stack trace reaches a client).

Health: `/healthz` (and `/healthz/ready`) is readiness, each dependency checked now (503 naming the
failing one); `/healthz/live` is liveness (200 while the process serves).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import converters

from .. import errors as E
from ..service import Registry
from ..store.uploads import UploadArea
from . import api_v1, direct_uploads, hf, jobs, modelscope, web, webhooks, xet
from . import modelscope_upload
from . import hf_upload
from .access_log import AccessLogMiddleware
from .errors import answer, routing_error, scrub_for
from .health import Dependencies, Failures, crash_response
from .hygiene import HygieneMiddleware
from .lookup import HubState
from .responses import AbortGuard
from .upkeep import expire_uploads, scrub_periodically

log = logging.getLogger("swiftreg.server")


@dataclass
class ServerSettings:
    anonymous_read: bool = False
    max_manifest_bytes: int = 4 << 20      # a manifest of 10,000 files is about 2 MB
    max_json_bytes: int = 4 << 20
    max_blob_bytes: int = 64 << 30
    max_header_bytes: int = 16 << 10      # all request headers together (uvicorn's h11 only caps partial reads)
    max_partial_bytes: int = 64 << 30     # bytes in unfinished uploads per owner (a token's namespaces): 413 past it
    upload_ttl: float = 24 * 3600.0       # a partial upload idle this long is removed (upkeep.py), gc or not
    public_url: str | None = None         # the origin absolute URLs name (hygiene.py); None: the address reached
    body_timeout: float = 60.0            # seconds a request body may pause between two chunks (hygiene.py)
    scrub_interval: float = 0.0           # seconds between scrub passes (upkeep.py); 0: only POST /api/v1/scrub
    scrub_max_age: float = 7 * 86400.0    # a pass rehashes the blobs not verified for this long
    redirect: bool = True                 # object storage: redirect downloads and uploads to presigned URLs


def create_app(registry: Registry, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    app = FastAPI(title="swiftreg", version="1", summary="Adapter registry: swiftreg API v1 and the Hugging Face "
                  "Hub download protocol", openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs",
                  redoc_url=None)
    app.state.registry = registry
    app.state.settings = settings
    app.state.stats = {"bytes_received": 0, "bytes_sent": 0, "blobs_stored": 0, "requests": 0, "redirects": 0}
    app.state.proven = {}  # token id -> digests its uploads proved it holds (namespace-scoped tokens)
    app.state.stats_by_namespaces = {}  # a namespace limit -> the counters of its tokens (auth.counters)
    app.state.uploads = UploadArea.beside(registry.store, registry.home)
    expire_uploads(app, app.state.uploads, settings.upload_ttl)
    scrub_periodically(app, registry, settings.scrub_interval, settings.scrub_max_age)
    app.state.hub = HubState()
    app.state.dependencies = dependencies = Dependencies(registry)
    app.add_exception_handler(StarletteHTTPException, routing_error)

    @app.exception_handler(E.RegistryError)
    @app.exception_handler(converters.FormatError)
    async def _refusal(_: Request, exc: Exception) -> JSONResponse:
        """Any error of the tree: its status, its headers and `{"error": {"code", "message", **extra}}`
        (a dependency's failure noted in the outage log; a missing blob of a missing store is one)."""
        assert isinstance(exc, (E.RegistryError, converters.FormatError))
        down = dependencies.refusal_for(exc)
        return answer(exc) if down is None else answer(down, scrub_for(registry, str(down)))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        """A failure outside the routes (in a middleware): Failures below answers those of the routes."""
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        response: JSONResponse = crash_response()
        return response

    # Added first, so innermost of the app's middleware: every exception no handler took (health.py).
    app.add_middleware(Failures, dependencies=dependencies)

    @app.middleware("http")
    async def _limits(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        app.state.stats["requests"] += 1
        if sum(len(k) + len(v) for k, v in request.scope["headers"]) > settings.max_header_bytes:
            return answer(E.HeadersTooLargeError(f"the request headers exceed {settings.max_header_bytes} bytes",
                                                 headers={"Connection": "close"}))
        return await call_next(request)

    @app.get("/healthz", tags=["operations"])
    @app.get("/healthz/ready", tags=["operations"])
    def readiness() -> JSONResponse:
        """Each dependency checked now: 200 `{"ok": true, "database": {"ok": true, "ms"}, "store", "disk"}`,
        or 503 (with Retry-After) with `"ok": false` on the failing ones."""
        report = dependencies.readiness()
        if report["ok"]:
            return JSONResponse(report)
        down = E.UnavailableError("not ready", dependency=",".join(k for k, v in report.items()
                                                                   if isinstance(v, dict) and not v["ok"]))
        return JSONResponse(report, status_code=down.status, headers=down.headers)

    @app.get("/healthz/live", tags=["operations"])
    def liveness() -> dict[str, bool]:
        """200 while the process serves, whatever its dependencies do."""
        return {"ok": True}

    app.include_router(api_v1.router)
    app.include_router(direct_uploads.router)  # presigned uploads straight to object storage
    app.include_router(hf.router)
    app.include_router(hf_upload.router)  # the Hugging Face upload protocol: LFS, commits, refs
    app.include_router(modelscope.router)  # the ModelScope read API (MODELSCOPE.md)
    app.include_router(modelscope_upload.router)  # the ModelScope write API: create, LFS, commit, tag
    app.include_router(jobs.router)  # jobs and validation history (registry/jobs/)
    web.mount(app)  # the web pages under /ui (registry/server/web/)
    app.include_router(webhooks.router)  # webhooks of a namespace's events (registry/webhooks/)
    app.include_router(xet.router)  # the Xet upload protocol: token and CAS routes (registry/xet/)
    app.add_middleware(AbortGuard)  # outside the others: a cut file response stays unfinished (responses.py)
    # Host, framing, a token before any body is read, body timeouts, Connection: close (hygiene.py)
    app.add_middleware(HygieneMiddleware, public_url=settings.public_url, body_timeout=settings.body_timeout)
    app.add_middleware(AccessLogMiddleware)  # outermost: it sees every response, errors included
    return app
