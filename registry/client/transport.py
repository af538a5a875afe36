"""The HTTP under RemoteRegistry: one httpx client (keep-alive, bearer token, timeouts, retries with
exponential backoff), a urllib3 pool for blob bodies, and the server's JSON errors rebuilt as the
classes the server raised (registry.errors.from_payload), so a caller catches the same NotFoundError
whether the registry is local or not. The errors only a remote registry meets (RemoteError,
AccessDeniedError, ServerUnreachableError, ...) are in registry/errors.py's tree too.
"""
from __future__ import annotations

import json
import os
import random
import time
from typing import Any, Iterable

import httpx
import urllib3

from ..errors import FormatError, RegistryError, RemoteError, ServerUnreachableError, from_payload, tree

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=120.0, pool=30.0)
#: A commit rebuilds and validates the checkpoint on the server: allow it longer than one read.
COMMIT_TIMEOUT = httpx.Timeout(connect=10.0, read=900.0, write=120.0, pool=30.0)
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


# ----- errors ---------------------------------------------------------------------------------------

def error_from(response: httpx.Response, what: str) -> RegistryError | FormatError:
    """The exception the server answered with (same class, same message), from its JSON error."""
    return from_payload(response.status_code, _body(response),
                        fallback=f"{what}: HTTP {response.status_code} {response.reason_phrase}")


def retryable_status(response: httpx.Response) -> bool:
    """5xx that another try may cure; a refusal the server named with a code of the error tree (stored
    bytes are bad, ms-swift is missing, ...) is final."""
    if response.status_code < 500:
        return False
    body = _body(response)
    error = body.get("error") if isinstance(body, dict) else None
    return not (isinstance(error, dict) and error.get("code") in tree())


def _body(response: httpx.Response) -> Any:
    """The response's JSON (None for a HEAD, an empty body or one that is not JSON)."""
    if response.request.method == "HEAD":
        return None
    try:
        return json.loads(response.read() or b"null")
    except (ValueError, httpx.StreamError):
        return None


# ----- transport ------------------------------------------------------------------------------------

class Http:
    """One httpx client (keep-alive pool), bearer auth, timeouts, retries with exponential backoff."""

    def __init__(self, url: str, token: str | None, timeout: httpx.Timeout, retries: int, backoff: float,
                 transport: httpx.BaseTransport | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ua = f"swiftreg/{version('swiftreg')}"
        except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
            ua = "swiftreg"
        headers = {"User-Agent": ua}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url
        self.retries, self.backoff = retries, backoff
        self.headers, self.timeout = headers, timeout
        self.client = httpx.Client(base_url=url, headers=headers, timeout=timeout, follow_redirects=True,
                                   transport=transport)
        self._bulk: urllib3.PoolManager | None = None

    @property
    def bulk(self) -> urllib3.PoolManager:
        """The connection pool for blob bodies: urllib3, because httpx reads 64 KiB per socket read.

        Measured on a 300 MiB blob over loopback: httpx 0.77-1.04 s, urllib3 0.21-0.27 s, curl
        0.22-0.29 s. Same headers, timeouts, proxy variables and certificate bundle as the httpx
        client used for everything else.
        """
        if self._bulk is None:
            self._bulk = _bulk_pool(self.url, self.timeout)
        return self._bulk

    def pause(self, attempt: int) -> None:
        time.sleep(min(self.backoff * (2 ** attempt), 10.0) * (0.75 + random.random() / 2))

    def unreachable(self, method: str, path: str, exc: Exception | None, attempts: int,
                    response: httpx.Response | None = None) -> ServerUnreachableError:
        why = f"HTTP {response.status_code}" if response is not None else f"{type(exc).__name__}: {exc}"
        return ServerUnreachableError(f"{self.url} gave no usable answer to {method} {path} after {attempts} "
                                      f"attempt{'s' if attempts != 1 else ''} ({why}); is the server running "
                                      "and is SWIFTREG_URL right?",
                                      response.status_code if response is not None else None, "unreachable")

    def send(self, method: str, path: str, *, idempotent: bool | None = None, allow: Iterable[int] = (),
             retries: int | None = None, **kwargs: Any) -> httpx.Response:
        """The response (status < 400 or in `allow`), or the mapped exception."""
        idempotent = method in _IDEMPOTENT if idempotent is None else idempotent
        retries = self.retries if retries is None else min(retries, self.retries)
        allowed = set(allow)
        attempt = 0
        while True:
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                # A request that never reached the server is safe to send again, whatever its method.
                safe = idempotent or isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
                if not safe or attempt >= retries:
                    raise self.unreachable(method, path, exc, attempt + 1) from None
            else:
                if response.status_code in allowed or response.status_code < 400:
                    return response
                if not (idempotent and retryable_status(response)):
                    raise error_from(response, f"{method} {path}")
                if attempt >= retries:
                    if response.status_code in (502, 503, 504):
                        raise self.unreachable(method, path, None, attempt + 1, response)
                    raise error_from(response, f"{method} {path}")
            self.pause(attempt)
            attempt += 1

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise RemoteError(f"{method} {path}: the server answered {response.status_code} without JSON",
                              response.status_code) from None

    def close(self) -> None:
        self.client.close()
        if self._bulk is not None:
            self._bulk.clear()


def _bulk_pool(url: str, timeout: httpx.Timeout) -> urllib3.PoolManager:
    """A urllib3 pool that honours the environment the way httpx does (HTTP(S)_PROXY, NO_PROXY, SSL_CERT_FILE)."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    import certifi

    parts = urlsplit(url)
    options: dict[str, Any] = {
        "num_pools": 4, "maxsize": 4, "retries": False,
        "timeout": urllib3.Timeout(connect=timeout.connect, read=timeout.read),
    }
    if parts.scheme == "https":
        options["ca_certs"] = os.environ.get("SSL_CERT_FILE") or certifi.where()
    proxy = getproxies().get(parts.scheme)
    if proxy and not proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy, **options)
    return urllib3.PoolManager(**options)


def as_httpx(response: urllib3.BaseHTTPResponse, method: str, url: str) -> httpx.Response:
    """A refusal read through urllib3, in the shape the error mapping reads (status, headers, JSON body)."""
    body = response.read(1 << 20, decode_content=True) or b""
    return httpx.Response(response.status, headers=list(response.headers.items()), content=body,
                          request=httpx.Request(method, url))
