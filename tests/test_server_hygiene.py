"""Connection hygiene of `swiftreg serve` (issue 14, item 8), over raw sockets against a real server:
slow heads and bodies and idle connections are cut after their (here small) timeouts, a write without a
known token is answered 401 before its body is read, the Host header is never echoed, and a request with
both Content-Length and Transfer-Encoding is refused with 400 and a closed connection.

Bounds on time are generous ("closed within 10 s" of a 1 s timeout): they tell a cut connection from
one held for ever, nothing finer.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from registry.client import RemoteRegistry
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.server import Server, running_server

pytestmark = pytest.mark.server

PUBLIC = "https://registry.example.test:8443"
#: Seconds a connection may take to be cut by a 1 s timeout before the test calls it held.
BOUND = 10.0
DIGEST = "sha256:" + "a" * 64


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with 1 s timeouts and a public URL, shared by the module (a start costs seconds)."""
    root = tmp_path_factory.mktemp("hygiene")
    with running_server(root / "home", f"sqlite:///{root / 'registry.db'}", extra_args=(
            "--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1",
            "--public-url", PUBLIC)) as srv:
        yield srv


class Wire:
    """One raw TCP connection to the server: bytes out, bytes in, and whether (and when) it was closed."""

    def __init__(self, server: Server) -> None:
        parts = urlsplit(server.url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=BOUND)
        self.opened = time.monotonic()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until_closed(self, limit: float = BOUND) -> tuple[bytes, bool, float]:
        """(everything received, whether the server closed the connection, seconds since it opened)."""
        received = b""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                return received, True, time.monotonic() - self.opened
            if not chunk:
                return received, True, time.monotonic() - self.opened
            received += chunk
        return received, False, time.monotonic() - self.opened

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response (head and a Content-Length body), read without waiting for the connection to close."""
        data = b""
        self.sock.settimeout(BOUND)
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, f"the connection closed before a response head: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = self.sock.recv(65536)
            assert chunk
            body += chunk
        return int(lines[0].split()[1]), headers, body

    def close(self) -> None:
        self.sock.close()


def _head(method: str, path: str, *lines: str) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: client.example\r\n" + "".join(f"{line}\r\n" for line in lines)
            + "\r\n").encode()


# ----- slow and idle clients ---------------------------------------------------------------------------------

def test_a_request_head_trickled_a_byte_at_a_time_is_cut_after_the_header_timeout(strict: Server) -> None:
    wire = Wire(strict)
    head = _head("GET", "/healthz")
    cut_after = None
    for i in range(len(head) - 2):  # never the final CRLF; a byte every 0.2 s keeps it "active"
        try:
            wire.send(head[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            cut_after = time.monotonic() - wire.opened
            break
        time.sleep(0.2)
        if i * 0.2 > BOUND:
            break
    if cut_after is None:
        _, closed, cut_after = wire.read_until_closed(1.0)
        assert closed, "a head sent a byte every 0.2 s was still open after 10 s"
    assert cut_after < BOUND
    wire.close()


def test_a_partial_head_and_a_silent_connection_are_closed(strict: Server) -> None:
    for start in (b"GET /healthz HTTP/1.1\r\nHo", b""):
        wire = Wire(strict)
        wire.send(start)
        received, closed, seconds = wire.read_until_closed()
        assert closed and received == b"" and seconds < BOUND, (start, received, seconds)
        wire.close()


def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_kept(strict: Server) -> None:
    wire = Wire(strict)
    for _ in range(3):  # one connection, several requests: keep-alive works
        wire.send(_head("GET", "/healthz/live"))
        status, headers, _ = wire.response()
        assert status == 200 and headers.get("connection") != "close"
        time.sleep(0.05)
    received, closed, _ = wire.read_until_closed()
    assert closed and received == b""
    wire.close()


def test_a_stalled_upload_body_is_cut_and_its_bytes_kept(strict: Server) -> None:
    wire = Wire(strict)
    wire.send(_head("PATCH", f"/api/v1/uploads/{DIGEST}", f"Authorization: Bearer {strict.write_token}",
                    "Upload-Offset: 0", "Upload-Length: 1000", "Content-Length: 1000") + b"x" * 300)
    received, closed, seconds = wire.read_until_closed()
    assert closed and seconds < BOUND, (received, seconds)
    assert received.startswith(b"HTTP/1.1 400") and b"connection: close" in received.lower()
    wire.close()
    head = httpx.head(f"{strict.url}/api/v1/uploads/{DIGEST}",
                      headers={"Authorization": f"Bearer {strict.write_token}"})
    assert head.headers["Upload-Offset"] == "300"  # a resumed upload goes on from there


def test_a_stalled_json_body_is_cut(strict: Server) -> None:
    wire = Wire(strict)
    wire.send(_head("POST", "/api/v1/blobs/missing", f"Authorization: Bearer {strict.write_token}",
                    "Content-Type: application/json", "Content-Length: 200") + b'{"digests": [')
    received, closed, seconds = wire.read_until_closed()
    assert closed and seconds < BOUND and received.startswith(b"HTTP/1.1 400"), (received, seconds)
    wire.close()


def test_a_body_read_to_its_end_keeps_the_connection(strict: Server) -> None:
    wire = Wire(strict)
    body = b'{"digests": ["%s"]}' % DIGEST.encode()
    for _ in range(2):
        wire.send(_head("POST", "/api/v1/blobs/missing", f"Authorization: Bearer {strict.write_token}",
                        "Content-Type: application/json", f"Content-Length: {len(body)}") + body)
        status, headers, answer = wire.response()
        assert status == 200 and headers.get("connection") != "close" and DIGEST.encode() in answer
    wire.close()


# ----- authentication before the body ------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("POST", "/api/v1/blobs/missing"), ("POST", "/api/v1/repos/team/x/revisions"),
    ("PUT", "/api/v1/repos/team/x/tags/v1"), ("POST", "/api/v1/jobs"), ("POST", "/api/v1/gc"),
    ("PATCH", f"/api/v1/uploads/{DIGEST}"),
])
@pytest.mark.parametrize("token", [None, "srg_not-a-token-of-this-server"], ids=["no-token", "unknown-token"])
def test_a_write_without_a_known_token_is_answered_401_before_its_body_is_sent(
        strict: Server, method: str, path: str, token: str | None) -> None:
    """The head announces 3 MiB (under every route's cap) and no byte of it is sent: the 401 arrives
    anyway, and the connection closes so no body bytes are taken for a next request."""
    wire = Wire(strict)
    auth = [f"Authorization: Bearer {token}"] if token else []
    wire.send(_head(method, path, *auth, "Content-Type: application/json", f"Content-Length: {3 << 20}",
                    "Upload-Offset: 0", f"Upload-Length: {3 << 20}"))
    received, closed, seconds = wire.read_until_closed()
    assert received.startswith(b"HTTP/1.1 401"), f"no 401 before the body within {seconds:.1f} s: {received[:200]!r}"
    assert b"www-authenticate: bearer" in received.lower() and closed
    wire.close()


# ----- Host ------------------------------------------------------------------------------------------------------

def _push_three_files(server: Server, tmp_path: Path) -> None:
    with RemoteRegistry(server.url, server.write_token, home=tmp_path / "client") as reg:
        reg.push(write_peft_lora(tmp_path / "adapter"), "team/hosted")


def _next_link(server: Server, host: str) -> str:
    r = httpx.get(f"{server.url}/api/models/team/hosted/tree/main?limit=1",
                  headers={"Host": host, "Authorization": f"Bearer {server.read_token}"})
    assert r.status_code == 200 and len(r.json()) == 1
    return r.links["next"]["url"]


def test_the_pagination_link_names_the_public_url_not_the_host_header(strict: Server, tmp_path: Path) -> None:
    _push_three_files(strict, tmp_path)
    link = _next_link(strict, "evil.example")
    assert link.startswith(f"{PUBLIC}/api/models/team/hosted/tree/main?") and "evil" not in link
    redirect = httpx.get(f"{strict.url}/api/v1/repos/", headers={"Host": "evil.example"})
    assert redirect.status_code == 307 and "evil" not in redirect.headers["location"]
    assert redirect.headers["location"].startswith(PUBLIC)


def test_without_a_public_url_links_name_the_address_the_connection_reached(tmp_path: Path) -> None:
    with running_server(tmp_path / "home", f"sqlite:///{tmp_path / 'registry.db'}") as server:
        _push_three_files(server, tmp_path)
        link = _next_link(server, "evil.example:666")
        assert link.startswith(f"{server.url}/api/models/team/hosted/tree/main?") and "evil" not in link
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.read_token}"}) as client:
            pages, url = 0, "/api/models/team/hosted/tree/main?limit=1"
            while url:  # the links are followed to the end, as huggingface_hub does
                r = client.get(url)
                pages += 1
                url = r.links.get("next", {}).get("url")
            assert pages == 3


def test_a_bad_public_url_is_refused_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "registry.cli", "serve", "--public-url", "https://x.example/prefix",
                           "--home", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--public-url" in done.stderr and "without a path" in done.stderr


# ----- Content-Length with Transfer-Encoding -----------------------------------------------------------------------

@pytest.mark.parametrize("authorized", [True, False], ids=["token", "no-token"])
def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(strict: Server,
                                                                                    authorized: bool) -> None:
    """A smuggling attempt: framed by Transfer-Encoding the body is empty and a second request follows;
    framed by Content-Length that request is body. The server answers one 400 and closes."""
    auth = [f"Authorization: Bearer {strict.admin_token}"] if authorized else []
    smuggled = _head("GET", "/healthz/live")
    wire = Wire(strict)
    wire.send(_head("POST", "/api/v1/blobs/missing", *auth, "Content-Type: application/json",
                    f"Content-Length: {5 + len(smuggled)}", "Transfer-Encoding: chunked") + b"0\r\n\r\n" + smuggled)
    received, closed, _ = wire.read_until_closed()
    assert received.startswith(b"HTTP/1.1 400") and received.count(b"HTTP/1.1 ") == 1, received
    assert b"connection: close" in received.lower() and closed
    wire.close()
