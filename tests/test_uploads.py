"""Resumable uploads in the store layer (registry/store/uploads.py), and their sweep by `swiftreg gc`."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.cli import main
from registry.store import BlobDigestMismatch, InvalidDigest, LocalBlobStore
from registry.store.uploads import UploadArea


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def area(tmp_path: Path) -> UploadArea:
    store = LocalBlobStore(tmp_path / "blobs")
    return UploadArea.beside(store, tmp_path)


def partial_upload(area: UploadArea, data: bytes, held: int, age_seconds: float = 0.0) -> str:
    """Leave the first `held` bytes of `data` as an abandoned upload, last written `age_seconds` ago."""
    digest = sha256(data)
    upload = area.open(digest, wait=0)
    assert upload is not None
    try:
        upload.append(data[:held])
    finally:
        upload.close()
    then = time.time() - age_seconds
    os.utime(area.partial(digest), (then, then))
    return digest


def test_an_upload_resumes_from_the_offset_held_and_stores_the_verified_blob(area: UploadArea) -> None:
    data = b"resumable bytes " * 1000
    digest = partial_upload(area, data, 700)
    assert area.offset(digest) == 700 and area.in_progress() == 1
    upload = area.open(digest, wait=0)
    assert upload is not None and upload.held == 700
    try:
        upload.append(data[700:])
        info = upload.finish()
    finally:
        upload.close()
    assert (info.digest, info.size) == (digest, len(data))
    assert area.store.exists(digest) and area.offset(digest) == 0 and area.in_progress() == 0
    assert area.folder == area.store.root / "uploads"  # beside a local store: one filesystem


def test_bytes_that_do_not_hash_to_the_digest_store_nothing_and_drop_the_partial(area: UploadArea) -> None:
    digest = sha256(b"what was promised")
    upload = area.open(digest, wait=0)
    assert upload is not None
    try:
        upload.append(b"something else")
        with pytest.raises(BlobDigestMismatch):
            upload.finish()
    finally:
        upload.close()
    assert not area.store.exists(digest) and area.offset(digest) == 0


def test_an_empty_blob_is_stored_and_a_rollback_drops_only_this_writers_bytes(area: UploadArea) -> None:
    empty = area.open(sha256(b""), wait=0)
    assert empty is not None
    try:
        assert empty.finish().size == 0
    finally:
        empty.close()
    data = b"0123456789"
    digest = partial_upload(area, data, 4)
    upload = area.open(digest, wait=0)
    assert upload is not None
    try:
        upload.append(data[4:8])
        upload.rollback()
    finally:
        upload.close()
    assert area.offset(digest) == 4


def test_one_writer_per_blob_and_the_sweep_skips_what_is_being_written(area: UploadArea) -> None:
    digest = partial_upload(area, b"x" * 100, 10, age_seconds=7200)
    upload = area.open(digest, wait=0)
    assert upload is not None
    try:
        assert area.open(digest, wait=0) is None  # a second writer waits, then gives up
        assert area.sweep(0) == 0  # held by a writer: not stale, whatever its age
    finally:
        upload.close()
    assert area.sweep(0, dry_run=True) == 1 and area.offset(digest) == 10
    assert area.sweep(0) == 1 and area.offset(digest) == 0


def test_a_digest_is_checked_before_it_names_a_path(area: UploadArea) -> None:
    for bad in ("sha256:../../etc/passwd", "../x", "sha256:" + "A" * 64):
        with pytest.raises(InvalidDigest):
            area.open(bad, wait=0)
    assert not area.folder.exists() or not list(area.folder.iterdir())


def test_swiftreg_gc_removes_a_stale_partial_upload_and_keeps_a_fresh_one(
        database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("SWIFTREG_HOME", str(home))
    monkeypatch.setenv("SWIFTREG_DATABASE_URL", database_url)
    area = UploadArea.beside(LocalBlobStore(home / "blobs"), home)  # where `swiftreg serve` keeps them
    stale = partial_upload(area, b"abandoned two hours ago" * 50, 300, age_seconds=7200)
    fresh = partial_upload(area, b"a client is still sending this" * 50, 300)

    def gc(*args: str) -> dict[str, int]:
        result = CliRunner().invoke(main, ["gc", "--grace", "3600", "--json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert gc("--dry-run")["partial_uploads_removed"] == 1
    assert area.offset(stale) == 300
    assert gc()["partial_uploads_removed"] == 1
    assert area.offset(stale) == 0 and area.offset(fresh) == 300
