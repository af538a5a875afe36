"""Connection hygiene for `swiftreg serve`: slow and idle clients are cut, writes without a known token
are refused before their body is read, the Host header is never echoed, and a request framed two ways
(Content-Length and Transfer-Encoding) is refused.

Each rule sits in the layer that can keep it:

- **Header timeout** (`--header-timeout`, 10 s): uvicorn's HTTP/1.1 protocols arm no timer while a
  request's head arrives (its keep-alive timer is cancelled by the first byte of the next request, and
  a fresh connection has none), so a client holding a partial head keeps its connection for ever.
  `protocol()` returns a subclass of uvicorn's h11 protocol that arms one timer when a connection
  opens and when the first byte of a new request arrives, cancels it when the head is complete, and
  closes the connection when it fires: a deadline for the whole head, so a byte every few seconds
  does not extend it. `serve` always runs this protocol (uvicorn would pick httptools instead when
  installed), so the server behaves the same wherever it is installed.
- **Keep-alive timeout** (`--keep-alive-timeout`, 5 s): uvicorn's own `timeout_keep_alive`.
- **Body timeout** (`--body-timeout`, 60 s between two chunks): `HygieneMiddleware` bounds each wait of
  the app for the next chunk of a request body (ASGI `receive`). When it runs out the app is told the
  client went away (an upload keeps the bytes that arrived: the client resumes from them) and its
  answer closes the connection. Only waits the app makes count: a client is never cut for a body
  the server is slow to consume.
- **Authentication before the body**: the middleware answers a write (POST, PUT, PATCH, DELETE)
  without a bearer token the server knows with 401 before reading a byte of its body (FastAPI reads
  and parses a JSON body before it runs a route's dependencies). Scopes and namespaces stay the
  routes' business (auth.require).
- **Responses that close**: a response that starts before the request's body was read to its end
  (a refusal, a timeout) says `Connection: close`, so no unread bytes are taken for a next request
  and a client still sending is not kept on the line.
- **Host**: the app sees the public origin (`--public-url`, else the address the connection reached,
  never the client's Host header) as its Host and scheme, so every absolute URL it builds
  (`request.url`: the Hugging Face tree's pagination `Link`, Starlette's trailing-slash redirects)
  names the server, not what a client claimed.
- **Content-Length with Transfer-Encoding**: h11 accepts such a request and frames it by
  Transfer-Encoding; httptools refuses it. The middleware answers it 400 with `Connection: close`
  before the app sees it, whichever protocol runs, so no bytes of it can be read as a second request.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import anyio
import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .. import errors as E
from .. import tokens
from . import modelscope_upload
from .errors import answer
from .hf_upload import signed_write
from .web import session as web_session

log = logging.getLogger("swiftreg.server.hygiene")

#: Defaults of `swiftreg serve`'s options (seconds).
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 60.0
KEEP_ALIVE_TIMEOUT = 5.0
#: Methods that write: each needs a token, checked before the body is read.
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CLOSE = (b"connection", b"close")
#: The Xet CAS routes (server/xet.py): their tokens are not rows of `tokens`; the routes check them first.
XET_CAS_PREFIX = "/xet/cas/"


# ----- the protocol: a deadline for the request head ------------------------------------------------------

class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head (`header_timeout` seconds from the
    connection's start, or from the first byte of a request that follows another)."""

    header_timeout: float = HEADER_TIMEOUT
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            self._await_head()  # part of a head, or nothing yet: the deadline runs (it is not moved)
        else:
            self._head_arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("closed a connection from %s: no complete request head within %.0f s",
                      self.client[0] if self.client else "?", self.header_timeout)
            self.conn.send(h11.ConnectionClosed())
            self.transport.close()


def protocol(header_timeout: float = HEADER_TIMEOUT) -> type[H11Protocol]:
    """The HTTP protocol class for uvicorn (`http=`), with this deadline for request heads."""
    return type("SwiftregH11Protocol", (TimedH11Protocol,), {"header_timeout": float(header_timeout)})


# ----- the middleware -------------------------------------------------------------------------------------

def public_origin(url: str) -> tuple[str, str]:
    """(scheme, host[:port]) of a `--public-url`; anything but http(s)://host[:port] is refused."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query \
            or parts.fragment or parts.username or parts.password:
        raise E.RegistryError(f"public URL {url!r}: expected http(s)://host[:port], without a path")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise E.RegistryError(f"public URL {url!r}: the port is not a number") from None
    return parts.scheme, parts.netloc


class HygieneMiddleware:
    """The ASGI half of the rules in this module's docstring: Host, framing, token before body, body
    timeout, `Connection: close` on answers that leave a body unread."""

    def __init__(self, app: ASGIApp, *, public_url: str | None = None, body_timeout: float = BODY_TIMEOUT) -> None:
        self.app = app
        self.origin = public_origin(public_url) if public_url else None
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self._rewrite_origin(scope)
        lengths = [v for k, v in scope["headers"] if k == b"content-length"]
        chunked = any(k == b"transfer-encoding" for k, _ in scope["headers"])
        if lengths and chunked:
            refusal = answer(E.RegistryError("a request may not carry both Content-Length and Transfer-Encoding"))
            refusal.headers["Connection"] = "close"
            await refusal(scope, receive, send)
            return
        unread = chunked or any(v.strip() not in (b"", b"0") for v in lengths)  # a body the app has not read
        if scope["method"] in WRITES:
            refusal = await self._unauthenticated(scope)
            if refusal is not None:
                if unread:
                    refusal.headers["Connection"] = "close"
                await refusal(scope, receive, send)
                return
        timed_out = False

        async def receive_bounded() -> Message:
            nonlocal unread, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if not unread:
                return await receive()
            with anyio.move_on_after(self.body_timeout) as waited:
                message = await receive()
            if waited.cancelled_caught:
                timed_out = True
                log.debug("%s %s: no byte of the request body for %.0f s; the connection is closed",
                         scope["method"], scope["path"], self.body_timeout)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                unread = False
            return message

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and (unread or timed_out):
                headers = list(message.get("headers", []))
                if _CLOSE not in headers:
                    message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        await self.app(scope, receive_bounded, send_closing)

    def _rewrite_origin(self, scope: Scope) -> None:
        """The public origin as the request's Host and scheme (the client's Host header is dropped)."""
        if self.origin is not None:
            scope["scheme"], host = self.origin
        else:
            server = scope.get("server")
            if server and server[1] is not None:
                address = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
                host = f"{address}:{server[1]}"
            else:  # a Unix socket
                host = "localhost"
        scope["headers"] = [(b"host", host.encode("ascii", "replace")),
                            *((k, v) for k, v in scope["headers"] if k != b"host")]

    async def _unauthenticated(self, scope: Scope) -> Any:
        """A 401 response for a write without a token the server knows; None when the token is known (or
        cannot be checked now: the route then answers as it would, 503 when the database is down)."""
        if scope["path"].startswith(XET_CAS_PREFIX):  # short-lived Xet CAS tokens: xet.py checks them before any body
            return None
        secret = _bearer(scope) or web_session.session_secret(scope)  # web forms: the session cookie's token
        if secret is None:
            if scope["path"] in web_session.OPEN_WRITES:  # the login form carries its token in its small body
                return None
            if signed_write(scope):  # a signed hub upload href, or the card check the HF client sends bare
                return None
            return _refusal(scope, E.UnauthorizedError("this route needs a bearer token (swiftreg token create)",
                                                       headers={"WWW-Authenticate": "Bearer"}))
        registry = scope["app"].state.registry
        try:
            token = await anyio.to_thread.run_sync(tokens.verify, registry, secret)
        except Exception:  # noqa: BLE001 - the route's own check meets it again and answers it
            return None
        if token is None or token.revoked:
            return _refusal(scope, E.UnauthorizedError("the token is unknown or revoked",
                                                       headers={"WWW-Authenticate": "Bearer"}))
        return None


def _refusal(scope: Scope, exc: E.RegistryError) -> Any:
    """`exc` as the route's dialect answers it: ModelScope's envelope on its write routes (its client reads the
    message only from there), else swiftreg's `{"error": ...}`."""
    return modelscope_upload.refusal_before_body(scope["path"], exc) or answer(exc)


def _bearer(scope: Scope) -> str | None:
    """The bearer token of the Authorization header (auth.bearer, on the raw ASGI scope)."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, secret = value.decode("latin-1").partition(" ")
            return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None
    return None
