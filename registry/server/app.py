"""The ASGI app: one Registry, shared by every request, and the error and auth plumbing.

Errors: every RegistryError / FormatError becomes JSON `{"error": {"code", "message"}}` with the
right status; anything else is logged with its traceback here and answered with a bare 500 (no
stack trace reaches a client).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import converters

from .. import errors as E
from ..service import Registry
from ..store import errors as SE
from .access_log import AccessLogMiddleware

log = logging.getLogger("swiftreg.server")

#: exception class -> (HTTP status, stable error code). First match wins (subclasses first).
ERROR_CODES: list[tuple[type[BaseException], int, str]] = [
    (E.InvalidIdError, 400, "invalid_id"),
    (E.UnsafePathError, 400, "unsafe_path"),
    (E.NotFoundError, 404, "not_found"),
    (E.AmbiguousRefError, 409, "ambiguous_ref"),
    (E.RefExistsError, 409, "ref_exists"),
    (E.BlobsMissingError, 409, "blobs_missing"),
    (E.InvalidCheckpointError, 422, "invalid_checkpoint"),
    (SE.BlobDigestMismatch, 422, "digest_mismatch"),
    (SE.InvalidDigest, 400, "invalid_digest"),
    (SE.BlobNotFound, 404, "blob_not_found"),
    (E.IntegrityError, 500, "integrity_error"),
    (converters.RefusedError, 422, "refused"),
    (converters.FormatError, 422, "invalid_checkpoint"),
    (E.JobConflictError, 409, "job_conflict"),
    (E.JobStateError, 409, "job_state"),
    (E.InvalidJobError, 400, "invalid_job"),
    (E.RegistryError, 400, "bad_request"),
]


class HTTPError(Exception):
    """Raised by routes for protocol-level refusals (auth, sizes, offsets)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers or {}, extra
        super().__init__(message)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


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

    @app.exception_handler(HTTPError)
    async def _http_error(_: Request, exc: HTTPError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        """No such route or method: in the JSON error shape under /api/v1, FastAPI's default elsewhere."""
        if not request.url.path.startswith("/api/v1/"):
            return await http_exception_handler(request, exc)
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "bad_request")
        return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(E.RegistryError)
    @app.exception_handler(converters.FormatError)
    async def _refusal(_: Request, exc: Exception) -> JSONResponse:
        for cls, status, code in ERROR_CODES:
            if isinstance(exc, cls):
                extra = {"missing": exc.missing} if isinstance(exc, E.BlobsMissingError) else {}
                return error_response(status, code, str(exc), **extra)
        return error_response(400, "bad_request", str(exc))  # pragma: no cover - the table ends with the base

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error (logged on the server)")

    @app.middleware("http")
    async def _limits(request: Request, call_next):  # type: ignore[no-untyped-def]
        app.state.stats["requests"] += 1
        if sum(len(k) + len(v) for k, v in request.scope["headers"]) > settings.max_header_bytes:
            response = error_response(431, "headers_too_large", "the request headers exceed "
                                      f"{settings.max_header_bytes} bytes", {"Connection": "close"})
        else:
            response = await call_next(request)
        return response

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    from . import api_v1, hf

    app.include_router(api_v1.router)
    app.include_router(hf.router)
    from . import modelscope  # noqa: E402 - the ModelScope read API (MODELSCOPE.md)

    app.include_router(modelscope.router)
    from . import jobs  # noqa: E402 - jobs and validation history (registry/jobs/)

    app.include_router(jobs.router)
    app.add_middleware(AccessLogMiddleware)  # outermost: it sees every response, errors included
    return app
