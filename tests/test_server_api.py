"""The /api/v1 protocol over real HTTP (a `swiftreg serve` subprocess), on SQLite and PostgreSQL.

Everything goes through raw httpx requests (or a raw socket where httpx would tidy the request),
so these tests pin the wire protocol itself, not a client library's view of it.
"""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.api_v1 import (
    API,
    TIMEOUT,
    assert_error,
    checkpoint_files,
    client,
    manifest_of,
    push_folder,
    sha256,
    upload,
)
from tests.helpers.server import Server

pytestmark = pytest.mark.server

# ----- the push flow -----------------------------------------------------------------------------------------

def test_push_flow_upload_commit_resolve_download(server: Server, tmp_path: Path) -> None:
    folder = write_peft_lora(tmp_path / "ckpt", seed=101)
    files = checkpoint_files(folder)
    with client(server, server.write_token) as http:
        r = http.post(f"{API}/blobs/missing", json={"digests": [f["sha256"] for f in files]})
        assert r.status_code == 200 and r.json()["missing"] == [f["sha256"] for f in files]
        for f in files:
            done = upload(http, f["data"], f["sha256"], pieces=3)
            assert done.status_code == 201, done.text
            assert done.json() == {"digest": f["sha256"], "size": f["size"]}
        assert http.post(f"{API}/blobs/missing", json={"digests": [f["sha256"] for f in files]}).json() == {
            "missing": []}

        r = http.post(f"{API}/repos/flow/adapter/revisions",
                      json={"manifest": manifest_of(files), "tag": "v1", "message": "first"})
        assert r.status_code == 201, r.text
        pushed = r.json()
        assert pushed["created"] is True and isinstance(pushed["notices"], list)
        rev = pushed["revision"]
        assert rev["repo"] == "flow/adapter" and rev["number"] == 1 and rev["tags"] == ["v1"]
        assert rev["branches"] == ["main"] and rev["format"] == "peft" and rev["message"] == "first"
        assert rev["author"]  # the token's owner, not the server process's user by accident
        assert rev["manifest"] == manifest_of(files)

        digest = rev["digest"]
        for ref in ("v1", "main", "1", digest, digest[:19], digest.replace(":", "%3A"),
                    digest[:19].replace(":", "%3a")):
            r = http.get(f"{API}/repos/flow/adapter/refs/{ref}")
            assert r.status_code == 200, (ref, r.text)
            assert r.json()["number"] == 1 and r.json()["files"] == manifest_of(files)["files"]

        # Another format: derived once on the server, its blobs stored and downloadable.
        r = http.get(f"{API}/repos/flow/adapter/refs/v1", params={"format": "swift"})
        assert r.status_code == 200, r.text
        swift_files = r.json()["files"]
        assert r.json()["format"] == "peft" and {f["path"] for f in swift_files} != {f["path"] for f in files}
        assert any(f["path"].endswith("adapter_model.safetensors") and "/" in f["path"] for f in swift_files)
        for f in swift_files:
            blob = http.get(f"{API}/blobs/{f['sha256']}")
            assert blob.status_code == 200 and sha256(blob.content) == f["sha256"] and len(blob.content) == f["size"]
        assert http.get(f"{API}/repos/flow/adapter/refs/v1", params={"format": "swift"}).json()["files"] == swift_files

        # Blobs: whole, and ranged.
        big = max(files, key=lambda f: f["size"])
        r = http.get(f"{API}/blobs/{big['sha256']}")
        assert r.status_code == 200 and r.content == big["data"]
        assert r.headers["etag"] == f'"{big["sha256"]}"' and r.headers["accept-ranges"] == "bytes"
        n = big["size"] // 3
        r = http.get(f"{API}/blobs/{big['sha256']}", headers={"Range": f"bytes={n}-"})
        assert r.status_code == 206 and r.content == big["data"][n:]
        assert r.headers["content-range"] == f"bytes {n}-{big['size'] - 1}/{big['size']}"
        r = http.get(f"{API}/blobs/{big['sha256']}", headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and r.content == big["data"][:10]
        r = http.get(f"{API}/blobs/{big['sha256']}", headers={"Range": f"bytes={big['size'] + 10}-"})
        assert r.status_code == 416
        assert_error(http.get(f"{API}/blobs/{sha256(b'never uploaded')}"), 404, "blob_not_found")
        assert_error(http.get(f"{API}/blobs/sha256:ABC"), 400, "invalid_digest")


def test_list_log_and_show(server: Server, tmp_path: Path) -> None:
    with client(server, server.write_token) as http:
        for seed in (201, 202):
            r = push_folder(http, "listing/lora", write_peft_lora(tmp_path / str(seed), seed=seed))
            assert r.status_code == 201, r.text
        r = http.get(f"{API}/repos", params={"namespace": "listing"})
        assert r.status_code == 200
        (repo,) = r.json()
        assert repo["repo"] == "listing/lora" and repo["kind"] == "adapter" and repo["revisions"] == 2
        assert repo["main"] == 2 and repo["tuner_type"] == "LORA"
        assert "listing/lora" in {x["repo"] for x in http.get(f"{API}/repos").json()}
        assert http.get(f"{API}/repos", params={"namespace": "nobody-here"}).json() == []

        r = http.get(f"{API}/repos/listing/lora/revisions")
        assert r.status_code == 200
        log = r.json()
        assert [x["number"] for x in log] == [2, 1] and all("manifest" not in x for x in log)
        assert log[0]["branches"] == ["main"] and log[1]["branches"] == []

        assert http.get(f"{API}/repos/listing/lora/refs/main").json()["number"] == 2
        assert_error(http.get(f"{API}/repos/listing/lora/refs/7"), 404, "not_found")
        assert_error(http.get(f"{API}/repos/listing/absent/revisions"), 404, "not_found")
        assert_error(http.get(f"{API}/repos/listing/lora/refs/main", params={"format": "onnx"}), 422)


def test_tags_put_delete_and_rm(server: Server, tmp_path: Path) -> None:
    with client(server, server.write_token) as http:
        for seed in (301, 302):
            assert push_folder(http, "tags/lora", write_peft_lora(tmp_path / str(seed), seed=seed),
                               tag=f"v{seed - 300}").status_code == 201
        r = http.put(f"{API}/repos/tags/lora/tags/prod", json={"ref": "1"})
        assert r.status_code == 200 and r.json()["number"] == 1 and "prod" in r.json()["tags"]
        assert_error(http.put(f"{API}/repos/tags/lora/tags/prod", json={"ref": "v2"}), 409, "ref_exists")
        r = http.put(f"{API}/repos/tags/lora/tags/prod", json={"ref": "v2", "force": True})
        assert r.status_code == 200 and r.json()["number"] == 2 and r.json()["tags"] == ["prod", "v2"]
        assert_error(http.put(f"{API}/repos/tags/lora/tags/7", json={"ref": "1"}), 400, "invalid_id")

        assert http.delete(f"{API}/repos/tags/lora/tags/prod").status_code == 204
        assert_error(http.get(f"{API}/repos/tags/lora/refs/prod"), 404)
        assert_error(http.delete(f"{API}/repos/tags/lora/tags/prod"), 404)
        assert_error(http.delete(f"{API}/repos/tags/lora/tags/main"), 400)  # a branch, not a tag

        assert http.delete(f"{API}/repos/tags/lora/refs/v1").status_code == 204
        assert_error(http.get(f"{API}/repos/tags/lora/refs/v1"), 404)
        assert_error(http.delete(f"{API}/repos/tags/lora/refs/main"), 400)  # needs force
        assert_error(http.delete(f"{API}/repos/tags/lora/refs/2"), 400)     # revisions are immutable
        assert http.delete(f"{API}/repos/tags/lora/refs/main", params={"force": "true"}).status_code == 204
        assert_error(http.get(f"{API}/repos/tags/lora/refs/main"), 404)
        assert [x["number"] for x in http.get(f"{API}/repos/tags/lora/revisions").json()] == [2, 1]


def test_recommit_of_identical_manifest_is_200_not_created(server: Server, tmp_path: Path) -> None:
    folder = write_peft_lora(tmp_path / "same", seed=401)
    with client(server, server.write_token) as http:
        first = push_folder(http, "same/lora", folder)
        assert first.status_code == 201 and first.json()["created"] is True
        again = push_folder(http, "same/lora", folder, tag="v1")
        assert again.status_code == 200, again.text
        assert again.json()["created"] is False and again.json()["revision"]["number"] == 1
        assert again.json()["revision"]["tags"] == ["v1"]
        assert len(http.get(f"{API}/repos/same/lora/revisions").json()) == 1


def test_commit_naming_a_missing_blob_is_409_listing_it(server: Server, tmp_path: Path) -> None:
    files = checkpoint_files(write_peft_lora(tmp_path / "partial", seed=501))
    with client(server, server.write_token) as http:
        for f in files[1:]:
            assert upload(http, f["data"]).status_code == 201
        r = http.post(f"{API}/repos/missing/lora/revisions", json={"manifest": manifest_of(files)})
        error = assert_error(r, 409, "blobs_missing")
        assert error["missing"] == [files[0]["sha256"]]
        assert_error(http.get(f"{API}/repos/missing/lora/revisions"), 404)  # nothing was committed


def test_upload_resumes_after_a_dropped_connection(server: Server) -> None:
    data = hashlib.sha256(b"resume").digest() * 40_000  # 1.28 MB
    digest, half = sha256(data), len(data) // 2
    parts = urlsplit(server.url)
    with client(server, server.write_token) as http:
        sock = socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT)
        sock.sendall((f"PATCH {API}/uploads/{digest} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                      f"Authorization: Bearer {server.write_token}\r\nUpload-Offset: 0\r\n"
                      f"Upload-Length: {len(data)}\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data[:half])
        # The server writes what arrives as it arrives: wait (bounded) until HEAD shows all of it held.
        deadline = time.monotonic() + TIMEOUT
        while True:
            head = http.head(f"{API}/uploads/{digest}")
            assert head.status_code == 200 and head.headers["Upload-Complete"] == "false"
            if int(head.headers["Upload-Offset"]) == half:
                break
            assert time.monotonic() < deadline, f"server holds {head.headers['Upload-Offset']} of {half} bytes"
            time.sleep(0.05)
        sock.close()  # the connection drops mid-body
        assert http.head(f"{API}/uploads/{digest}").headers["Upload-Offset"] == str(half)

        r = http.patch(f"{API}/uploads/{digest}", content=data[half:],
                       headers={"Upload-Offset": str(half), "Upload-Length": str(len(data))})
        assert r.status_code == 201, r.text
        assert r.json() == {"digest": digest, "size": len(data)}
        head = http.head(f"{API}/uploads/{digest}")
        assert head.headers["Upload-Complete"] == "true" and head.headers["Upload-Offset"] == str(len(data))
        assert http.get(f"{API}/blobs/{digest}").content == data


def test_offset_mismatch_is_409_with_the_server_offset(server: Server) -> None:
    data = b"offset mismatch test " * 100
    digest = sha256(data)
    with client(server, server.write_token) as http:
        def patch(offset: int, part: bytes) -> httpx.Response:
            return http.patch(f"{API}/uploads/{digest}", content=part,
                              headers={"Upload-Offset": str(offset), "Upload-Length": str(len(data))})

        assert patch(0, data[:100]).status_code == 204
        for wrong in (0, 50, 150):
            error = assert_error(patch(wrong, data[wrong:wrong + 10]), 409, "offset_mismatch")
            assert error["offset"] == 100
        assert_error(patch(100, data[100:] + b"extra"), 400)  # more than Upload-Length
        assert http.head(f"{API}/uploads/{digest}").headers["Upload-Offset"] == "100"
        assert patch(100, data[100:]).status_code == 201
        assert patch(0, data).status_code == 201  # already stored: complete at once
        assert http.get(f"{API}/blobs/{digest}").content == data


def test_concurrent_patches_of_one_blob_never_corrupt_it(server: Server) -> None:
    data = hashlib.sha256(b"concurrent").digest() * 64_000  # 2 MB
    digest = sha256(data)
    results: list[int] = []

    def send() -> None:
        with client(server, server.write_token) as http:
            r = http.patch(f"{API}/uploads/{digest}", content=data,
                           headers={"Upload-Offset": "0", "Upload-Length": str(len(data))})
            results.append(r.status_code)
            assert "Traceback" not in r.text

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(results) == 4 and set(results) <= {201, 409} and 201 in results, results
    with client(server, server.read_token) as http:
        assert http.get(f"{API}/blobs/{digest}").content == data
    assert not (server.home / "blobs" / "uploads" / f"{digest[7:]}.partial").exists()


def test_gc_as_admin_removes_unreferenced_blobs_and_stale_partials(server: Server, tmp_path: Path) -> None:
    kept_folder = write_peft_lora(tmp_path / "kept", seed=601)
    orphan = b"nobody references this blob"
    stale = b"an upload abandoned halfway" * 10
    with client(server, server.write_token) as http:
        assert push_folder(http, "gc/kept", kept_folder).status_code == 201
        assert upload(http, orphan).status_code == 201
        assert http.patch(f"{API}/uploads/{sha256(stale)}", content=stale[:20],
                          headers={"Upload-Offset": "0", "Upload-Length": str(len(stale))}).status_code == 204
        assert_error(http.post(f"{API}/gc", json={"grace_seconds": 0}), 403, "forbidden")
    with client(server, server.admin_token) as admin:
        r = admin.post(f"{API}/gc", json={"grace_seconds": 0, "dry_run": True})
        assert r.status_code == 200 and r.json()["blobs_removed"] >= 1 and r.json()["partial_uploads_removed"] >= 1
        assert admin.head(f"{API}/uploads/{sha256(orphan)}").headers["Upload-Complete"] == "true"
        assert admin.head(f"{API}/uploads/{sha256(stale)}").headers["Upload-Offset"] == "20"

        r = admin.post(f"{API}/gc", json={"grace_seconds": 0})
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["blobs_removed"] >= 1 and result["partial_uploads_removed"] >= 1 and result["blobs_kept"] >= 3
        assert admin.head(f"{API}/uploads/{sha256(orphan)}").headers["Upload-Complete"] == "false"
        assert admin.head(f"{API}/uploads/{sha256(stale)}").headers["Upload-Offset"] == "0"
        for f in checkpoint_files(kept_folder):  # referenced blobs survive
            assert admin.get(f"{API}/blobs/{f['sha256']}").content == f["data"]
        assert admin.post(f"{API}/gc").status_code == 200  # no body: the default grace

        stats = admin.get(f"{API}/stats")
        assert stats.status_code == 200
        assert stats.json()["bytes_received"] > 0 and stats.json()["blobs_stored"] >= 4
        assert stats.json()["requests"] > 0 and stats.json()["uploads_in_progress"] == 0


def test_openapi_document_lists_every_route(server: Server) -> None:
    r = httpx.get(server.url + f"{API}/openapi.json", timeout=TIMEOUT)
    assert r.status_code == 200
    doc = r.json()
    paths = doc["paths"]
    expected = {
        f"{API}/repos": {"get"},
        f"{API}/repos/{{ns}}/{{name}}/revisions": {"get", "post"},
        f"{API}/repos/{{ns}}/{{name}}/refs/{{ref}}": {"get", "delete"},
        f"{API}/blobs/missing": {"post"},
        f"{API}/uploads/{{digest}}": {"head", "patch"},
        f"{API}/blobs/{{digest}}": {"get"},
        f"{API}/repos/{{ns}}/{{name}}/tags/{{tag}}": {"put", "delete"},
        f"{API}/gc": {"post"},
        f"{API}/stats": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
        for method in methods:
            assert paths[path][method].get("summary"), (path, method)
    assert "RevisionFilesOut" in doc["components"]["schemas"] and "ErrorOut" in doc["components"]["schemas"]
    push = paths[f"{API}/repos/{{ns}}/{{name}}/revisions"]["post"]
    assert {"200", "201", "409", "413"} <= set(push["responses"])
    json.dumps(doc)  # serialisable as published
