"""Blob uploads straight to the server's object store (registry/server/direct_uploads.py).

The server hands out presigned PUT URLs (one, or one per part still missing of a multipart upload); the
bytes go to the storage, never through the server, a few parts at a time; then the server checks the
object hashes to its digest and stores it. A part is retried (connection errors, 5xx, 429) within a
transfer budget (transport.Budget); an expired URL is replaced by asking the server again. Giving up keeps
the finished parts in the storage: the next push asks again and sends only the missing ones.

A server without object storage (or run with --no-redirect) says so in its `blobs/missing` answer
(no `direct_uploads`; these routes would answer 404): the caller then uses the resumable PATCH uploads.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import urllib3

from ..errors import IntegrityError, NotFoundError, RemoteError, ServerUnreachableError
from ..store.errors import BlobDigestMismatch, StoreError
from .transport import COMMIT_TIMEOUT, Budget, Http, retry_after

#: Parts of one blob in flight at once.
PARALLEL_PARTS = 4
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class _Expired(Exception):
    """The storage refused a URL (expired, or 403): ask the server for fresh ones."""


class DirectUploader:
    """Uploads blobs of one server straight to its object store."""

    def __init__(self, http: Http) -> None:
        self._http = http
        #: whether the server offers presigned uploads (its blobs/missing answer says; None: not asked yet)
        self.available: bool | None = None

    def upload(self, digest: str, path: Path, size: int, rel: str,
               progress: Callable[[int], None] | None) -> int | None:
        """Send the blob's missing bytes to the storage and have the server store it; the bytes this call
        sent, or None when the server takes uploads itself (use PATCH)."""
        if self.available is not True:  # the server's blobs/missing answer says whether it offers them
            return None
        where = f"/api/v1/uploads/{quote(digest, safe=':')}/direct"
        refreshed = 0
        sent = 0
        counted = False
        while True:
            try:
                plan = self._http.json("POST", where, json={"size": size}, idempotent=True)
            except NotFoundError:  # not offered after all (a server restarted with --no-redirect)
                self.available = False
                return None
            self.available = True
            if not isinstance(plan, dict):
                raise RemoteError(f"POST {where}: the server's answer is not an upload plan")
            if plan.get("complete"):
                if progress is not None and not counted:
                    progress(size)
                return sent
            parts = list(plan.get("parts") or [])
            if progress is not None and not counted:
                progress(size - sum(int(p["length"]) for p in parts))
                counted = True
            try:
                sent += self._put_parts(parts, path, size, rel, digest, progress)
            except _Expired:
                refreshed += 1
                if refreshed > 2:
                    raise RemoteError(f"{rel}: the object store refused the upload URLs of blob {digest} three "
                                      "times (expired, or a clock far off?)") from None
                continue
            try:
                self._http.json("POST", where + "/complete", json={"size": size, "upload_id": plan.get("upload_id")},
                                idempotent=True, timeout=COMMIT_TIMEOUT)
            except StoreError as exc:
                if isinstance(exc, BlobDigestMismatch):
                    raise IntegrityError(f"{rel}: the server refused the bytes of blob {digest}: {exc} (did the file "
                                         "change during the push? push it again)") from None
                refreshed += 1
                if refreshed > 2:
                    raise
                continue  # parts missing (one was lost?): ask again, send what is missing
            return sent

    def _put_parts(self, parts: list[dict[str, Any]], path: Path, size: int, rel: str, digest: str,
                   progress: Callable[[int], None] | None) -> int:
        """PUT every part (a few at once); the bytes sent. Raises the first part's failure, others stopped."""
        stop = threading.Event()
        done: list[int] = []
        fd = os.open(path, os.O_RDONLY)
        try:
            with ThreadPoolExecutor(min(PARALLEL_PARTS, max(len(parts), 1)), thread_name_prefix="swiftreg-put") as pool:
                futures = [pool.submit(self._put_part, part, fd, rel, digest, len(parts), stop, done, progress)
                           for part in parts]
                errors = []
                for future in futures:
                    try:
                        future.result()
                    except BaseException as exc:  # noqa: BLE001 - the first one is raised below
                        stop.set()
                        errors.append(exc)
            if errors:
                first = next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
                if isinstance(first, ServerUnreachableError):
                    first.args = (f"{first} {len(done)} of the {len(parts)} parts this try sent are stored: run the "
                                  "push again to resume (parts stored are not sent again)", *first.args[1:])
                raise first
        finally:
            os.close(fd)
        return sum(done)

    def _put_part(self, part: dict[str, Any], fd: int, rel: str, digest: str, count: int, stop: threading.Event,
                  done: list[int], progress: Callable[[int], None] | None) -> None:
        offset, length, url = int(part["offset"]), int(part["length"]), str(part["url"])
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise IntegrityError(f"{rel}: the file is shorter than when the push began; push it again")
        budget: Budget = self._http.budget(transfer=True)
        host = urlsplit(url).netloc
        while True:
            if stop.is_set():
                raise _Stopped()
            response = None
            try:
                response = self._http.bulk.request("PUT", url, body=data, headers={"Content-Length": str(length)},
                                                   redirect=False, preload_content=True)
            except urllib3.exceptions.HTTPError as exc:
                error: Exception | None = exc
            else:
                error = None
                if response.status in (200, 201, 204):
                    done.append(length)
                    if progress is not None:
                        progress(length)
                    return
                if response.status == 403:
                    raise _Expired()
                if response.status not in _RETRY_STATUS:
                    raise RemoteError(f"{rel}: the object store answered HTTP {response.status} to part "
                                      f"{part['number']} of blob {digest}: {response.data[:300]!r}", response.status)
            status: Any = _Status(response.status, response.headers) if response is not None else None
            wait = retry_after(status)
            if not budget.again(wait):
                why = f"HTTP {response.status}" if response is not None else f"{type(error).__name__}: {error}"
                raise ServerUnreachableError(
                    f"{rel}: the object store at {host} could not be reached to upload part {part['number']} of "
                    f"{count} of blob {digest} ({why}); gave up after {budget.spent()}.",
                    response.status if response is not None else None, "unreachable")


class _Stopped(Exception):
    """Another part failed for good: this one stops."""


class _Status:
    """Enough of an httpx.Response for transport.retry_after."""

    def __init__(self, status: int, headers: Any) -> None:
        self.status_code, self.headers = status, {"Retry-After": headers.get("Retry-After", "")}
