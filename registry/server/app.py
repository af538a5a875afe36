"""The ASGI app, assembled: one Registry shared by every request, the dialects' routers, the error
handlers (registry/server/errors.py) and the request limits.

Errors: every RegistryError / FormatError becomes JSON `{"error": {"code", "message"}}` with the
right status; anything else is logged with its traceback here and answered with a bare 500 (no
stack trace reaches a client).
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
from . import api_v1, hf, jobs, modelscope
from .access_log import AccessLogMiddleware
from .errors import answer, error_response, routing_error
from .lookup import HubState

log = logging.getLogger("swiftreg.server")


@dataclass
class ServerSettings:
    anonymous_read: bool = False
    max_manifest_bytes: int = 4 << 20      # a manifest of 10,000 files is about 2 MB
    max_json_bytes: int = 4 << 20
    max_blob_bytes: int = 64 << 30
    max_header_bytes: int = 16 << 10      # all request headers together (uvicorn's h11 only caps partial reads)


def create_app(registry: Registry, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    app = FastAPI(title="swiftreg", version="1", summary="Adapter registry: swiftreg API v1 and the Hugging Face "
                  "Hub download protocol", openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs",
                  redoc_url=None)
    app.state.registry = registry
    app.state.settings = settings
    app.state.stats = {"bytes_received": 0, "blobs_stored": 0, "requests": 0}
    app.state.proven = {}  # token id -> digests its uploads proved it holds (namespace-scoped tokens)
    app.state.uploads = UploadArea.beside(registry.store, registry.home)
    app.state.hub = HubState()
    app.add_exception_handler(StarletteHTTPException, routing_error)

    @app.exception_handler(E.RegistryError)
    @app.exception_handler(converters.FormatError)
    async def _refusal(_: Request, exc: Exception) -> JSONResponse:
        """Any error of the tree: its status, its headers and `{"error": {"code", "message", **extra}}`."""
        assert isinstance(exc, (E.RegistryError, converters.FormatError))
        return answer(exc)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error (logged on the server)")

    @app.middleware("http")
    async def _limits(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        app.state.stats["requests"] += 1
        if sum(len(k) + len(v) for k, v in request.scope["headers"]) > settings.max_header_bytes:
            return answer(E.HeadersTooLargeError(f"the request headers exceed {settings.max_header_bytes} bytes",
                                                 headers={"Connection": "close"}))
        return await call_next(request)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(api_v1.router)
    app.include_router(hf.router)
    app.include_router(modelscope.router)  # the ModelScope read API (MODELSCOPE.md)
    app.include_router(jobs.router)  # jobs and validation history (registry/jobs/)
    app.add_middleware(AccessLogMiddleware)  # outermost: it sees every response, errors included
    return app
