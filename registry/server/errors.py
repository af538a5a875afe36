"""The server's HTTP error plumbing, shared by every dialect.

Every refusal is a class of the error tree (registry/errors.py: each carries its wire `code` and
HTTP `status`); this module only shapes answers:

- `error_response`: the /api/v1 error shape `{"error": {"code", "message", **extra}}`.
- `refusal` / `answer`: a tree error as (status, code, extra) / as that response, with its headers.
- `scrub`: the server's own folders taken out of a message.
- `routing_error`: no such route or method, in the JSON error shape under /api/v1.
- `HubRefusal` and `hub_errors`: the hub dialects' refusals, each rendered in its dialect's own shape.
"""
from __future__ import annotations

import functools
import logging
import re
from typing import Any, Callable

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import converters

from .. import errors as E

log = logging.getLogger("swiftreg.server")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    """The /api/v1 error shape, `{"error": {"code", "message", **extra}}`, with `status`."""
    return JSONResponse({"error": {"code": code, "message": encodable(message), **extra}}, status_code=status,
                        headers=headers)


def encodable(message: str) -> str:
    """`message` with anything UTF-8 cannot encode (a lone surrogate quoted from the request) escaped: an
    answer that names hostile input must still be writable."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def refusal(exc: E.RegistryError | converters.FormatError) -> tuple[int, str, dict[str, Any]]:
    """(status, code, extra fields) answering a refusal of the error tree (registry.errors.to_payload), so
    every dialect answers one alike."""
    status, body = E.to_payload(exc)
    extra = dict(body["error"])
    code = extra.pop("code")
    del extra["message"]
    return status, code, extra


def answer(exc: E.RegistryError | converters.FormatError, message: str | None = None) -> JSONResponse:
    """A tree error as the /api/v1 response, with the headers it carries (WWW-Authenticate ...);
    `message` replaces its own (a scrubbed one)."""
    status, code, extra = refusal(exc)
    headers = getattr(exc, "headers", None) or None
    return error_response(status, code, str(exc) if message is None else message, headers, **extra)


def scrub(message: str, home: str, store_root: str | None) -> str:
    """Checkpoint-relative file names instead of the server's paths (its home, store and temp folders).

    A refusal's message names the temporary folder a commit was checked in; a client must see neither
    that nor where the registry lives.
    """
    roots = {home, store_root or ""} - {""}
    for root in sorted(roots, key=len, reverse=True):
        temp = re.escape(root) + r"/swiftreg-[\w.-]+"
        message = re.sub(temp + r"/(?:checkpoint|original|converted)/", "", message)
        message = re.sub(temp + r"(?:/(?:checkpoint|original|converted))?", "<checkpoint>", message)
        message = message.replace(root, "<registry>")
    return message


def scrub_for(registry: Any, message: str) -> str:
    """`scrub` with the folders of `registry` (the app's Registry): what every dialect answers."""
    store_root = getattr(registry.store, "root", None)
    return scrub(message, str(registry.home), str(store_root) if store_root is not None else None)


async def routing_error(request: Request, exc: Exception) -> Response:
    """No such route or method: in the JSON error shape under /api/v1, FastAPI's default elsewhere."""
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith("/api/v1/"):
        return await http_exception_handler(request, exc)
    cls = ROUTING_ERRORS.get(exc.status_code, E.RegistryError)
    return error_response(exc.status_code, cls.code, str(exc.detail), dict(exc.headers or {}))


#: Starlette's own refusals (before any route runs), as classes of the tree.
ROUTING_ERRORS: dict[int, type[E.RegistryError]] = {
    404: E.NotFoundError, 405: E.MethodNotAllowedError, 413: E.RequestTooLargeError}


# ----- the hub dialects ----------------------------------------------------------------------------------

class HubRefusal(Exception):
    """A refusal in a hub dialect: status, the Hub's error code (`X-Error-Code`: RepoNotFound,
    RevisionNotFound, EntryNotFound; None for the rest), message and extra headers.

    The lookup both hub dialects share raises it; each dialect renders it in its own shape.
    """

    def __init__(self, status: int, code: str | None, message: str,
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.code, self.message, self.headers = status, code, encodable(message), headers or {}
        super().__init__(self.message)


def hub_errors(render: Callable[[HubRefusal], Response], dialect: str,
               logger: logging.Logger) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A route decorator answering HubRefusal and registry refusals through `render`, a dialect's shape.

    A dependency that is down (the database, the store, the disk: `app.state.dependencies`, health.py)
    is answered 503 with Retry-After (507 for a full disk) in the dialect's shape and noted in the
    outage log. Other crashes still go to the app's catch-all (logged, bare 500). Any other registry
    refusal with a 5xx status (a corrupt blob) is logged here: the client sees only its message.
    """

    def decorate(route: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(route)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = kwargs.get("request")
            registry = request.app.state.registry if isinstance(request, Request) else None

            def clean(message: str) -> str:  # no server path in a body or X-Error-Message
                return scrub_for(registry, message) if registry is not None else message

            try:
                return route(*args, **kwargs)
            except HubRefusal as exc:
                return render(HubRefusal(exc.status, exc.code, clean(exc.message), exc.headers))
            except Exception as exc:
                dependencies = request.app.state.dependencies if isinstance(request, Request) else None
                down = dependencies.refusal_for(exc) if dependencies is not None else None
                if down is None and not isinstance(exc, (E.RegistryError, converters.FormatError)):
                    raise
                shown = down if down is not None else exc
                assert isinstance(shown, (E.RegistryError, converters.FormatError))
                status = refusal(shown)[0]
                if status >= 500 and down is None:
                    logger.error("%s while serving the %s: %s", type(exc).__name__, dialect, exc)
                # No Hub error code, even for a blob that is gone (quarantined): EntryNotFound would make
                # huggingface_hub record the file as absent at this commit (`.no_exist`), which transformers then
                # trusts without asking again, even after a re-push restored the blob.
                return render(HubRefusal(status, None, clean(str(shown)),
                                         dict(getattr(shown, "headers", None) or {})))

        return wrapper

    return decorate
