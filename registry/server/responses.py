"""File responses shared by the dialects: blobs served verified, and served as data.

Verified serving: no response completes with bytes that do not hash to the blob's digest. The route
asks the service what is known of the blob (`Registry.servable_blob`, registry/service/integrity.py)
and this module sends it:

- verified before, and its file still has the fingerprint it was verified at (inode, size, mtime):
  streamed as is in 4 MiB reads; the fingerprint is checked again before the last chunk, so a
  file changed meanwhile is not completed either;
- small (<= 4 MiB) and not verified: the route already read and hashed it whole, so a corrupt one is
  an error status, and the very bytes hashed are the ones sent;
- larger and not verified: hashed while it streams, with the last chunk held back until the hash is
  known. A match records the blob verified (later reads are free) and sends the last chunk; a mismatch
  quarantines the blob (one log line naming the revisions that need it) and ends the response without
  its last chunk, so the server closes the connection with the body short of its Content-Length:
  every HTTP client sees a failed download and keeps nothing (huggingface_hub and modelscope resume
  with a Range, which then finds the blob quarantined: an error, never a completed file). Range
  requests are answered only for a blob verified whole (the route verifies it first).

How a response is cut: the response returns without its final body message and marks the request
(`ABORTED` in the scope's state); `AbortGuard`, outside every middleware that might complete a body
on a response's behalf (Starlette's `BaseHTTPMiddleware` sends an empty final chunk when the app
stops), drops any final message of a marked request. uvicorn then sees an unfinished response, logs
one line ("ASGI callable returned without completing response") and closes the connection.

Served as data: every file answer carries `X-Content-Type-Options: nosniff` and a sandboxing
`Content-Security-Policy`; only JSON, Markdown and plain text keep a text type, everything else is
`application/octet-stream` with `Content-Disposition: attachment` (an `index.html` or `.svg` a writer
pushed is never rendered on the API's origin).
"""
from __future__ import annotations

import logging
import mimetypes
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping
from urllib.parse import quote

import anyio
from fastapi.responses import FileResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..db.faults import database_fault
from ..service.integrity import ServableBlob
from ..store.base import file_fingerprint
from ..store.digests import format_digest, new_hasher

if TYPE_CHECKING:
    import hashlib

    from anyio.streams.memory import MemoryObjectSendStream

    from ..service import Registry

log = logging.getLogger("swiftreg.server")

#: The key, in a request's scope state, of why its response was cut short (AbortGuard reads it).
ABORTED = "swiftreg_response_aborted"
#: Sent with every file: never sniff a type, and run nothing if a browser renders it anyway.
DATA_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}
OCTETS = "application/octet-stream"
#: The types a file keeps (by its extension's guessed type); everything else is served as OCTETS.
_TEXT_TYPES = {
    "application/json": "application/json",
    "text/markdown": "text/markdown; charset=utf-8",
    "text/plain": "text/plain; charset=utf-8",
}


class ResponseAborted(Exception):
    """A file response stops before its last byte (the blob's bytes did not match, or its file changed
    while it was sent): the server drops the connection, the client sees a short body. `reported`: the
    reason was logged already (a quarantine logs its own line)."""

    def __init__(self, message: str, reported: bool = False) -> None:
        self.reported = reported
        super().__init__(message)


class AbortGuard:
    """ASGI middleware, outside the app's others: a response marked `ABORTED` is never completed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def guarded(message: Message) -> None:
            if scope.get("state", {}).get(ABORTED) and message["type"] == "http.response.body" \
                    and not message.get("more_body", False):
                return  # what a middleware sends to finish the body: the response stays unfinished
            await send(message)

        await self.app(scope, receive, guarded)


def media_headers(filename: str | None) -> tuple[str, dict[str, str]]:
    """(Content-Type, extra headers) for serving a file named `filename` (None: a bare blob) as data."""
    guessed = mimetypes.guess_type(filename)[0] if filename else None
    media_type = _TEXT_TYPES.get(guessed or "", OCTETS)
    headers = dict(DATA_HEADERS)
    if media_type == OCTETS:
        headers["Content-Disposition"] = _attachment(filename.rsplit("/", 1)[-1] if filename else None)
    return media_type, headers


def _attachment(name: str | None) -> str:
    if not name:
        return "attachment"
    encoded = quote(name, safe="")
    if encoded == name:  # plain ASCII letters, digits and -._~
        return f'attachment; filename="{name}"'
    return f"attachment; filename*=UTF-8''{encoded}"


def blob_response(registry: "Registry", blob: ServableBlob, headers: Mapping[str, str],
                  filename: str | None) -> Response:
    """The answer for `blob` (a GET or HEAD; Range supported), named `filename` for its content type."""
    media_type, extra = media_headers(filename)
    all_headers = {**headers, **extra, "Accept-Ranges": "bytes"}
    if blob.data is not None:  # small, verified just now: exactly these bytes
        return Response(blob.data, headers=all_headers, media_type=media_type)
    return BlobResponse(registry, blob, headers=all_headers, media_type=media_type)


class BlobResponse(FileResponse):
    """A blob streamed in 4 MiB reads (Starlette's 64 KiB reads capped serving at about 300 MiB/s on the
    test machine, each read being a thread hop), verified as the module docstring says."""

    chunk_size = 4 << 20

    def __init__(self, registry: "Registry", blob: ServableBlob, *, headers: Mapping[str, str],
                 media_type: str) -> None:
        super().__init__(blob.path, headers=dict(headers), media_type=media_type, stat_result=blob.stat)
        self.registry, self.blob = registry, blob

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ResponseAborted as exc:
            scope.setdefault("state", {})[ABORTED] = str(exc)
            if not exc.reported:
                log.warning("response cut short: %s", exc)

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if send_header_only:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        fd = await anyio.to_thread.run_sync(os.open, self.blob.path, os.O_RDONLY)
        try:
            await self._stream(send, fd)
        finally:
            os.close(fd)

    async def _stream(self, send: Send, fd: int) -> None:
        blob, size = self.blob, self.blob.stat.st_size
        opened = await anyio.to_thread.run_sync(os.fstat, fd)
        if opened.st_size != size:  # replaced since the route looked: the headers are wrong
            raise ResponseAborted(f"blob {blob.digest} changed while it was served")
        fingerprint = file_fingerprint(opened)
        hasher = new_hasher() if fingerprint != blob.verified else None
        # One chunk is read (and hashed) on a worker thread while the one before it is sent.
        ready, chunks = anyio.create_memory_object_stream[bytes](1)
        position, pending = 0, b""
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._read_ahead, ready, fd, size, hasher)
                async with chunks:
                    async for chunk in chunks:
                        position += len(chunk)
                        if pending:
                            await send({"type": "http.response.body", "body": pending, "more_body": True})
                        pending = chunk
        except BaseExceptionGroup as group_error:  # one failure: raise it as itself, as Starlette's own groups do
            if len(group_error.exceptions) != 1:
                raise
            raise group_error.exceptions[0] from None
        if position != size:
            raise ResponseAborted(f"blob {blob.digest} was cut short while it was served")
        if hasher is not None:
            actual = format_digest(hasher.hexdigest())
            if actual != blob.digest:
                await anyio.to_thread.run_sync(self.registry.blob_corrupt, blob.digest, actual, fingerprint, size,
                                               "while serving it")
                raise ResponseAborted(f"blob {blob.digest} is corrupt: the response was cut before its last byte",
                                      reported=True)
            try:
                await anyio.to_thread.run_sync(self.registry.blob_verified, blob.digest, fingerprint, size)
            except Exception as exc:  # the record only spares a later rehash: the bytes are good, send them
                if database_fault(exc) is None:
                    raise
        elif file_fingerprint(await anyio.to_thread.run_sync(os.fstat, fd)) != fingerprint:
            raise ResponseAborted(f"blob {blob.digest} changed while it was served")
        await send({"type": "http.response.body", "body": pending, "more_body": False})

    async def _read_ahead(self, ready: "MemoryObjectSendStream[bytes]", fd: int, size: int,
                          hasher: "hashlib._Hash | None") -> None:
        async with ready:
            position = 0
            while position < size:
                chunk = await anyio.to_thread.run_sync(_read, fd, position, min(self.chunk_size, size - position),
                                                       hasher)
                if not chunk:
                    return  # the file shrank: the consumer sees too few bytes
                position += len(chunk)
                await ready.send(chunk)

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[Any]:
        """The file for a Range answer: only a blob verified at the fingerprint it has now."""
        async with super()._open_file() as file:
            st = await anyio.to_thread.run_sync(os.fstat, file.wrapped.fileno())
            if self.blob.verified is None or file_fingerprint(st) != self.blob.verified:
                raise ResponseAborted(f"blob {self.blob.digest} is not verified at its current state; a range "
                                      "of it is not served")
            yield file


def _read(fd: int, position: int, length: int, hasher: "hashlib._Hash | None") -> bytes:
    """One read at `position` (and its hash, on the same worker thread: hashlib releases the GIL)."""
    chunk = os.pread(fd, length, position)
    if hasher is not None:
        hasher.update(chunk)
    return chunk


# ----- object storage: redirects to presigned URLs, or the bytes streamed through --------------------------

def redirecting(request: Any, registry: "Registry") -> bool:
    """Whether this server answers blob downloads with a redirect: an object store and no --no-redirect."""
    return bool(getattr(registry.store, "remote", False)) and request.app.state.settings.redirect


def remote_blob(request: Any, registry: "Registry", digest: str, size: int | None, headers: Mapping[str, str],
                filename: str | None, *, referenced: bool = True) -> Response:
    """The answer for a blob of an object store: 302 to a short-lived presigned URL (the metadata headers on
    this answer, as the Hub does with its CDN; the blob verified at its current fingerprint before it is
    redirected to, service/integrity.py `blob_location`), or with --no-redirect its bytes streamed through
    this server, verified (`RemoteBlobResponse`)."""
    media_type, extra = media_headers(filename)
    if redirecting(request, registry):
        disposition = extra.get("Content-Disposition")
        url = registry.blob_location(digest, size, referenced=referenced, filename=disposition,
                                     content_type=media_type)
        request.app.state.stats["redirects"] += 1
        return Response(status_code=302, headers={**headers, "Location": url, "Cache-Control": "no-store"})
    return RemoteBlobResponse.make(request, registry, digest, size, {**headers, **extra}, media_type, referenced)


class RemoteBlobResponse(Response):
    """A blob of an object store streamed through the server (--no-redirect), verified like BlobResponse:
    a blob not verified at its object's current fingerprint is hashed as it streams and its last chunk held
    back until the hash matched (a mismatch quarantines it and cuts the response). A Range is answered only
    for a verified blob (verified whole first)."""

    chunk_size = 4 << 20

    @classmethod
    def make(cls, request: Any, registry: "Registry", digest: str, size: int | None, headers: Mapping[str, str],
             media_type: str, referenced: bool) -> Response:
        from ..store.errors import BlobNotFound

        store: Any = registry.store
        try:
            actual, fingerprint = store.stat(digest)
        except BlobNotFound:
            raise registry._absent(digest, referenced) from None
        if size is not None and actual != size:
            if registry.check_blob(digest) != "verified":
                raise registry._absent(digest, referenced)
        verified = registry._verified_at(digest) == fingerprint
        span = _range(request.headers.get("range"), actual)
        if span is not None and not verified and request.method != "HEAD":
            if registry.check_blob(digest) != "verified":
                raise registry._absent(digest, referenced)
            actual, fingerprint = store.stat(digest)
            verified = registry._verified_at(digest) == fingerprint
        all_headers = {**headers, "Accept-Ranges": "bytes"}
        status = 200
        start, end = 0, actual
        if span is not None:
            start, end = span
            status = 206
            all_headers["Content-Range"] = f"bytes {start}-{end - 1}/{actual}"
        all_headers["Content-Length"] = str(end - start)
        response = cls(status_code=status, headers=all_headers, media_type=media_type)
        response.registry, response.digest, response.fingerprint = registry, digest, fingerprint
        response.verified, response.start, response.end, response.total = verified, start, end, actual
        response.head = request.method == "HEAD"
        return response

    registry: "Registry"
    digest: str
    fingerprint: str
    verified: bool
    start: int
    end: int
    total: int
    head: bool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if self.head or self.start == self.end:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        try:
            await self._stream(send)
        except ResponseAborted as exc:
            scope.setdefault("state", {})[ABORTED] = str(exc)
            if not exc.reported:
                log.warning("response cut short: %s", exc)

    async def _stream(self, send: Send) -> None:
        store: Any = self.registry.store
        whole = self.start == 0 and self.end == self.total
        hasher = new_hasher() if not self.verified else None
        if not whole and hasher is not None:  # unreachable: make() verified a blob before a range of it
            raise ResponseAborted(f"blob {self.digest} is not verified; a range of it is not served")
        source = await anyio.to_thread.run_sync(store.open_range, self.digest, self.start, self.end)
        try:
            position, pending = self.start, b""
            while position < self.end:
                chunk = await anyio.to_thread.run_sync(_read_hashing, source, min(self.chunk_size,
                                                                                   self.end - position), hasher)
                if not chunk:
                    break
                position += len(chunk)
                if pending:
                    await send({"type": "http.response.body", "body": pending, "more_body": True})
                pending = chunk
        finally:
            await anyio.to_thread.run_sync(source.close)
        if position != self.end:
            raise ResponseAborted(f"blob {self.digest} was cut short while it was served")
        if hasher is not None:
            actual = format_digest(hasher.hexdigest())
            if actual != self.digest:
                await anyio.to_thread.run_sync(self.registry.blob_corrupt, self.digest, actual, self.fingerprint,
                                               self.total, "while serving it")
                raise ResponseAborted(f"blob {self.digest} is corrupt: the response was cut before its last byte",
                                      reported=True)
            try:
                await anyio.to_thread.run_sync(self.registry.blob_verified, self.digest, self.fingerprint, self.total)
            except Exception as exc:  # the record only spares a later rehash
                if database_fault(exc) is None:
                    raise
        await send({"type": "http.response.body", "body": pending, "more_body": False})


def _read_hashing(source: Any, length: int, hasher: "hashlib._Hash | None") -> bytes:
    chunk: bytes = source.read(length)
    if hasher is not None and chunk:
        hasher.update(chunk)
    return chunk


def _range(value: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range within a blob of `size` bytes, as [start, end); None
    for no Range or one this does not serve (the whole blob is answered then)."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first, _, last = value[len("bytes="):].strip().partition("-")
    try:
        if not first:
            n = int(last)
            return (max(size - n, 0), size) if n > 0 else None
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    except ValueError:
        return None
    return (start, end) if 0 <= start < end else None
