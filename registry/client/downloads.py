"""Blob downloads for RemoteRegistry: resumable across processes, verified before they count.

A blob goes to `downloads/<sha256 hex>.part` under a per-prefix file lock. A later run (or another
process) hashes what the .part already holds and asks for the rest with `Range`; the finished file is
checked against its digest, fsynced and renamed into the snapshot being built. Retries are bounded
(transport.Budget); a blob the server holds with another size or other bytes is an error naming it,
not a retry. Bodies are read through urllib3 (see transport.Http.bulk) with `read1`, so bytes that
arrived before a cut connection are kept; the receiving thread writes what arrives, and a large blob is
hashed and flushed on threads of their own while the socket is read, with bounded memory (_Sink).
"""
from __future__ import annotations

import os
import queue
import re
import threading
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import httpx
import urllib3
from filelock import FileLock

from ..atomic import fsync
from ..atomic import write_all as _write_all  # a module name tests can patch
from ..errors import IntegrityError, ServerUnreachableError, tree
from ..store.digests import digest_hex, format_digest, new_hasher
from .transport import Budget, Http, as_httpx, error_code, error_from, gave_up, retry_after, retryable

#: Read size of local files while hashing a resumed download.
READ_CHUNK = 8 << 20
#: Downloads: received bytes are written, and handed to the hasher thread, in batches of this size, at most
#: SINK_QUEUE batches ahead of it (bounded memory: SINK_BATCH * SINK_QUEUE).
SINK_BATCH = 1 << 20
SINK_QUEUE = 16
#: A download is flushed to disk (fdatasync, on a third thread) every SYNC_EVERY bytes, so the fsync
#: before the rename into the snapshot only waits for the tail.
SYNC_EVERY = 32 << 20
#: Blobs with more than this many bytes left to fetch are written by the threaded pipeline.
THREADED_DOWNLOAD = 4 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class _Partial:
    """A `.part` file and the sha256 of its bytes so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = new_hasher()
        self.size = 0
        try:
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    self.hasher.update(chunk)
                    self.size += len(chunk)
        except FileNotFoundError:
            pass

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher, self.size = new_hasher(), 0


class BlobDownloader:
    """Fetches blobs of one server into `downloads` (the .part files), for RemoteRegistry's snapshots."""

    def __init__(self, http: Http, url: str, downloads: Path) -> None:
        self._http, self.url, self.downloads = http, url, downloads

    def download(self, digest: str, size: int, dst: Path, rel: str) -> None:
        """Fetch one blob into `dst`: through downloads/<hex>.part, resumed with Range, verified, renamed.

        Cut answers are resumed within one Budget (transport.py): a try that got further than any
        before is progress; a server that keeps failing, or keeps cutting at the same byte, is given
        up with the .part kept for the next run. A blob whose size on the server is not the size the
        revision names (a 416 to a Range inside it, a Content-Length or Content-Range total that
        differs) and bytes that hash to another digest are errors naming the blob, never retried.
        """
        downloads = self.downloads
        locks = downloads / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        hexdigest = digest_hex(digest)
        with FileLock(str(locks / f"{hexdigest[:2]}.lock")):
            part = _Partial(downloads / f"{hexdigest}.part")  # what an earlier, interrupted run left
            if part.size > size:
                part.restart()
            budget = self._http.budget(transfer=True)
            initial = furthest = part.size
            inherited = initial > 0  # bytes of an earlier run only: a 416 may mean that .part is stale
            while part.size < size:
                try:
                    self._fetch_range(digest, size, part, rel)
                except _Short as exc:
                    if not inherited:
                        part.restart()
                        raise IntegrityError(f"{rel}: the server holds fewer than the {size} bytes of blob {digest} "
                                             f"(HTTP 416 for bytes {exc.start}-); its copy is truncated: tell the "
                                             "server's administrator. Nothing was kept") from None
                    part.restart()  # our .part of an earlier run is longer than the server's blob: start over
                except (httpx.TransportError, urllib3.exceptions.HTTPError, _Retry) as exc:
                    if part.size > furthest:
                        furthest = part.size
                        budget.progress()
                    response = exc.response if isinstance(exc, _Retry) else None
                    if not budget.again(retry_after(response)):
                        raise self._gave_up(digest, size, rel, part, exc, response, budget) from None
                    part = _Partial(part.path)  # trust only what is on disk
                inherited = inherited and part.size == initial
            actual = format_digest(part.hasher.hexdigest())
            if actual != digest:
                part.restart()
                raise IntegrityError(f"{rel}: the bytes downloaded for blob {digest} hash to {actual}; the partial "
                                     "download was deleted, run the command again")
            with open(part.path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(part.path, dst)
        fsync(dst.parent)

    def _gave_up(self, digest: str, size: int, rel: str, part: _Partial, exc: Exception,
                 response: httpx.Response | None, budget: Budget) -> Exception:
        """The error that ends a download whose retries are spent; it names the blob and what is kept."""
        if response is not None and error_code(response) in tree():  # the server named it: 503 unavailable, ...
            return gave_up(error_from(response, f"GET blob {digest} ({rel})"), budget)
        why = f"HTTP {response.status_code}" if response is not None else f"{type(exc).__name__}: {exc}"
        return ServerUnreachableError(
            f"{rel}: blob {digest} could not be downloaded from {self.url}: {part.size} of its {size} bytes arrived, "
            f"the last try ended with {why}; gave up after {budget.spent()}. The {part.size} bytes are kept: run "
            "the command again to resume", response.status_code if response is not None else None, "unreachable")

    def _fetch_range(self, digest: str, size: int, part: _Partial, rel: str) -> None:
        """One GET of the blob from `part.size` on, appended to the .part file as it arrives."""
        headers = {**self._http.headers, "Accept-Encoding": "identity"}  # urllib3 replaces, not merges
        if part.size:
            headers["Range"] = f"bytes={part.size}-"
        url = f"{self.url}/api/v1/blobs/{quote(digest, safe=':')}"
        response = self._http.bulk.request("GET", url, headers=headers, preload_content=False,
                                           decode_content=False, redirect=False)
        location = response.headers.get("Location") if response.status in _REDIRECTS else None
        if location:  # the server's object store: a presigned URL, fetched without our token; verified all the same
            response.drain_conn()
            response.release_conn()
            target = urljoin(url, location)
            if _origin(target) != _origin(url):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
            response = self._http.bulk.request("GET", url, headers=headers, preload_content=False,
                                               decode_content=False, redirect=False)
        try:
            self._receive(response, url, digest, size, part, rel)
        finally:
            response.release_conn()

    @staticmethod
    def _other_size(digest: str, size: int, rel: str, served: int, part: _Partial) -> IntegrityError:
        part.restart()
        return IntegrityError(f"{rel}: the server's copy of blob {digest} has {served} bytes where the revision "
                              f"names {size}; its store is damaged: tell the server's administrator. Nothing was kept")

    def _receive(self, response: urllib3.BaseHTTPResponse, url: str, digest: str, size: int, part: _Partial,
                 rel: str) -> None:
        status = response.status
        if status >= 500:
            answer = as_httpx(response, "GET", url)
            if not retryable(answer):
                raise error_from(answer, f"GET blob {digest} ({rel})")
            raise _Retry(answer)
        if status == 416:  # the server holds no byte from part.size on
            raise _Short(part.size)
        if status >= 300:
            raise error_from(as_httpx(response, "GET", url), f"GET blob {digest} ({rel})")
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is not None and match.group(3) != "*" and int(match.group(3)) != size:
                raise self._other_size(digest, size, rel, int(match.group(3)), part)
            if match is None or int(match.group(1)) != part.size:
                part.restart()  # not the range we asked for: take the whole blob again
                raise _Retry(None)
        else:  # 200: every byte (the server ignored the Range header when we asked for one)
            declared = response.headers.get("Content-Length", "")
            if declared.isascii() and declared.isdigit() and int(declared) != size:
                raise self._other_size(digest, size, rel, int(declared), part)
            if part.size:
                part.restart()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if part.size else os.O_TRUNC)
        fd = os.open(part.path, flags, 0o644)
        sink = _Sink(part, fd, threaded=size - part.size > THREADED_DOWNLOAD)
        received = part.size
        batch: list[bytes] = []
        batched = 0
        try:
            # read1: what the socket has (up to a batch) per call, so a cut connection loses nothing
            # that arrived before it.
            while chunk := response.read1(SINK_BATCH):
                received += len(chunk)
                if received > size:
                    raise _TooLong()
                batch.append(chunk)
                batched += len(chunk)
                if batched >= SINK_BATCH:
                    sink.put(batch)
                    batch, batched = [], 0
            if batch:
                sink.put(batch)
        except _TooLong:
            sink.close()
            part.restart()
            raise IntegrityError(f"{rel}: the server sent more than the {size} bytes blob {digest} has; "
                                 "nothing was kept") from None
        except BaseException:
            if batch and not sink.failed:
                sink.put(batch)  # keep every byte that arrived: a rerun resumes after it
            raise
        finally:
            try:
                sink.close()
            finally:
                os.close(fd)
        if part.size < size:
            raise _Retry(None)  # the server closed early: resume from here


class _TooLong(Exception):
    """The server sent more bytes than the manifest says the blob has."""


class _Sink:
    """Appends a download to its .part file and hashes it: each byte is copied once out of the socket, written
    once and hashed once.

    The receiving thread writes each batch itself (the pieces as they came off the socket, never joined into
    a copy; os.write releases the GIL, and a page-cache write costs a fraction of the hash), so what is on disk
    is always exactly what was received, and a write error surfaces at once. The sha256 — the costliest step —
    runs on a thread of its own for a large blob (hashlib releases the GIL on large updates: the two run on two
    cores), at most SINK_QUEUE batches behind, so memory stays bounded; a third thread flushes the file every
    SYNC_EVERY bytes so the fsync before the rename only waits for the tail. A small blob is hashed inline.
    Measured on 2 cores (bench/transfer.py): the hasher is the busy thread; the receiving one waits on it only
    when the hash is slower than the socket. `part.size` counts bytes written; the hash is complete after close().
    """

    def __init__(self, part: _Partial, fd: int, threaded: bool) -> None:
        self.part, self.fd, self.threaded = part, fd, threaded
        self.failed = False  # a write failed: nothing more is written or hashed
        self.closed = False
        self.unsynced = 0
        if threaded:
            self.to_hash: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=SINK_QUEUE)
            self.wake = threading.Event()
            self.threads = [threading.Thread(target=target, name=f"swiftreg-download-{name}", daemon=True)
                            for name, target in (("hasher", self._hash), ("flusher", self._flush))]
            for thread in self.threads:
                thread.start()

    def _hash(self) -> None:
        update = self.part.hasher.update
        while (pieces := self.to_hash.get()) is not None:
            for piece in pieces:
                update(piece)

    def _flush(self) -> None:
        while not self.closed:
            self.wake.wait()
            self.wake.clear()
            try:
                os.fdatasync(self.fd)
            except OSError:
                return

    def put(self, pieces: list[bytes]) -> None:
        """Write `pieces` (unbuffered: what is on disk is what a rerun resumes from), then hash them."""
        written: list[bytes] = []
        try:
            for piece in pieces:
                _write_all(self.fd, piece)
                self.part.size += len(piece)
                written.append(piece)
        except BaseException:
            self.failed = True
            raise
        finally:
            self._hash_later(written)  # what reached the file is hashed, so the hash matches the .part
        if self.threaded:
            self.unsynced += sum(len(p) for p in pieces)
            if self.unsynced >= SYNC_EVERY:
                self.unsynced = 0
                self.wake.set()

    def _hash_later(self, pieces: list[bytes]) -> None:
        if not pieces:
            return
        if self.threaded:
            self.to_hash.put(pieces)
        else:
            for piece in pieces:
                self.part.hasher.update(piece)

    def close(self) -> None:
        """Wait until everything handed over is hashed and the flusher has stopped."""
        if not self.closed:
            self.closed = True
            if self.threaded:
                self.to_hash.put(None)
                self.threads[0].join()
                self.wake.set()
                self.threads[1].join()


class _Short(Exception):
    """416: the server holds no byte of the blob from `start` on."""

    def __init__(self, start: int) -> None:
        self.start = start
        super().__init__(f"HTTP 416 for bytes {start}-")


class _Retry(Exception):
    """A download attempt that another try (from the .part's length) may complete."""

    def __init__(self, response: httpx.Response | None) -> None:
        self.response = response
        super().__init__(f"HTTP {response.status_code}" if response is not None else "connection closed early")
