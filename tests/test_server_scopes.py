"""Scopes that stay in their namespace (issue 14, item 4 and its Low items): a real `swiftreg serve` on
SQLite and PostgreSQL.

- M1: an admin token limited to a namespace cannot run the store-wide gc (which, with grace 0, deleted
  another namespace's uploaded, uncommitted blobs) and its stats cover its namespaces only.
- An upload in progress belongs to the token's namespaces: another namespace neither sees it, nor
  completes it with the tail bytes (and then reads back a head it never sent); it starts its own.
- Job idempotency keys are per namespace: another namespace may use the same key, and a conflict
  never names another namespace's job.
- With --anonymous-read, a token limited to other namespaces reads what no token reads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.api_v1 import API, assert_error, checkpoint_files, client, manifest_of, push_folder, sha256, upload
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.server import Server, running_server

pytestmark = pytest.mark.server


def _patch(http: Any, data: bytes, start: int, end: int, digest: str | None = None) -> Any:
    """PATCH bytes [start, end) of `data` as one request."""
    return http.patch(f"{API}/uploads/{digest or sha256(data)}", content=data[start:end],
                      headers={"Upload-Offset": str(start), "Upload-Length": str(len(data))})


def _head(http: Any, digest: str) -> tuple[int, str]:
    r = http.head(f"{API}/uploads/{digest}")
    assert r.status_code == 200, r.status_code
    return int(r.headers["Upload-Offset"]), r.headers["Upload-Complete"]


# ----- M1: gc and stats of a namespace admin ---------------------------------------------------------------------

def test_a_namespace_admin_cannot_run_gc_and_another_namespaces_push_survives(server: Server, tmp_path: Path) -> None:
    """An admin limited to alpha ran gc with grace 0 and deleted beta's uploaded, uncommitted blobs."""
    alpha_admin, beta_write = server.token("admin", "gc-alpha"), server.token("write", "gc-beta")
    folder = write_peft_lora(tmp_path / "beta", seed=1401)
    files = checkpoint_files(folder)
    with client(server, beta_write) as beta:  # every blob uploaded, nothing committed yet
        missing = beta.post(f"{API}/blobs/missing", json={"digests": [f["sha256"] for f in files]}).json()["missing"]
        assert set(missing) == {f["sha256"] for f in files}
        for f in files:
            assert upload(beta, f["data"], f["sha256"]).status_code == 201
    with client(server, alpha_admin) as admin:
        for body in ({"grace_seconds": 0}, {"grace_seconds": 0, "dry_run": True}, None):
            refused = assert_error(admin.post(f"{API}/gc", json=body), 403, "forbidden")
            assert "store-wide" in refused["message"] and "gc-alpha" in refused["message"], refused
    with client(server, beta_write) as beta:
        done = beta.post(f"{API}/repos/gc-beta/kept/revisions", json={"manifest": manifest_of(files)})
        assert done.status_code == 201, done.text
    with client(server, server.admin_token) as admin:  # an unlimited admin still runs it (dry run: share the server)
        assert admin.post(f"{API}/gc", json={"grace_seconds": 0, "dry_run": True}).status_code == 200


def test_a_namespace_admin_sees_the_stats_of_its_namespaces_only(server: Server, tmp_path: Path) -> None:
    alpha_admin = server.token("admin", "st-alpha")
    alpha_write, beta_write = server.token("write", "st-alpha"), server.token("write", "st-beta")
    alpha_data, beta_data = os.urandom(30_000), os.urandom(50_000)
    sent = 0
    with client(server, alpha_write) as alpha:
        pushed = push_folder(alpha, "st-alpha/one", write_peft_lora(tmp_path / "a", seed=1402))
        assert pushed.status_code == 201, pushed.text
        sent += sum(f["size"] for f in checkpoint_files(tmp_path / "a"))
        assert _patch(alpha, alpha_data, 0, 10_000).status_code == 204
        sent += 10_000
    with client(server, beta_write) as beta:
        assert push_folder(beta, "st-beta/one", write_peft_lora(tmp_path / "b", seed=1403)).status_code == 201
        assert push_folder(beta, "st-beta/two", write_peft_lora(tmp_path / "c", seed=1404)).status_code == 201
        assert _patch(beta, beta_data, 0, 20_000).status_code == 204
        assert _patch(beta, os.urandom(5000), 0, 1000).status_code == 204
    with client(server, alpha_admin) as admin:
        r = admin.get(f"{API}/stats")
        assert r.status_code == 200, r.text
        stats = r.json()
    assert stats["namespaces"] == ["st-alpha"]
    assert stats["repositories"] == 1
    assert stats["uploads_in_progress"] == 1 and stats["partial_upload_bytes"] == 10_000
    assert stats["bytes_received"] == sent  # alpha's uploads, none of beta's
    assert stats["blobs_stored"] == len(checkpoint_files(tmp_path / "a"))
    assert stats["requests"] >= 4
    with client(server, server.admin_token) as admin:  # the unlimited admin sees the whole server
        whole = admin.get(f"{API}/stats").json()
    assert "namespaces" not in whole
    assert whole["uploads_in_progress"] >= 3 and whole["partial_upload_bytes"] >= 31_000
    assert whole["bytes_received"] > sent


# ----- uploads in progress belong to the token's namespaces --------------------------------------------------------

def test_an_upload_in_progress_belongs_to_its_namespace(server: Server) -> None:
    """A writer of alpha can neither see beta's upload, nor finish it with the tail and read back the head."""
    alpha_write, beta_write = server.token("write", "up-alpha"), server.token("write", "up-beta")
    data = os.urandom(200_000)
    digest = sha256(data)
    with client(server, beta_write) as beta:
        assert _patch(beta, data, 0, 120_000).status_code == 204  # beta's head, then beta goes quiet
        assert _head(beta, digest) == (120_000, "false")
    with client(server, alpha_write) as alpha:
        assert _head(alpha, digest) == (0, "false")  # not beta's offset: alpha holds nothing of it
        tail = _patch(alpha, data, 120_000, 200_000)  # the tail alone cannot complete anything
        assert assert_error(tail, 409, "offset_mismatch")["offset"] == 0
        assert_error(alpha.get(f"{API}/blobs/{digest}"), 404, "blob_not_found")  # never stored: no head to read
    with client(server, server.write_token) as everyone:  # an unlimited writer has its own uploads too
        assert _head(everyone, digest) == (0, "false")
    with client(server, beta_write) as beta:  # beta's upload is as it left it, and beta finishes it
        assert _head(beta, digest) == (120_000, "false")
        assert _patch(beta, data, 120_000, 200_000).status_code == 201
        assert beta.get(f"{API}/blobs/{digest}").content == data
    # another namespace starts its own upload of the same blob and must send every byte of it
    with client(server, alpha_write) as alpha:
        assert _patch(alpha, data, 0, 50_000).status_code == 204
        assert _head(alpha, digest) == (50_000, "false")
        assert _patch(alpha, data, 50_000, 200_000).status_code == 201
        assert _head(alpha, digest) == (200_000, "true")
        assert alpha.get(f"{API}/blobs/{digest}").content == data
    blob = server.home / "blobs" / "sha256" / digest[7:9] / digest[9:]
    assert blob.read_bytes() == data and not list((server.home / "blobs" / "uploads").rglob(f"{digest[7:]}.partial"))


def test_a_namespace_cannot_spoil_another_namespaces_upload(server: Server) -> None:
    """Wrong bytes sent by one namespace drop its own partial, never another's."""
    alpha_write, beta_write = server.token("write", "sp-alpha"), server.token("write", "sp-beta")
    data = os.urandom(64_000)
    digest = sha256(data)
    with client(server, beta_write) as beta:
        assert _patch(beta, data, 0, 32_000).status_code == 204
    with client(server, alpha_write) as alpha:  # junk from wherever the server says alpha stands, to the end
        held, _ = _head(alpha, digest)
        assert_error(_patch(alpha, os.urandom(64_000), held, 64_000, digest=digest), 422, "digest_mismatch")
    with client(server, beta_write) as beta:
        assert _head(beta, digest) == (32_000, "false")
        assert _patch(beta, data, 32_000, 64_000).status_code == 201


# ----- idempotency keys -----------------------------------------------------------------------------------------

def test_job_idempotency_keys_are_per_namespace(server: Server) -> None:
    alpha_write, beta_write = server.token("write", "key-alpha"), server.token("write", "key-beta")

    def submit(token: str, revision: str, **extra: Any) -> Any:
        with client(server, token) as http:
            return http.post(f"{API}/jobs", json={"kind": "validate", "params": {"revisions": [revision], **extra},
                                                  "idempotency_key": "nightly"})

    first = submit(alpha_write, "key-alpha/x@1")
    assert first.status_code == 201, first.text
    alpha_job = first.json()["id"]
    other = submit(beta_write, "key-beta/y@1")  # the same key in another namespace is another job
    assert other.status_code == 201, other.text
    beta_job = other.json()["id"]
    assert beta_job != alpha_job and other.json()["params"]["revisions"] == ["key-beta/y@1"]
    again = submit(alpha_write, "key-alpha/x@1")  # a retry in the same namespace is the same job
    assert again.status_code == 200 and again.json()["id"] == alpha_job
    conflict = assert_error(submit(beta_write, "key-beta/z@1"), 409, "job_conflict")
    assert f"job {beta_job} " in conflict["message"] and f"job {alpha_job} " not in conflict["message"], conflict
    assert "key-alpha" not in conflict["message"]


# ----- --anonymous-read ------------------------------------------------------------------------------------------

def test_with_anonymous_read_any_token_reads_what_no_token_reads(database_url: str, tmp_path: Path) -> None:
    with running_server(tmp_path / "home", database_url, anonymous_read=True) as srv:
        folder = write_peft_lora(tmp_path / "ckpt", seed=1405)
        with client(srv, srv.write_token) as http:
            assert push_folder(http, "pub/open", folder, tag="v1").status_code == 201
        blob = checkpoint_files(folder)[0]
        outsider_read, outsider_write = srv.token("read", "elsewhere"), srv.token("write", "elsewhere")
        reads = [f"{API}/repos", f"{API}/repos?namespace=pub", f"{API}/repos/pub/open/revisions",
                 f"{API}/repos/pub/open/refs/v1", f"{API}/repos/pub/open/refs/1?format=swift",
                 f"{API}/blobs/{blob['sha256']}", f"{API}/jobs", "/api/models/pub/open",
                 f"/pub/open/resolve/main/{blob['path']}", "/api/v1/models/pub/open"]
        for token in (None, outsider_read, outsider_write):
            with client(srv, token) as http:
                for path in reads:
                    r = http.get(path)
                    assert r.status_code == 200, (token is None, path, r.status_code, r.text[:300])
                assert http.get(f"{API}/blobs/{blob['sha256']}").content == blob["data"]
                assert "pub/open" in {r["repo"] for r in http.get(f"{API}/repos").json()}
        with client(srv, outsider_write) as http:  # reading is open; writing stays the token's own namespaces
            assert_error(http.put(f"{API}/repos/pub/open/tags/mine", json={"ref": "1"}), 403, "forbidden")
            assert_error(http.delete(f"{API}/repos/pub/open/tags/v1"), 403, "forbidden")
        with client(srv, "srg_not-a-token") as http:  # a bad token is still not anonymous
            assert_error(http.get(f"{API}/repos/pub/open/revisions"), 401, "unauthorized")
