"""Operating `swiftreg serve`: structured access logs and graceful shutdown, on a real server."""
from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.api_v1 import API, TIMEOUT, checkpoint_files, client, push_folder
from tests.helpers.server import running_server

pytestmark = pytest.mark.server


def _log_lines(home: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for log in home.parent.glob("server-*.log"):
        for line in log.read_text().splitlines():
            if line.strip():
                lines.append(json.loads(line))  # every line of the server's output is one JSON object
    return lines


def test_access_log_is_one_json_object_per_request_with_bytes_and_caller(tmp_path: Path) -> None:
    home = tmp_path / "srv" / "home"
    home.parent.mkdir()  # running_server logs beside the home when that folder exists
    folder = write_peft_lora(tmp_path / "ckpt", seed=31)
    with running_server(home, f"sqlite:///{tmp_path / 'srv' / 'registry.db'}",
                        extra_args=("--log-level", "info")) as srv:
        with client(srv, srv.write_token) as http:
            assert push_folder(http, "ops/logged", folder, tag="v1").status_code == 201
            weights = max(checkpoint_files(folder), key=lambda f: f["size"])
            got = http.get(f"{API}/blobs/{weights['sha256']}", headers={"X-Request-Id": "ticket-4711"})
            assert got.status_code == 200 and got.headers["x-request-id"] == "ticket-4711"
            missing = http.get(f"{API}/repos/ops/absent/revisions")
            assert missing.status_code == 404
            generated = missing.headers["x-request-id"]
        assert httpx.get(f"{srv.url}{API}/repos", timeout=TIMEOUT).status_code == 401
    lines = _log_lines(home)
    access = [line for line in lines if "request_id" in line]
    blob = next(line for line in access if line["request_id"] == "ticket-4711")
    assert blob["method"] == "GET" and blob["path"] == f"{API}/blobs/{weights['sha256']}"
    assert blob["status"] == 200 and blob["bytes"] == weights["size"] and "aborted" not in blob
    assert isinstance(blob["token_id"], int) and blob["owner"] and blob["duration_ms"] >= 0
    absent = next(line for line in access if line["request_id"] == generated)
    assert absent["status"] == 404 and absent["bytes"] > 0
    anonymous = [line for line in access if line["path"] == f"{API}/repos" and line["status"] == 401]
    assert anonymous and anonymous[0]["token_id"] is None
    assert all("srg_" not in json.dumps(line) for line in lines)  # no secret in any log line
    assert any(line.get("logger", "").startswith("uvicorn") for line in lines)  # uvicorn's own lines are JSON too


def test_sigterm_lets_an_upload_in_flight_finish_and_refuses_new_work(tmp_path: Path) -> None:
    """Graceful shutdown: the PATCH being received completes and is stored verified; nothing half-done stays."""
    payload = bytes(range(256)) * (16 << 10)  # 4 MiB, sent slowly in 64 pieces
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    home = tmp_path / "srv" / "home"
    url = f"sqlite:///{tmp_path / 'srv' / 'registry.db'}"
    result: dict[str, Any] = {}
    halfway = threading.Event()

    def slow_body() -> Iterator[bytes]:
        step = len(payload) // 64
        for i in range(64):
            if i == 32:
                halfway.set()
            time.sleep(0.03)
            yield payload[i * step:(i + 1) * step]

    with running_server(home, url) as srv:
        def upload() -> None:
            with client(srv, srv.write_token) as http:
                result["response"] = http.patch(f"{API}/uploads/{digest}", content=slow_body(), headers={
                    "Upload-Offset": "0", "Upload-Length": str(len(payload)),
                    "Content-Type": "application/octet-stream"})

        thread = threading.Thread(target=upload)
        thread.start()
        assert halfway.wait(30)
        srv.process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert srv.process.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
        response = result["response"]
        assert response.status_code == 201, response.text
        assert response.json() == {"digest": digest, "size": len(payload)}
        try:
            httpx.get(f"{srv.url}/healthz", timeout=2)
            raise AssertionError("the server still answered after shutting down")
        except httpx.TransportError:
            pass
    stored = home / "blobs" / "sha256" / digest[7:9] / digest[9:]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest[7:]
    uploads = home / "blobs" / "uploads"
    assert not list(uploads.rglob("*.partial"))  # no partial left behind (uploads/<owner>/, issue 14)
