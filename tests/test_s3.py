"""Blobs on object storage (issue 20), against a real S3-protocol server on 127.0.0.1: moto's standalone server
(tests/helpers/s3_server.py), started once per module, with presigned URLs checked as S3 checks them.

- the store itself: the guarantees of the local store (nothing partial under a final key, verify, quarantine,
  leftovers reclaimed), presigned URLs that expire and are bound to one object, part and method;
- a `swiftreg serve --store s3://...` on SQLite and PostgreSQL: push with presigned uploads and pull, the
  Hugging Face and ModelScope clients following redirects, with the server's byte counters proving no adapter
  byte went through it; an object corrupted in the bucket named and never served; gc, scrub, `store copy`;
- the S3 server stopped mid-push: a clear error, no revision, a 503 with Retry-After from the server, and the
  push completed after it listens again without re-sending the parts the storage holds;
- a `swiftreg worker` whose home holds no blobs running merge, combine and validate from the store.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from click.testing import CliRunner

from registry.cli import main
from registry.client import RemoteRegistry
from registry.errors import NotFoundError, RegistryError, ServerUnreachableError
from registry.store import BlobDigestMismatch, BlobNotFound, CorruptBlob, LocalBlobStore, StoreError
from tests.helpers.checkpoints import write_big_peft_lora, write_peft_lora
from tests.helpers.s3 import S3Server, running_s3
from tests.helpers.server import registry_env, running_server

pytestmark = pytest.mark.s3

PART = 256 << 10  # moto runs with S3_UPLOAD_PART_MIN_SIZE lowered to this (tests/helpers/s3.py)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("s3") / "moto.log") as server:
        yield server


@pytest.fixture
def aws(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process reaches the moto server through the usual AWS_* variables."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SWIFTREG_STORE_URL", raising=False)
    return s3


def _store(s3: S3Server, prefix: str) -> Any:
    from registry.store.s3 import S3BlobStore

    return S3BlobStore(s3.url(prefix), part_size=PART, concurrency=4)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _keys(s3: S3Server, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _multipart_uploads(s3: S3Server, prefix: str) -> list[str]:
    answer = s3.client().list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix)
    return [u["Key"] for u in answer.get("Uploads", [])]


def _http(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/octet-stream"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ----- the store ----------------------------------------------------------------------------------------------

def test_store_keeps_the_guarantees_and_presigned_urls_expire_and_bind(aws: S3Server, tmp_path: Path) -> None:
    from registry.store.factory import open_store
    from registry.store.s3 import S3BlobStore

    store = _store(aws, "unit")
    big = os.urandom(3 * PART + 1000)
    pieces = [big[i:i + 70_000] for i in range(0, len(big), 70_000)]

    # a mismatch stores nothing: no object under either name, no multipart upload left behind
    with pytest.raises(BlobDigestMismatch):
        store.put_stream(pieces, expected=_digest(b"something else"))
    assert _keys(aws, "unit/") == [] and _multipart_uploads(aws, "unit/") == []

    info = store.put_stream(pieces, expected=_digest(big))
    small = store.put_stream([b"small ", b"blob"])  # digest unknown in advance; one part
    assert (info.digest, info.size) == (_digest(big), len(big)) and small.digest == _digest(b"small blob")
    assert store.exists(info.digest) and store.size(info.digest) == len(big) and store.verify(info.digest)
    assert sorted(store.iter_digests()) == sorted([info.digest, small.digest])
    assert store.missing([small.digest, _digest(b"x"), small.digest]) == [_digest(b"x")]
    unnamed = store.put_stream(pieces)  # several parts, digest unknown: through a temp key, copied to its name
    assert unnamed.digest == info.digest and [k for k in _keys(aws, "unit/") if "/tmp/" in k] == []

    # touch moves the gc clock (a marker), never the blob's fingerprint
    fingerprint = store.fingerprint(info.digest)
    before = store.mtime(info.digest)
    time.sleep(1.1)
    store.touch(info.digest)
    assert store.mtime(info.digest) > before and store.fingerprint(info.digest) == fingerprint

    # a corrupt object (overwritten in the bucket): its fingerprint changes, verify and copy_to refuse it
    aws.client().put_object(Bucket=aws.bucket, Key=store.key(small.digest), Body=b"small blob, rotten")
    assert not store.verify(small.digest)
    with pytest.raises(CorruptBlob, match=small.digest):
        store.copy_to(small.digest, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    store.copy_to(info.digest, tmp_path / "big")
    assert (tmp_path / "big").read_bytes() == big
    assert store.quarantine(small.digest) and not store.exists(small.digest)
    assert store.is_quarantined(small.digest) and list(store.iter_quarantined()) == [small.digest]
    with pytest.raises(BlobNotFound, match="quarantine"):
        store.size(small.digest)

    # a killed writer's leftovers: a temp object and an unfinished multipart upload, reclaimed by gc's sweep
    client = aws.client()
    client.put_object(Bucket=aws.bucket, Key="unit/tmp/.tmp-killed", Body=b"partial")
    client.create_multipart_upload(Bucket=aws.bucket, Key="unit/tmp/.tmp-killed-multipart")
    assert len(store.stale_temp_files(3600)) == 0 and len(store.stale_temp_files(0)) == 1
    assert len(store.remove_temp_files(0)) == 2
    assert _multipart_uploads(aws, "unit/") == [] and [k for k in _keys(aws, "unit/") if "/tmp/" in k] == []

    # presigned URLs: they work, expire, and are bound to one object, one part and one method
    url = store.presign_get(info.digest, 60)
    assert _http("GET", url) == (200, big)
    other = url.replace(digest_path(info.digest), digest_path(_digest(b"small blob")))
    status, body = _http("GET", other)
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert _http("PUT", url, b"overwrite")[0] == 403  # a GET URL does not PUT
    short = store.presign_get(info.digest, 1)
    time.sleep(2.1)
    status, body = _http("GET", short)
    assert status == 403 and b"expired" in body
    plan = store.begin_upload("all", info.digest, len(big), 60)
    assert plan["mode"] == "multipart" and [p["number"] for p in plan["parts"]] == [1, 2, 3, 4]
    first, second = plan["parts"][:2]
    status, body = _http("PUT", first["url"].replace("partNumber=1", "partNumber=2"), big[:PART])
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert _http("PUT", first["url"], big[:PART])[0] == 200
    resumed = store.begin_upload("all", info.digest, len(big), 60)  # the storage holds part 1: not asked again
    assert resumed["upload_id"] == plan["upload_id"] and [p["number"] for p in resumed["parts"]] == [2, 3, 4]
    with pytest.raises(StoreError, match="holds 1 of its 4 parts"):
        store.finish_upload("all", info.digest, len(big), plan["upload_id"])
    for part in resumed["parts"]:
        assert _http("PUT", part["url"], big[part["offset"]:part["offset"] + part["length"]])[0] == 200
    store.delete(info.digest)
    stored, fingerprint = store.finish_upload("all", info.digest, len(big), plan["upload_id"])
    assert stored.digest == info.digest and fingerprint == store.fingerprint(info.digest)
    assert [k for k in _keys(aws, "unit/") if "/uploads/" in k] == []
    # bytes that do not hash to the digest are not stored
    liar = store.begin_upload("all", _digest(b"promised"), 5, 60)
    assert _http("PUT", liar["parts"][0]["url"], b"other")[0] == 200
    with pytest.raises(BlobDigestMismatch):
        store.finish_upload("all", _digest(b"promised"), 5, None)
    assert not store.exists(_digest(b"promised"))

    # one setting chooses the store
    assert isinstance(open_store("s3://bucket/some/prefix/", tmp_path), S3BlobStore)
    assert open_store("s3://bucket/some/prefix/", tmp_path).prefix == "some/prefix/"
    assert isinstance(open_store(None, tmp_path), LocalBlobStore)
    assert isinstance(open_store(f"file://{tmp_path}/files", tmp_path), LocalBlobStore)
    with pytest.raises(StoreError, match="storage.googleapis.com"):
        open_store("gs://bucket", tmp_path)
    with pytest.raises(StoreError, match="s3://BUCKET"):
        open_store("s3://", tmp_path)
    # users of the local store never import the storage library
    probe = subprocess.run([sys.executable, "-c", "import sys, registry.cli, registry.service, registry.server.app; "
                            "from registry.service import Registry; Registry(home=sys.argv[1]).close(); "
                            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))",
                            str(tmp_path / "lazy")], capture_output=True, text=True, env=registry_env(
                                tmp_path / "lazy", f"sqlite:///{tmp_path / 'lazy.db'}"))
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr


def digest_path(digest: str) -> str:
    hexdigest = digest.removeprefix("sha256:")
    return f"{hexdigest[:2]}/{hexdigest[2:]}"


# ----- a server on the store ----------------------------------------------------------------------------------

CLIENTS = r'''
import hashlib, json, os, sys
from pathlib import Path
url, token, repo, rotten, weights, cache = sys.argv[1:7]
out = {}
def files(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and not p.name.startswith(".")}
def attempt(fn, *args, **kwargs):
    try:
        return {"ok": fn(*args, **kwargs)}
    except BaseException as exc:
        return {"error": type(exc).__name__, "message": str(exc)[:600]}
from huggingface_hub import hf_hub_download, snapshot_download, get_hf_file_metadata, hf_hub_url
KW = dict(endpoint=url, token=token, cache_dir=cache + "/hf")
out["hf"] = files(snapshot_download(repo, revision="v1", **KW))
meta = get_hf_file_metadata(hf_hub_url(repo, weights, revision="v1", endpoint=url), token=token)
out["hf_meta"] = {"size": meta.size, "etag": meta.etag, "commit": meta.commit_hash,
                  "location_is_storage": not meta.location.startswith(url)}
out["hf_rotten"] = attempt(hf_hub_download, rotten, weights, revision="v1", **KW)
os.environ.update(MODELSCOPE_ENDPOINT=url, MODELSCOPE_API_TOKEN=token, MODELSCOPE_CACHE=cache + "/ms")
from modelscope import snapshot_download as ms_snapshot_download
out["ms"] = files(ms_snapshot_download(repo, revision="v1"))
print("@@" + json.dumps(out))
'''


def _clients(server: Any, repo: str, rotten: str, weights: str, cache: Path) -> dict[str, Any]:
    script = cache.parent / "clients.py"
    script.write_text(CLIENTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "SWIFTREG_", "MODELSCOPE",
                                                                    "AWS_"))}
    env.update(HF_HOME=str(cache / "hf-home"), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1")
    done = subprocess.run([sys.executable, str(script), server.url, server.read_token, repo, rotten, weights,
                           str(cache)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1][2:])


def _sha_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _stats(server: Any) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/api/v1/stats", headers={"Authorization": f"Bearer {server.admin_token}"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _serve_env(s3: S3Server) -> dict[str, str]:
    return {**s3.env(), "SWIFTREG_S3_PART_SIZE": str(PART)}


def test_server_on_object_storage_moves_no_adapter_byte_itself(database_url: str, s3: S3Server, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"serve-{tmp_path.name}"
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    big = write_big_peft_lora(tmp_path / "big", seed=5, megabytes=2)
    small = write_peft_lora(tmp_path / "small", seed=6)
    rotten = write_peft_lora(tmp_path / "rotten", seed=7)
    unique = {hashlib.sha256(p.read_bytes()).hexdigest(): p.stat().st_size
              for folder in (big, small, rotten) for p in folder.iterdir()}
    pushed_bytes = sum(unique.values())
    with running_server(tmp_path / "home", database_url, extra_args=("--store", s3.url(prefix)),
                        env=_serve_env(s3)) as server:
        s3.reset_stats()
        client = RemoteRegistry(server.url, server.write_token, home=tmp_path / "client")
        client.push(big, "team/big", tag="v1")
        client.push(small, "team/small", tag="v1")
        rotten_rev = client.push(rotten, "team/rotten", tag="v1").revision
        stats, moto = _stats(server), s3.stats()
        assert stats["bytes_received"] == 0 and stats["blobs_stored"] >= 4  # presigned: nothing through the server
        assert moto["presigned_put_bytes"] == pushed_bytes and moto["part_puts"] >= 8  # 2 MB in 256 KiB parts
        assert not [p for p in server.home.rglob("*") if p.is_file() and {"blobs", "uploads"} & set(p.parts)]

        # pull: redirected to the storage, verified by the client; the server sends only JSON
        sent = stats["bytes_sent"]
        reader = RemoteRegistry(server.url, server.read_token, home=tmp_path / "reader")
        assert _sha_files(reader.pull("team/big@v1", tmp_path / "pulled")) == _sha_files(big)
        stats = _stats(server)
        assert stats["bytes_sent"] - sent < 64 << 10 and stats["redirects"] >= 2
        assert s3.stats()["presigned_get_bytes"] >= (big / "adapter_model.safetensors").stat().st_size
        blob = httpx.get(f"{server.url}/api/v1/blobs/{rotten_rev.manifest['files'][0]['sha256']}",
                         headers={"Authorization": f"Bearer {server.read_token}"})
        assert blob.status_code == 302 and "X-Amz-Signature=" in blob.headers["location"]

        # an object corrupted in the bucket: named, quarantined, never redirected to
        weights = next(f for f in rotten_rev.manifest["files"] if f["path"] == "adapter_model.safetensors")
        key = f"{prefix}/sha256/{digest_path(weights['sha256'])}"
        body = bytearray(s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read())
        body[-1] ^= 0xFF
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=bytes(body))
        out = _clients(server, "team/small", "team/rotten", "adapter_model.safetensors", tmp_path / "hub")
        assert out["hf"] == _sha_files(small) and out["ms"] == _sha_files(small)
        assert out["hf_meta"]["location_is_storage"] and out["hf_meta"]["size"] == (
            small / "adapter_model.safetensors").stat().st_size
        assert out["hf_meta"]["etag"] == hashlib.sha256((small / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert "error" in out["hf_rotten"], out["hf_rotten"]
        with pytest.raises(RegistryError, match=weights["sha256"]):
            RemoteRegistry(server.url, server.read_token, home=tmp_path / "r2").pull("team/rotten@v1", tmp_path / "x")
        report = _stats(server)
        assert [q["digest"] for q in report["quarantined"]] == [weights["sha256"]]
        assert report["quarantined"][0]["revisions"] == ["team/rotten@1"]

        # import: `swiftreg import hf://` from this server (the hub, redirecting) into a registry on another prefix
        env = {**registry_env(tmp_path / "importer", f"sqlite:///{tmp_path / 'importer.db'}"), **s3.env(),
               "SWIFTREG_STORE_URL": s3.url(prefix + "-imported"), "HF_ENDPOINT": server.url,
               "HF_TOKEN": server.read_token, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        imported = subprocess.run([sys.executable, "-m", "registry.cli", "import", "hf://team/small@v1", "local/small",
                                   "--json"], env=env, capture_output=True, text=True, timeout=120)
        assert imported.returncode == 0, imported.stderr
        assert json.loads(imported.stdout)["revision"]["digest"] == client.show("team/small@v1").digest
        assert len(_keys(s3, prefix + "-imported/sha256/")) == len(_sha_files(small))

        # scrub (verify): a blob rotten in the bucket but never served since is found too
        other = next(f for f in client.show("team/big@v1").manifest["files"] if f["path"] == "adapter_config.json")
        s3.client().put_object(Bucket=s3.bucket, Key=f"{prefix}/sha256/{digest_path(other['sha256'])}", Body=b"{}")
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        scrub = httpx.post(f"{server.url}/api/v1/scrub", headers=admin, timeout=60).json()
        assert scrub["corrupt"] == [other["sha256"]] and scrub["checked"] >= 1

        # a crash between upload and commit: a stored blob nothing names and an unfinished presigned upload;
        # gc spares them within its grace period and reclaims them after
        orphan = tmp_path / "orphan.bin"
        orphan.write_bytes(os.urandom(3 * PART))
        orphan_digest = _digest(orphan.read_bytes())
        assert client._direct.upload(orphan_digest, orphan, 3 * PART, "orphan.bin", None) == 3 * PART
        half = os.urandom(2 * PART + 5)
        plan = httpx.post(f"{server.url}/api/v1/uploads/{_digest(half)}/direct", json={"size": len(half)},
                          headers={"Authorization": f"Bearer {server.write_token}"}).json()
        assert _http("PUT", plan["parts"][0]["url"], half[:PART])[0] == 200
        kept = httpx.post(f"{server.url}/api/v1/gc", json={"grace_seconds": 3600}, headers=admin).json()
        assert kept["blobs_removed"] == 0 and kept["kept_in_grace"] >= 1
        assert _multipart_uploads(s3, prefix + "/") != []
        gone = httpx.post(f"{server.url}/api/v1/gc", json={"grace_seconds": 0}, headers=admin).json()
        assert gone["blobs_removed"] >= 1 and gone["temp_files_removed"] >= 1
        assert _multipart_uploads(s3, prefix + "/") == []
        assert f"{prefix}/sha256/{digest_path(orphan_digest)}" not in _keys(s3, prefix + "/")
        assert _sha_files(RemoteRegistry(server.url, server.read_token, home=tmp_path / "r3").pull(
            "team/small@v1", tmp_path / "again")) == _sha_files(small)  # what revisions name is kept

        # --no-redirect is a server setting: the same store streamed through the server (verified)
    with running_server(tmp_path / "home", database_url, extra_args=("--store", s3.url(prefix), "--no-redirect"),
                        env=_serve_env(s3)) as server:
        reader = RemoteRegistry(server.url, server.read_token, home=tmp_path / "streamed")
        assert _sha_files(reader.pull("team/small@v1", tmp_path / "streamed-out")) == _sha_files(small)
        assert _stats(server)["bytes_sent"] >= (small / "adapter_model.safetensors").stat().st_size
        ranged = httpx.get(f"{server.url}/team/small/resolve/v1/adapter_model.safetensors",
                           headers={"Authorization": f"Bearer {server.read_token}", "Range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == (small / "adapter_model.safetensors").read_bytes()[10:20]
        writer = RemoteRegistry(server.url, server.write_token, home=tmp_path / "w2")
        pushed = writer.push(write_peft_lora(tmp_path / "through", seed=9), "team/through")
        assert pushed.bytes_written > 0 and _stats(server)["bytes_received"] >= pushed.bytes_written


def test_store_stopped_mid_push_then_push_completes_without_resending_parts(
        database_url: str, s3: S3Server, tmp_path: Path) -> None:
    prefix = f"fault-{tmp_path.name}"
    big = write_big_peft_lora(tmp_path / "big", seed=11, megabytes=2)
    weights = (big / "adapter_model.safetensors").stat().st_size
    parts = -(-weights // PART)
    with running_server(tmp_path / "home", database_url, extra_args=("--store", s3.url(prefix)),
                        env=_serve_env(s3)) as server:
        client = RemoteRegistry(server.url, server.write_token, home=tmp_path / "client", retries=1,
                                retry_seconds=1, backoff=0.05)
        s3.reset_stats()
        s3.stop_after_parts(3)
        try:
            with pytest.raises(ServerUnreachableError, match="run the push again to resume") as failed:
                client.push(big, "team/big", tag="v1")
            assert "adapter_model.safetensors" in str(failed.value) and "object store" in str(failed.value)
            assert not s3.listening()
            # the server, meanwhile: 503 naming the object store, with Retry-After; no revision
            missing = httpx.post(f"{server.url}/api/v1/blobs/missing", json={"digests": ["sha256:" + "1" * 64]},
                                 headers={"Authorization": f"Bearer {server.write_token}"})
            assert missing.status_code == 503 and missing.headers["Retry-After"] == "2"
            assert missing.json()["error"]["code"] == "unavailable" and "object store" in missing.text
            health = httpx.get(f"{server.url}/healthz")
            assert health.status_code == 503 and not health.json()["store"]["ok"]
        finally:
            s3.listen_again()
        with pytest.raises(NotFoundError):
            client.show("team/big@v1")
        first = s3.stats()["part_puts"]
        assert 3 <= first < parts
        result = client.push(big, "team/big", tag="v1")
        assert result.created and s3.stats()["part_puts"] == parts  # the stored parts were not sent again
        assert _sha_files(RemoteRegistry(server.url, server.read_token, home=tmp_path / "r").pull(
            "team/big@v1", tmp_path / "out")) == _sha_files(big)


def test_worker_without_blobs_runs_merge_combine_validate_from_the_store(
        database_url: str, aws: S3Server, tmp_path: Path) -> None:
    from registry.service import Registry
    from registry.store.s3 import S3BlobStore
    from tests.helpers.models import build_base, make_peft_checkpoint

    url = aws.url(f"jobs-{tmp_path.name}")
    reg = Registry(home=tmp_path / "home", database_url=database_url, store=S3BlobStore(url))
    base = build_base("llama", tmp_path / "base")
    reg.push_base(base, "meta/llama-tiny", tag="v1")
    for i, name in enumerate(("sql", "chat")):
        make_peft_checkpoint(base, tmp_path / name, {"default": dict(r=4, lora_alpha=8,
                                                                      target_modules=["q_proj", "v_proj"])},
                             seed=70 + i)
        reg.push(tmp_path / name, f"team/{name}", tag="v1", base_model="meta/llama-tiny@v1")
    jobs = [reg.submit_job("merge", {"adapter": "team/sql@v1", "base": "meta/llama-tiny@v1",
                                     "push": "meta/llama-sql"}),
            reg.submit_job("combine", {"refs": ["team/sql@v1", "team/chat@v1"], "weights": [0.6, 0.4],
                                       "method": "cat", "base": "meta/llama-tiny@v1", "push": "team/mix"}),
            reg.submit_job("validate", {"revisions": ["team/sql@1", "team/chat@1"], "swift": False})]
    elsewhere = tmp_path / "elsewhere"  # another machine: only the database URL and the store URL are shared
    env = {**registry_env(elsewhere, database_url), **aws.env(), "SWIFTREG_STORE_URL": url}
    worker = subprocess.run([sys.executable, "-m", "registry.cli", "worker", "--exit-when-idle", "--poll", "0.2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    done = {j.kind: reg.job(j.id) for j in jobs}
    assert {k: j.status for k, j in done.items()} == {"merge": "succeeded", "combine": "succeeded",
                                                      "validate": "succeeded"}, {k: j.log for k, j in done.items()}
    assert done["merge"].result["pushed"]["digest"] == reg.show("meta/llama-sql").digest
    assert done["combine"].result["pushed"]["digest"] == reg.show("team/mix").digest
    assert done["validate"].result["failed"] == 0
    assert not (elsewhere / "blobs").exists()  # it read every blob from the store, kept none of its own
    assert list((elsewhere / "blob-cache").iterdir())  # but a bounded cache of those it read and verified
    assert list((elsewhere / "snapshots").rglob("*.safetensors"))  # its snapshot cache holds what it read
    merged = reg.resolve("meta/llama-sql")  # the results are in the store, readable from here
    assert any(merged.rglob("*.safetensors"))
    reg.close()


def test_store_copy_moves_a_local_store_verified_and_resumable(aws: S3Server, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    local = LocalBlobStore(tmp_path / "blobs")
    good = [local.put_stream([os.urandom(n)]) for n in (10, 3 * PART + 7)]
    bad = local.put_stream([b"will rot"])
    path = local.path(bad.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"has rotted")
    target = aws.url(f"copy-{tmp_path.name}")
    monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    first = runner.invoke(main, ["store", "copy", "--from", str(tmp_path / "blobs"), "--to", target, "--json"])
    assert first.exit_code == 1, first.output
    report = json.loads(first.stdout)
    assert report["copied"] == 2 and report["corrupt"] == [bad.digest] and report["present"] == 0
    store = _store(aws, f"copy-{tmp_path.name}")
    assert sorted(store.iter_digests()) == sorted(b.digest for b in good) and all(store.verify(b.digest) for b in good)
    local.delete(bad.digest)
    again = runner.invoke(main, ["store", "copy", "--from", str(tmp_path / "blobs"), "--to", target, "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout) == {**report, "copied": 0, "copied_bytes": 0,
                                                                  "present": 2, "corrupt": []}
