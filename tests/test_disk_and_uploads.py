"""Disk and uploads (issue 14, item 5; M3), on a small real filesystem (a tmpfs mounted for the test).

- A finished upload becomes the stored blob itself (linked into place, never copied), so storing a
  blob needs room for one copy, not two.
- A full disk answers 507 `insufficient_storage` naming what was being written and the bytes free,
  never the server's path, and the CLI says so (not "is the server running?"); a local push raises
  the same error.
- Unfinished uploads have a quota per namespace (413 `upload_quota`) and expire on the server's own
  clock, without an admin's gc.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.errors import InsufficientStorageError
from registry.store import LocalBlobStore
from registry.store.uploads import UploadArea
from tests.helpers.api_v1 import API, assert_error, client, sha256
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.filesystems import free_bytes, small_filesystem
from tests.helpers.server import registry_env, running_server

MIB = 1 << 20


def _patch(http, data: bytes, start: int, end: int, digest: str | None = None):  # type: ignore[no-untyped-def]
    return http.patch(f"{API}/uploads/{digest or sha256(data)}", content=data[start:end],
                      headers={"Upload-Offset": str(start), "Upload-Length": str(len(data))})


def _big_checkpoint(folder: Path, mib: int, seed: int) -> Path:
    """A valid PEFT LoRA checkpoint with one extra file of `mib` MiB (a push stores every file)."""
    write_peft_lora(folder, seed=seed)
    (folder / "notes.txt").write_bytes(os.urandom(mib * MIB // 2).hex().encode())
    return folder


# ----- one copy ------------------------------------------------------------------------------------------------

def test_a_finished_upload_is_linked_into_the_store_not_copied(tmp_path: Path) -> None:
    """60 MiB on a 100 MiB filesystem: storing it by copy needed 120 MiB; the partial file becomes the blob."""
    with small_filesystem(tmp_path / "fs", 100) as fs:
        store = LocalBlobStore(fs / "blobs")
        area = UploadArea.beside(store, tmp_path)
        data = os.urandom(60 * MIB)
        digest = sha256(data)
        upload = area.open(digest, wait=0)
        assert upload is not None
        try:
            for start in range(0, len(data), 4 * MIB):
                upload.append(data[start:start + 4 * MIB])
            partial = area.partial(digest).stat()
            free_before = free_bytes(fs)
            info = upload.finish()
        finally:
            upload.close()
        stored = store.path(digest).stat()
        assert (info.digest, info.size) == (digest, len(data))
        assert (stored.st_ino, stored.st_dev) == (partial.st_ino, partial.st_dev)  # the same file, not a copy
        assert stored.st_nlink == 1 and area.offset(digest) == 0 and stored.st_mode & 0o777 == 0o444
        assert free_bytes(fs) >= free_before - MIB  # storing it took no second 60 MiB
        assert store.verify(digest)


@pytest.mark.server
def test_a_blob_the_disk_holds_once_is_stored_through_the_server(one_database_url: str, tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 100) as fs, \
            running_server(tmp_path / "home", one_database_url, extra_args=("--store", str(fs / "blobs"))) as srv:
        data = os.urandom(60 * MIB)
        digest = sha256(data)
        with client(srv, srv.write_token) as http:
            for start in range(0, len(data), 15 * MIB):
                r = _patch(http, data, start, min(len(data), start + 15 * MIB))
                assert r.status_code in (201, 204), r.text
            assert r.status_code == 201
            assert hashlib.sha256(http.get(f"{API}/blobs/{digest}").content).hexdigest() == digest[7:]
        assert not list((fs / "blobs" / "uploads").rglob("*.partial"))


# ----- a full disk -----------------------------------------------------------------------------------------------

@pytest.mark.server
def test_a_full_disk_answers_507_naming_the_upload_without_the_servers_path(one_database_url: str,
                                                                            tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 20) as fs, \
            running_server(tmp_path / "home", one_database_url, extra_args=("--store", str(fs / "blobs"))) as srv:
        too_big = os.urandom(30 * MIB)
        digest = sha256(too_big)
        with client(srv, srv.write_token) as http:
            r = _patch(http, too_big, 0, 8 * MIB)
            error = assert_error(r, 507, "insufficient_storage")
            assert error["writing"] == f"upload of blob {digest}"
            assert "blob store's filesystem is full" in error["message"] and "bytes free" in error["message"]
            assert str(fs) not in r.text and str(tmp_path) not in r.text  # no absolute server path
            assert http.head(f"{API}/uploads/{digest}").headers["Upload-Offset"] == "0"
            fits = os.urandom(4 * MIB)  # what fits still goes in
            assert _patch(http, fits, 0, len(fits)).status_code == 201
        assert not list((fs / "blobs" / "uploads").rglob("*.partial"))


@pytest.mark.server
def test_the_cli_says_the_servers_disk_is_full(one_database_url: str, tmp_path: Path) -> None:
    folder = _big_checkpoint(tmp_path / "ckpt", 30, seed=1410)
    with small_filesystem(tmp_path / "fs", 20) as fs, \
            running_server(tmp_path / "home", one_database_url, extra_args=("--store", str(fs / "blobs"))) as srv:
        env = {**registry_env(tmp_path / "client-home", "sqlite:///" + str(tmp_path / "client.db")),
               "SWIFTREG_URL": srv.url, "SWIFTREG_TOKEN": srv.write_token}
        done = subprocess.run([sys.executable, "-m", "registry.cli", "push", str(folder), "team/big"], env=env,
                              capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "filesystem is full" in output and "upload of blob sha256:" in output, output
    assert "is the server running" not in output and "Traceback" not in output, output


def test_a_full_disk_mid_upload_drops_only_that_writers_bytes(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 8) as fs:
        store = LocalBlobStore(fs / "blobs")
        area = UploadArea.beside(store, tmp_path)
        (fs / "filler").write_bytes(b"\0" * (free_bytes(fs) - 2 * MIB))  # about 2 MiB left
        data = os.urandom(6 * MIB)
        digest = sha256(data)
        first = area.open(digest, wait=0)
        assert first is not None
        try:
            first.append(data[:MIB])
        finally:
            first.close()
        second = area.open(digest, wait=0)
        assert second is not None
        try:
            with pytest.raises(InsufficientStorageError) as caught:
                for start in range(MIB, len(data), 256 << 10):
                    second.append(data[start:start + (256 << 10)])
        finally:
            second.close()
        assert caught.value.writing == f"upload of blob {digest}" and caught.value.status == 507
        assert "bytes free" in str(caught.value) and str(fs) not in str(caught.value)
        assert area.offset(digest) == MIB  # the bytes held before this writer stay: it resumes from there


def test_a_local_push_to_a_full_store_raises_insufficient_storage(database_url: str, tmp_path: Path) -> None:
    from registry.service import Registry

    folder = _big_checkpoint(tmp_path / "ckpt", 30, seed=1411)
    with small_filesystem(tmp_path / "fs", 20) as fs:
        reg = Registry(home=tmp_path / "home", database_url=database_url, store=LocalBlobStore(fs / "blobs"))
        try:
            with pytest.raises(InsufficientStorageError) as caught:
                reg.push(folder, "team/big")
            assert caught.value.writing.startswith(f"blob of {folder}"), caught.value.writing  # the file at fault
            assert "filesystem is full" in str(caught.value)
            assert reg.list("team") == []  # nothing committed
            assert not list((fs / "blobs" / "tmp").iterdir())  # the temp file was dropped
        finally:
            reg.close()


# ----- quota and expiry of unfinished uploads ------------------------------------------------------------------------

@pytest.mark.server
def test_unfinished_uploads_have_a_quota_per_namespace(one_database_url: str, tmp_path: Path) -> None:
    with running_server(tmp_path / "home", one_database_url, extra_args=("--max-partial-bytes", "1000000")) as srv:
        alpha, beta = srv.token("write", "q-alpha"), srv.token("write", "q-beta")
        big, a, b, c = (os.urandom(n) for n in (2_000_000, 800_000, 500_000, 800_000))
        with client(srv, alpha) as http:
            refused = assert_error(_patch(http, big, 0, 100_000), 413, "upload_quota")
            assert "q-alpha" in refused["message"] and "1,000,000" in refused["message"], refused
            assert _patch(http, a, 0, 600_000).status_code == 204  # alpha now holds 600,000 unfinished bytes
            assert_error(_patch(http, b, 0, 100_000), 413, "upload_quota")  # 600,000 + 500,000 > 1,000,000
            assert http.head(f"{API}/uploads/{sha256(b)}").headers["Upload-Offset"] == "0"
        with client(srv, beta) as http:  # another namespace has its own quota
            assert _patch(http, c, 0, len(c)).status_code == 201
        with client(srv, alpha) as http:  # once alpha's upload is finished, the next one fits
            assert _patch(http, a, 600_000, len(a)).status_code == 201
            assert _patch(http, b, 0, len(b)).status_code == 201


@pytest.mark.server
def test_idle_partial_uploads_expire_without_gc(one_database_url: str, tmp_path: Path) -> None:
    with running_server(tmp_path / "home", one_database_url, extra_args=("--upload-ttl", "1")) as srv:
        data = os.urandom(100_000)
        digest = sha256(data)
        with client(srv, srv.token("write", "idle")) as http:
            assert _patch(http, data, 0, 40_000).status_code == 204
            deadline = time.monotonic() + 120  # a liveness bound, not a timing assertion
            while http.head(f"{API}/uploads/{digest}").headers["Upload-Offset"] != "0":
                assert time.monotonic() < deadline, "the idle partial upload was never removed"
                time.sleep(0.5)
        assert not list((srv.home / "blobs" / "uploads").rglob("*.partial"))
