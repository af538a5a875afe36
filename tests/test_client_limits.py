"""Clients that give up (issue 14, item 6): every retry loop of RemoteRegistry is bounded in tries and in
time, a blob the server holds truncated or corrupt is an error naming it, and the server's final
refusals (507 insufficient_storage, 413 upload_quota) are not retried while 503 unavailable is, after its
Retry-After.

The misbehaving peers are real HTTP servers on 127.0.0.1: a real `swiftreg serve` whose stored blob was
truncated, and small http.server peers that truncate, cut, refuse or answer 503 for ever, counting the
requests they get. Each peer stops misbehaving after STOP requests (it answers a final 404), so a client
without bounds fails these tests instead of hanging them.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from registry.client import RemoteRegistry
from registry.errors import (
    InsufficientStorageError,
    IntegrityError,
    NotFoundError,
    RegistryError,
    RemoteError,
    ServerUnreachableError,
    UnavailableError,
    UploadQuotaError,
)
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.server import Server, registry_env

#: A misbehaving peer answers a final 404 from this request on: an unbounded client ends, and fails.
STOP = 300
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


# ----- a real HTTP peer that misbehaves on purpose -----------------------------------------------------------

@dataclass
class Peer:
    url: str
    #: (time, method, path, headers) of every request received
    requests: list[tuple[float, str, str, dict[str, str]]] = field(default_factory=list)

    def count(self, method: str | None = None, path: str = "") -> int:
        return sum(1 for _, m, p, _ in self.requests if (method is None or m == method) and p.startswith(path))


Answer = tuple[int, dict[str, str], bytes]
Behaviour = Callable[[str, str, dict[str, str], bytes, int], "Answer | Callable[[Any], None]"]


@contextmanager
def peer(behaviour: Behaviour) -> Iterator[Peer]:
    """An HTTP/1.1 server on 127.0.0.1: `behaviour(method, path, headers, body, n)` (n counts requests from 1)
    returns (status, headers, body), or a function that writes the answer itself to the handler."""
    state = Peer("")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                state.requests.append((time.monotonic(), self.command, self.path, headers))
                n = len(state.requests)
            if n >= STOP:
                answer: Any = _error(404, "not_found", "peer stopped")
            else:
                answer = behaviour(self.command, self.path, headers, body, n)
            if callable(answer):
                answer(self)
                return
            status, extra, content = answer
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            if "Content-Length" not in extra:
                self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        do_GET = do_HEAD = do_POST = do_PATCH = do_PUT = do_DELETE = _any  # noqa: N815 - http.server's naming

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _json(status: int, data: Any, **headers: str) -> Answer:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(data).encode()


def _error(status: int, code: str, message: str, **extra: Any) -> Answer:
    headers = {"Retry-After": str(extra["retry_after"])} if "retry_after" in extra else {}
    return _json(status, {"error": {"code": code, "message": message, **extra}}, **headers)


def _revision(digest: str, size: int) -> dict[str, Any]:
    """A refs answer naming one file, as `swiftreg serve` sends it."""
    manifest = {"files": [{"path": "adapter_model.safetensors", "size": size, "sha256": digest}]}
    return {"repo": "team/limits", "kind": "adapter", "number": 1, "digest": "sha256:" + "ab" * 32, "format": "peft",
            "created_at": "2026-01-01T00:00:00Z", "manifest": manifest, "files": manifest["files"]}


def _blob(seed: int, size: int = 200_000) -> tuple[bytes, str]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    data = data[:size]
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def _client(url: str, home: Path, **kwargs: Any) -> RemoteRegistry:
    return RemoteRegistry(url, "srg_test", home=home, backoff=0.01, **kwargs)


# ===== downloads ===============================================================================================

def test_a_truncated_blob_on_a_real_server_ends_swiftreg_pull_with_an_error_naming_it(fresh_server: Server,
                                                                                      tmp_path: Path) -> None:
    """The issue's case: `swiftreg pull` of a blob the server's store holds truncated made 991 requests in
    6 minutes. Now the pull ends at once, exit 1, naming the blob; the server counts the requests."""
    with RemoteRegistry(fresh_server.url, fresh_server.write_token, home=tmp_path / "pusher") as pusher:
        revision = pusher.push(write_peft_lora(tmp_path / "a", r=64, layers=4), "team/truncated").revision
    weights = next(f for f in revision.manifest["files"] if f["path"] == "adapter_model.safetensors")
    stored = fresh_server.home / "blobs" / "sha256" / weights["sha256"][7:9] / weights["sha256"][9:]
    assert stored.is_file() and stored.stat().st_size == weights["size"]
    with open(stored, "r+b") as f:
        f.truncate(weights["size"] // 2)

    admin = httpx.Client(base_url=fresh_server.url, headers={"Authorization": f"Bearer {fresh_server.admin_token}"})
    before = admin.get("/api/v1/stats").json()["requests"]
    env = {**registry_env(tmp_path / "puller", "sqlite:///unused.db"), "SWIFTREG_URL": fresh_server.url,
           "SWIFTREG_TOKEN": fresh_server.read_token}
    try:
        done = subprocess.run([sys.executable, "-m", "registry.cli", "pull", "team/truncated@1", "-o",
                               str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        made = admin.get("/api/v1/stats").json()["requests"] - before - 1
        pytest.fail(f"swiftreg pull of a truncated blob was still retrying after 90 s ({made} requests)")
    made = admin.get("/api/v1/stats").json()["requests"] - before - 1
    admin.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert weights["sha256"] in done.stderr, done.stderr
    assert made <= 6, f"{made} requests for a pull of one revision with one bad blob"
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "puller").rglob("*.part"))  # nothing kept of bytes that can never verify


def test_a_blob_cut_short_and_then_refused_with_416_is_an_error_not_a_restart(tmp_path: Path) -> None:
    """The loop behind the 991 requests: the server declares the whole blob, sends half and closes; asked
    for the rest it answers 416 (it holds no more). A restart can only end the same way: an error."""
    data, digest = _blob(1)
    held = data[: len(data) // 2]

    def behaviour(method: str, path: str, headers: dict[str, str], body: bytes, n: int) -> Any:
        if "/refs/" in path:
            return _json(200, _revision(digest, len(data)))
        start = int(re.fullmatch(r"bytes=(\d+)-", headers["range"]).group(1)) if "range" in headers else 0  # type: ignore[union-attr]
        if start >= len(held):
            return 416, {"Content-Range": f"bytes */{len(held)}"}, b""

        def cut(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(206 if start else 200)
            handler.send_header("Content-Length", str(len(data) - start))
            if start:
                handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            handler.end_headers()
            handler.wfile.write(held[start:])
            handler.close_connection = True
        return cut

    with peer(behaviour) as p, _client(p.url, tmp_path / "c") as reg:
        with pytest.raises(IntegrityError) as caught:
            reg.pull("team/limits@1", tmp_path / "out")
        assert digest in str(caught.value) and "adapter_model.safetensors" in str(caught.value)
        assert p.count("GET", "/api/v1/blobs/") == 2  # the cut answer, then the 416
    assert not list((tmp_path / "c").rglob("*.part"))


def test_a_blob_served_with_another_size_or_other_bytes_is_an_error_after_one_request(tmp_path: Path) -> None:
    data, digest = _blob(2)
    for served in (data[:150_000], data[:-1] + b"\0"):  # truncated (a smaller Content-Length), corrupt

        def behaviour(method: str, path: str, headers: dict[str, str], body: bytes, n: int,
                      served: bytes = served) -> Answer:
            if "/refs/" in path:
                return _json(200, _revision(digest, len(data)))
            return 200, {}, served

        with peer(behaviour) as p, _client(p.url, tmp_path / f"c{len(served)}") as reg:
            with pytest.raises(IntegrityError, match=digest):
                reg.pull("team/limits@1", tmp_path / "out")
            assert p.count("GET", "/api/v1/blobs/") == 1


def test_a_server_that_trickles_a_few_new_bytes_per_answer_is_given_up(tmp_path: Path) -> None:
    """Progress on every try used to reset the count for ever: now a blob gets MAX_TRANSFER_TRIES tries in all."""
    data, digest = _blob(3)

    def behaviour(method: str, path: str, headers: dict[str, str], body: bytes, n: int) -> Any:
        if "/refs/" in path:
            return _json(200, _revision(digest, len(data)))
        start = int(re.fullmatch(r"bytes=(\d+)-", headers["range"]).group(1)) if "range" in headers else 0  # type: ignore[union-attr]

        def trickle(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(206 if start else 200)
            handler.send_header("Content-Length", str(len(data) - start))
            if start:
                handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            handler.end_headers()
            handler.wfile.write(data[start:start + 100])  # 100 new bytes, then the connection ends
            handler.close_connection = True
        return trickle

    with peer(behaviour) as p, _client(p.url, tmp_path / "c") as reg:
        with pytest.raises(ServerUnreachableError) as caught:
            reg.pull("team/limits@1", tmp_path / "out")
        from registry.client.transport import MAX_TRANSFER_TRIES

        assert p.count("GET", "/api/v1/blobs/") == MAX_TRANSFER_TRIES < STOP - 10
        message = str(caught.value)
        assert digest in message and "adapter_model.safetensors" in message and "run the command again" in message
    part = tmp_path / "c" / "remote" / f"127.0.0.1_{p.url.rsplit(':', 1)[1]}" / "downloads" / f"{digest[7:]}.part"
    assert part.read_bytes() == data[:100 * MAX_TRANSFER_TRIES]  # kept: a rerun resumes after them


# ===== uploads =================================================================================================

def _push_peer(fail_patch: Callable[[int, int, int], Answer | None]) -> Behaviour:
    """A server for push: the repository is new, every blob is missing, small blobs upload, and the PATCHes
    of the largest one are answered by `fail_patch(offset, length, size)` when it returns an answer."""
    held: dict[str, int] = {}

    def behaviour(method: str, path: str, headers: dict[str, str], body: bytes, n: int) -> Answer:
        if method == "GET" and "/refs/" in path:
            return _error(404, "not_found", "no such adapter")
        if method == "POST" and path == "/api/v1/blobs/missing":
            return _json(200, {"missing": json.loads(body)["digests"]})
        digest = path.rsplit("/", 1)[1]
        if method == "HEAD":
            return 200, {"Upload-Offset": str(held.get(digest, 0)), "Upload-Complete": "false"}, b""
        if method == "PATCH":
            offset, size = int(headers["upload-offset"]), int(headers["upload-length"])
            refused = fail_patch(offset, len(body), size) if size > 10_000 else None
            if refused is not None:
                held.pop(digest, None)  # the server dropped what it held (a full disk's cleanup)
                return refused
            held[digest] = offset + len(body)
            if held[digest] == size:
                return _json(201, {"digest": digest, "size": size}, **{"Upload-Offset": str(size)})
            return 204, {"Upload-Offset": str(held[digest])}, b""
        return _error(400, "bad_request", f"unexpected {method} {path}")
    return behaviour


def test_a_push_whose_last_chunk_keeps_failing_is_bounded(tmp_path: Path) -> None:
    """The issue's case: the disk holds the upload once but not twice, the last PATCH fails and the server
    drops the partial; the client re-uploaded the blob 712 times in 10 minutes. Re-sending bytes the
    server had already held is no progress: the push ends after `retries` re-uploads."""
    folder = write_peft_lora(tmp_path / "a", r=64, layers=4)
    size = (folder / "adapter_model.safetensors").stat().st_size

    def last_chunk_fails(offset: int, length: int, total: int) -> Answer | None:
        return (500, {"Content-Type": "text/plain"}, b"Internal Server Error") if offset + length == total else None

    with peer(_push_peer(last_chunk_fails)) as p, _client(p.url, tmp_path / "c", retries=3,
                                                           chunk_size=size // 3 + 1) as reg:
        with pytest.raises(RemoteError) as caught:
            reg.push(folder, "team/limits")
        assert "gave up after 4 attempts" in str(caught.value)
        large = [h for _, m, _, h in p.requests if m == "PATCH" and int(h["upload-length"]) > 10_000]
        assert len(large) == 4 * 3  # the first upload and 3 retries, three chunks each


@pytest.mark.parametrize("refusal", [
    _error(507, "insufficient_storage", "the disk of the blob store is full", writing="blob upload"),
    _error(413, "upload_quota", "unfinished uploads of namespace team would exceed 1 GiB", offset=0),
], ids=["507-insufficient_storage", "413-upload_quota"])
def test_a_full_disk_or_an_upload_quota_is_final(tmp_path: Path, refusal: Answer) -> None:
    folder = write_peft_lora(tmp_path / "a", r=64, layers=4)
    with peer(_push_peer(lambda offset, length, total: refusal)) as p, _client(p.url, tmp_path / "c") as reg:
        with pytest.raises((InsufficientStorageError, UploadQuotaError)) as caught:
            reg.push(folder, "team/limits")
        assert caught.value.status == refusal[0]
        large = [h for _, m, _, h in p.requests if m == "PATCH" and int(h["upload-length"]) > 10_000]
        assert len(large) == 1


# ===== 503 unavailable, Retry-After, the budget's clock ===========================================================

def test_503_unavailable_is_retried_after_its_retry_after_then_given_up(tmp_path: Path) -> None:
    down = _error(503, "unavailable", "the database does not answer", dependency="database", retry_after=1)
    with peer(lambda *a: down) as p, _client(p.url, tmp_path / "c", retries=2) as reg:
        with pytest.raises(UnavailableError) as caught:
            reg.list()
        assert caught.value.dependency == "database" and "gave up after 3 attempts" in str(caught.value)
        times = [t for t, *_ in p.requests]
        assert len(times) == 3 and all(b - a >= 0.9 for a, b in zip(times, times[1:]))  # waited as asked


def test_503_unavailable_retries_a_post_too_since_the_server_changed_nothing(tmp_path: Path) -> None:
    down = _error(503, "unavailable", "the database does not answer", dependency="database", retry_after=0)
    gc = _json(200, {"blobs_removed": 0, "bytes_removed": 0})
    with peer(lambda method, path, h, b, n: down if n <= 2 else gc) as p, _client(p.url, tmp_path / "c") as reg:
        reg.gc()
        assert [m for _, m, *_ in p.requests] == ["POST"] * 3


def test_a_retry_after_beyond_the_time_budget_gives_up_at_once(tmp_path: Path) -> None:
    down = _error(503, "unavailable", "the store is being moved", dependency="store", retry_after=3600)
    with peer(lambda *a: down) as p, _client(p.url, tmp_path / "c", retries=10, retry_seconds=5) as reg:
        with pytest.raises(UnavailableError):
            reg.list()
        assert p.count() == 1


def test_the_time_budget_ends_retries_that_the_count_would_allow(tmp_path: Path) -> None:
    crash = (502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>")
    with peer(lambda *a: crash) as p, RemoteRegistry(p.url, "t", home=tmp_path / "c", backoff=0.2, retries=1000,
                                                     retry_seconds=3) as reg:
        with pytest.raises(ServerUnreachableError, match=r"after \d+ attempts in"):
            reg.list()
        assert 2 <= p.count() < 20


def test_the_limits_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crash = (502, {}, b"")
    monkeypatch.setenv("SWIFTREG_RETRIES", "1")
    monkeypatch.setenv("SWIFTREG_RETRY_SECONDS", "30")
    with peer(lambda *a: crash) as p, RemoteRegistry(p.url, "t", home=tmp_path / "c", backoff=0.01) as reg:
        with pytest.raises(ServerUnreachableError, match="after 2 attempts"):
            reg.list()
        assert p.count() == 2
    monkeypatch.setenv("SWIFTREG_RETRIES", "many")
    with pytest.raises(RegistryError, match="SWIFTREG_RETRIES='many'"):
        RemoteRegistry("http://127.0.0.1:1", "t", home=tmp_path / "d")


def test_a_not_found_stays_final(tmp_path: Path) -> None:
    with peer(lambda *a: _error(404, "not_found", "no such adapter")) as p, _client(p.url, tmp_path / "c") as reg:
        with pytest.raises(NotFoundError):
            reg.show("team/limits@1")
        assert p.count() == 1
