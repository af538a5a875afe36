"""The /api/v1 wire protocol spoken with raw httpx (or a raw socket where httpx would tidy the request).

Shared by tests/test_server_api.py, test_server_security.py and test_server_ops.py: they pin the
protocol itself, not a client library's view of it.
"""
from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.helpers.server import Server

API = "/api/v1"
TIMEOUT = 120.0  # generous: a loaded 2-core machine runs the server and the tests side by side


def client(server: Server, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=TIMEOUT)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def checkpoint_files(folder: Path) -> list[dict[str, Any]]:
    """path, size, sha256 and the bytes of every file in a checkpoint folder."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            out.append({"path": p.relative_to(folder).as_posix(), "size": len(data), "sha256": sha256(data),
                        "data": data})
    return out


def manifest_of(files: list[dict[str, Any]]) -> dict[str, Any]:
    return {"files": [{k: f[k] for k in ("path", "size", "sha256")} for f in files]}


def upload(http: httpx.Client, data: bytes, digest: str | None = None, pieces: int = 2) -> httpx.Response:
    """PATCH `data` in `pieces` requests; every intermediate answer must be 204 with the new offset."""
    digest = digest or sha256(data)
    step = max(1, -(-len(data) // pieces))
    offset = 0
    while True:
        part = data[offset:offset + step]
        r = http.patch(f"{API}/uploads/{digest}", content=part,
                       headers={"Upload-Offset": str(offset), "Upload-Length": str(len(data))})
        offset += len(part)
        if offset >= len(data) or r.status_code != 204:
            return r
        assert r.headers["Upload-Offset"] == str(offset), r.text


def push_folder(http: httpx.Client, repo: str, folder: Path, **fields: Any) -> httpx.Response:
    """The whole push protocol: ask what is missing, upload it, commit the manifest."""
    files = checkpoint_files(folder)
    r = http.post(f"{API}/blobs/missing", json={"digests": [f["sha256"] for f in files]})
    assert r.status_code == 200, r.text
    missing = set(r.json()["missing"])
    for f in files:
        if f["sha256"] in missing:
            done = upload(http, f["data"], f["sha256"])
            assert done.status_code == 201, done.text
            missing.discard(f["sha256"])
    return http.post(f"{API}/repos/{repo}/revisions", json={"manifest": manifest_of(files), **fields})


def assert_error(r: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    """An error answer in the protocol's shape: JSON {"error": {"code", "message"}}, no traceback."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, f"{r.status_code} not in {statuses}: {r.text[:500]}"
    assert "Traceback" not in r.text
    if r.request.method == "HEAD":
        return {}
    body = r.json()
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def raw_http(url: str, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"",
             timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
    """One request over a bare socket, exactly as written (httpx would normalise `..` and escapes)."""
    parts = urlsplit(url)
    headers = {"Host": parts.netloc, "Connection": "close", **(headers or {})}
    if body and "Content-Length" not in headers:
        headers["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode("latin-1") + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed early; its answer is still readable
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    header_block, _, payload = received.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = (line.split(":", 1) for line in lines[1:] if ":" in line)
    response_headers = {k.strip().lower(): v.strip() for k, v in fields}
    return status, response_headers, payload
