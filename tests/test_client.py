"""RemoteRegistry (registry/client/) and the CLI over SWIFTREG_URL, against a real `swiftreg serve`.

Unit tests of the pure parts (error mapping, answer parsing, retries, Range handling) run on
httpx.MockTransport; everything else talks to a real server process on 127.0.0.1 (tests/server.py),
on SQLite and, when SWIFTREG_TEST_DATABASE_URL is set, on PostgreSQL.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

import registry
from registry import constants
from registry.api import RevisionInfo
from registry.cli import main
from registry.client import RemoteRegistry, cache_dir_name
from registry.client.downloads import SINK_BATCH
from registry.client.transport import error_from
from registry.errors import (
    AccessDeniedError,
    AmbiguousRefError,
    BlobsMissingError,
    ForbiddenError,
    IntegrityError,
    InvalidCheckpointError,
    InvalidIdError,
    NotFoundError,
    RefExistsError,
    RegistryError,
    RemoteError,
    RequestTooLargeError,
    ServerUnreachableError,
    UnauthorizedError,
    UnsafePathError,
)
from registry.service import Registry
from registry.store.errors import BlobDigestMismatch, BlobNotFound
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora
from tests.helpers.server import Server, free_port

ROOT = Path(__file__).resolve().parent.parent


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def write_big_peft(folder: Path, megabytes: int = 50, seed: int = 7) -> Path:
    """A valid PEFT LoRA checkpoint whose weights are `megabytes` MB of random float32."""
    write_peft_lora(folder, seed=seed, r=64, layers=1)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj"]
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    width = megabytes * 1_000_000 // (2 * 64 * 4)
    rng = np.random.default_rng(seed)
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{module}.lora_A.weight": rng.standard_normal((64, width), dtype=np.float32),
               f"{module}.lora_B.weight": rng.standard_normal((width, 64), dtype=np.float32)},
              str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def _client(server: Server, tmp_path: Path, token: str | None = "write", **kwargs: Any) -> RemoteRegistry:
    secret = {"write": server.write_token, "read": server.read_token, "admin": server.admin_token}.get(token, token)
    return RemoteRegistry(server.url, secret, home=tmp_path / "client", **kwargs)


def _received(server: Server) -> int:
    return httpx.get(server.url + "/api/v1/stats", headers={"Authorization": f"Bearer {server.admin_token}"},
                     timeout=10).json()["bytes_received"]


def _cli_env(server_url: str, token: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
    env.update(SWIFTREG_URL=server_url, SWIFTREG_TOKEN=token, SWIFTREG_HOME=str(home), PYTHONPATH=str(ROOT))
    return env


def _swiftreg(env: dict[str, str], *args: object, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "registry.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


# ===== unit tests: no server ==================================================================================

def _response(status: int, body: Any = None, method: str = "GET",
              headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, content=content, headers=headers,
                          request=httpx.Request(method, "http://x/api/v1/repos/team/a/refs/main"))


@pytest.mark.parametrize("status,code,cls", [
    (404, "not_found", NotFoundError), (404, "blob_not_found", BlobNotFound),
    (400, "invalid_id", InvalidIdError), (400, "unsafe_path", UnsafePathError),
    (409, "ambiguous_ref", AmbiguousRefError),
    (409, "ref_exists", RefExistsError), (422, "invalid_checkpoint", InvalidCheckpointError),
    (422, "digest_mismatch", BlobDigestMismatch), (500, "integrity_error", IntegrityError),
    (401, "unauthorized", UnauthorizedError), (403, "forbidden", ForbiddenError),
    (400, "bad_request", RegistryError), (413, "too_large", RequestTooLargeError), (500, "internal_error", RemoteError),
])
def test_error_codes_become_the_local_exception_classes_with_the_servers_message(status: int, code: str,
                                                                                   cls: type) -> None:
    exc = error_from(_response(status, {"error": {"code": code, "message": f"the {code} message"}}), "GET x")
    assert type(exc) is cls
    assert "the " + code + " message" in str(exc)


def test_blobs_missing_keeps_the_list_and_statuses_without_a_body_still_map() -> None:
    body = {"error": {"code": "blobs_missing", "message": "m", "missing": ["sha256:" + "a" * 64]}}
    exc = error_from(_response(409, body), "x")
    assert isinstance(exc, BlobsMissingError) and exc.missing == ["sha256:" + "a" * 64]
    assert isinstance(error_from(_response(401, method="HEAD"), "HEAD x"), AccessDeniedError)
    assert isinstance(error_from(_response(404, method="HEAD"), "HEAD x"), NotFoundError)
    teapot = error_from(_response(418, b"not json"), "GET x")
    assert isinstance(teapot, RemoteError) and teapot.status == 418


def test_cache_folder_names_the_host_and_port() -> None:
    assert cache_dir_name("http://127.0.0.1:8000") == "127.0.0.1_8000"
    assert cache_dir_name("https://registry.example.com/") == "registry.example.com_443"
    assert cache_dir_name("http://[::1]:9000") == "--1_9000"
    with pytest.raises(RegistryError):
        RemoteRegistry("ftp://x")


def test_revision_answers_round_trip_through_revision_info(reg: Registry, tmp_path: Path) -> None:
    info = reg.push(write_peft_lora(tmp_path / "a"), "team/a", tag="v1").revision
    assert RevisionInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    with pytest.raises(ValueError, match="malformed"):
        RevisionInfo.from_dict({"repo": "team/a"})


def test_environment_variables_are_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWIFTREG_URL", raising=False)
    monkeypatch.delenv("SWIFTREG_TOKEN", raising=False)
    assert constants.url() is None and constants.token() is None
    monkeypatch.setenv("SWIFTREG_URL", "http://127.0.0.1:8000/")
    monkeypatch.setenv("SWIFTREG_TOKEN", "srg_x")
    assert constants.url() == "http://127.0.0.1:8000" and constants.token() == "srg_x"


def test_default_registry_and_module_resolve_follow_swiftreg_url(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SWIFTREG_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SWIFTREG_TOKEN", "srg_x")
    remote = registry.default_registry()
    assert isinstance(remote, RemoteRegistry) and remote.url == os.environ["SWIFTREG_URL"]
    assert registry.default_registry() is remote
    remote._http.retries = 0
    with pytest.raises(ServerUnreachableError, match="no usable answer"):
        registry.resolve("team/a@v1")  # nothing listens there, and nothing was cached
    monkeypatch.delenv("SWIFTREG_URL")
    assert isinstance(registry.default_registry(), Registry)


def test_the_cli_refuses_database_commands_over_http(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SWIFTREG_URL", "http://127.0.0.1:9")
    for args in (["db", "upgrade"], ["token", "create", "--scope", "read"], ["token", "ls"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "not available over HTTP" in result.output, result.output


def _mock(handler: Callable[[httpx.Request], httpx.Response], tmp_path: Path, **kwargs: Any) -> RemoteRegistry:
    return RemoteRegistry("http://mock:1", "t", home=tmp_path, transport=httpx.MockTransport(handler),
                          backoff=0.001, **kwargs)


def test_idempotent_calls_are_retried_on_5xx_and_connection_errors(tmp_path: Path) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 2:
            return httpx.Response(503)
        assert request.headers["authorization"] == "Bearer t"
        return httpx.Response(200, json=[])

    assert _mock(handler, tmp_path).list() == [] and calls == ["GET"] * 3
    calls.clear()
    with pytest.raises(ServerUnreachableError, match="3 attempts"):
        _mock(lambda r: httpx.Response(503), tmp_path, retries=2).list()


def test_a_gc_post_is_not_resent_after_it_may_have_reached_the_server(tmp_path: Path) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(ServerUnreachableError):
        _mock(handler, tmp_path).gc()
    assert calls == ["POST"]


@contextmanager
def _blob_server(data: bytes, *, honour_range: bool = True, cut: int | None = None) -> Iterator[tuple[str, list]]:
    """A real HTTP server on 127.0.0.1 serving one blob at /api/v1/blobs/<any>, misbehaving on request.

    `cut`: the first answer declares the whole length but the connection closes after `cut` bytes.
    `honour_range=False`: Range headers are ignored (200 with every byte).
    """
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            rng = self.headers.get("Range")
            seen.append(rng)
            match = re.fullmatch(r"bytes=(\d+)-", rng) if rng else None
            start = int(match.group(1)) if match and honour_range else 0
            body = data[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut is not None and len(seen) == 1:
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            for i in range(0, len(body), 1 << 16):  # as a socket delivers it
                self.wfile.write(body[i:i + (1 << 16)])

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def _blob_client(url: str, home: Path) -> RemoteRegistry:
    return RemoteRegistry(url, "t", home=home, backoff=0.001)


def test_download_resumes_from_the_part_file_and_verifies(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _blob_server(data) as (url, seen):
        reg = _blob_client(url, tmp_path / "c")
        part = reg.cache / "downloads" / f"{digest[7:]}.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[:123_456])  # left by a killed process
        dst = tmp_path / "out.bin"
        reg._downloads.download(digest, len(data), dst, "adapter_model.safetensors")
    assert dst.read_bytes() == data and seen == ["bytes=123456-"] and not part.exists()


def test_a_download_cut_short_continues_in_the_same_call(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _blob_server(data, cut=50_000) as (url, seen):
        _blob_client(url, tmp_path / "c")._downloads.download(digest, len(data), tmp_path / "out", "w")
    assert (tmp_path / "out").read_bytes() == data and seen == [None, "bytes=50000-"]


def test_a_server_ignoring_range_restarts_the_file(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _blob_server(data, honour_range=False) as (url, seen):
        reg = _blob_client(url, tmp_path / "c")
        part = reg.cache / "downloads" / f"{digest[7:]}.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"x" * 10)
        reg._downloads.download(digest, len(data), tmp_path / "out", "w")
    assert (tmp_path / "out").read_bytes() == data and seen == ["bytes=10-"]


def test_a_corrupt_part_file_is_deleted_and_named(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with _blob_server(data) as (url, _):
        reg = _blob_client(url, tmp_path / "c")
        part = reg.cache / "downloads" / f"{digest[7:]}.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"\0" * 60_000)  # wrong bytes: the resumed whole cannot hash right
        with pytest.raises(IntegrityError, match=rf"weights.bin: the bytes downloaded for blob {digest} hash to"):
            reg._downloads.download(digest, len(data), tmp_path / "out", "weights.bin")
        assert not part.exists() and not (tmp_path / "out").exists()
        reg._downloads.download(digest, len(data), tmp_path / "out", "weights.bin")  # the rerun starts clean
    assert (tmp_path / "out").read_bytes() == data


def test_a_disk_error_during_a_large_download_surfaces_without_hanging(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import registry.client.downloads as downloads

    data = os.urandom(12 << 20)  # large enough for the threaded writer
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    written = [0]
    real = downloads._write_all

    def failing(fd: int, chunk: bytes) -> None:
        if written[0] > 3 << 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, chunk)
        written[0] += len(chunk)

    with _blob_server(data) as (url, _):
        monkeypatch.setattr(downloads, "_write_all", failing)
        reg = _blob_client(url, tmp_path / "c")
        with pytest.raises(OSError, match="No space left"):
            reg._downloads.download(digest, len(data), tmp_path / "out", "w")
        part = reg.cache / "downloads" / f"{digest[7:]}.part"
        assert part.stat().st_size == written[0] and part.read_bytes() == data[:written[0]]  # no gap: resumable
        monkeypatch.setattr(downloads, "_write_all", real)
        reg._downloads.download(digest, len(data), tmp_path / "out", "w")
    assert (tmp_path / "out").read_bytes() == data


def test_uploads_continue_from_the_servers_offset(tmp_path: Path) -> None:
    data = os.urandom(250_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    held = bytearray(data[:100_000])  # an earlier push got this far
    patches: list[tuple[int, int]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Upload-Offset": str(len(held)), "Upload-Complete": "false"})
        offset = int(request.headers["upload-offset"])
        assert offset == len(held) and request.headers["upload-length"] == str(len(data))
        body = request.read()
        patches.append((offset, len(body)))
        if len(patches) == 2:
            held.extend(body[:1000])  # this one breaks after 1000 bytes arrived
            raise httpx.RemoteProtocolError("reset", request=request)
        held.extend(body)
        if len(held) == len(data):
            return httpx.Response(201, json={"digest": digest, "size": len(data)})
        return httpx.Response(204, headers={"Upload-Offset": str(len(held))})

    src = tmp_path / "blob"
    src.write_bytes(data)
    progress: list[int] = []
    sent = _mock(handler, tmp_path / "c", chunk_size=64_000)._upload(digest, src, len(data), "blob", progress.append)
    assert bytes(held) == data
    assert patches == [(100_000, 64_000), (164_000, 64_000), (165_000, 64_000), (229_000, 21_000)]
    assert sent == 64_000 + 1000 + 64_000 + 21_000 == len(data) - 100_000 and sum(progress) == len(data)


# ===== against a real server ==================================================================================

def test_python_client_push_pull_resolve_log_tag_round_trip(fresh_server: Server, tmp_path: Path) -> None:
    reg = _client(fresh_server, tmp_path)
    first = reg.push(write_swift_lora(tmp_path / "a", seed=1), "team/sql-lora", tag="v1", message="first")
    assert first.created and first.blobs_written == 3 and first.revision.number == 1
    assert first.revision.tags == ["v1"] and first.revision.format == "swift" and first.revision.message == "first"
    again = reg.push(tmp_path / "a", "team/sql-lora", tag="v1")
    assert not again.created and again.bytes_written == 0 and again.revision.number == 1
    second = reg.push(write_peft_lora(tmp_path / "b", seed=2), "team/sql-lora", message="second")
    assert second.created and second.revision.number == 2 and second.revision.branches == ["main"]

    swift = reg.resolve("team/sql-lora@v1")
    assert swift == reg.cache / "snapshots" / "team" / "sql-lora" / f"r1-swift-{first.revision.digest[7:23]}"
    assert (swift / "default" / "adapter_model.safetensors").is_file()
    peft = reg.resolve("team/sql-lora@v1", format="peft")
    assert json.loads((peft / "adapter_config.json").read_text())["peft_type"] == "LORA"
    local = Registry(home=tmp_path / "local")
    local.push(tmp_path / "a", "team/sql-lora")
    expected = local.resolve("team/sql-lora", format="peft")
    assert {p.name: p.read_bytes() for p in peft.iterdir()} == {p.name: p.read_bytes() for p in expected.iterdir()}
    assert reg.resolve("team/sql-lora") == reg.resolve("team/sql-lora@2") \
        == reg.resolve("team/sql-lora@" + second.revision.digest[:19])

    out = reg.pull("team/sql-lora@1", tmp_path / "pulled", format="peft")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in peft.iterdir())
    with pytest.raises(RegistryError, match="already exists"):
        reg.pull("team/sql-lora@1", out)
    assert reg.pull("team/sql-lora@2", out, overwrite=True) == out

    log = reg.log("team/sql-lora")
    assert [(r.number, r.tags, r.branches, r.message) for r in log] == [(2, [], ["main"], "second"),
                                                                         (1, ["v1"], [], "first")]
    shown = reg.show("team/sql-lora@v1")
    assert shown.digest == first.revision.digest and len(shown.manifest["files"]) == 3
    assert reg.tag("team/sql-lora@2", "v2").number == 2
    with pytest.raises(RefExistsError, match="immutable"):
        reg.tag("team/sql-lora@1", "v2")
    assert reg.tag("team/sql-lora@1", "v2", force=True).number == 1
    reg.untag("team/sql-lora", "v2")
    with pytest.raises(NotFoundError):
        reg.show("team/sql-lora@v2")
    with pytest.raises(RegistryError, match="--force"):
        reg.remove_ref("team/sql-lora@main")
    reg.tag("team/sql-lora", "gone")
    reg.remove_ref("team/sql-lora@gone")
    [repo] = reg.list("team")
    assert (repo.repo, repo.revisions, repo.main, repo.tuner_type) == ("team/sql-lora", 2, 2, "LORA")
    assert reg.list("nobody") == []

    with pytest.raises(NotFoundError):
        reg.resolve("team/none")
    with pytest.raises(InvalidIdError):
        reg.resolve("not an id")
    with pytest.raises(RefExistsError, match="already points to revision 1"):  # refused before any upload
        reg.push(write_peft_lora(tmp_path / "c", seed=3), "team/sql-lora", tag="v1")
    broken = write_peft_lora(tmp_path / "broken", seed=4)
    cfg = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**cfg, "r": 5}))
    before = _received(fresh_server)
    with pytest.raises(InvalidCheckpointError):
        reg.push(broken, "team/sql-lora")
    assert _received(fresh_server) == before  # refused here: nothing was sent


def test_a_tag_moved_on_the_server_is_seen_by_the_next_resolve(fresh_server: Server, tmp_path: Path) -> None:
    reader = _client(fresh_server, tmp_path, token="read")
    writer = RemoteRegistry(fresh_server.url, fresh_server.write_token, home=tmp_path / "writer")
    writer.push(write_peft_lora(tmp_path / "a", seed=1), "team/a", tag="prod")
    first = reader.resolve("team/a@prod")
    writer.push(write_peft_lora(tmp_path / "b", seed=2), "team/a", tag="prod", force=True)
    moved = reader.resolve("team/a@prod")
    assert moved != first and moved.name.startswith("r2-peft-")


def test_base_models_over_http(fresh_server: Server, tmp_path: Path, llama_base: Path) -> None:
    reg = _client(fresh_server, tmp_path)
    base = reg.push_base(llama_base, "meta/tiny-llama", tag="v1")
    assert base.created and base.revision.kind == "base" and base.revision.meta["architecture"] == "LlamaForCausalLM"
    assert not reg.push_base(llama_base, "meta/tiny-llama").created
    ok = reg.push(write_peft_lora(tmp_path / "a", seed=13), "team/x", base_model="meta/tiny-llama@v1")
    assert ok.revision.base_model == "meta/tiny-llama@1"
    with pytest.raises(NotFoundError, match="meta/none"):
        reg.push(tmp_path / "a", "team/y", base_model="meta/none")
    folder = reg.resolve("meta/tiny-llama@v1")
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))


def test_tokens_are_enforced_with_access_denied(fresh_server: Server, tmp_path: Path) -> None:
    ck = write_peft_lora(tmp_path / "a", seed=1)
    with pytest.raises(AccessDeniedError, match="unknown or revoked"):
        _client(fresh_server, tmp_path, token="srg_wrong").push(ck, "team/a")
    with pytest.raises(AccessDeniedError):
        _client(fresh_server, tmp_path, token=None).list()
    _client(fresh_server, tmp_path).push(ck, "team/a")
    with pytest.raises(AccessDeniedError, match="does not allow write"):
        _client(fresh_server, tmp_path, token="read").push(write_peft_lora(tmp_path / "b", seed=2), "team/a")
    with pytest.raises(AccessDeniedError):
        _client(fresh_server, tmp_path, token="srg_wrong").resolve("team/a")
    with pytest.raises(AccessDeniedError):
        _client(fresh_server, tmp_path).gc()
    assert _client(fresh_server, tmp_path, token="read").resolve("team/a").is_dir()
    admin = _client(fresh_server, tmp_path, token="admin")
    assert admin.gc(grace_seconds=0, dry_run=True).blobs_removed == 0
    assert admin.stats()["blobs_stored"] == 3


def test_the_cli_works_against_swiftreg_url(fresh_server: Server, tmp_path: Path) -> None:
    env = _cli_env(fresh_server.url, fresh_server.write_token, tmp_path / "cli-home")
    pushed = json.loads(_swiftreg(env, "push", write_swift_lora(tmp_path / "a", seed=1), "team/sql-lora",
                                  "--tag", "v1", "-m", "first", "--json").stdout)
    assert pushed["created"] and pushed["revision"]["number"] == 1 and pushed["blobs_written"] == 3
    _swiftreg(env, "push", write_peft_lora(tmp_path / "b", seed=2), "team/sql-lora", "-m", "second")
    unchanged = _swiftreg(env, "push", tmp_path / "b", "team/sql-lora").stdout
    assert unchanged.startswith("unchanged: already team/sql-lora@2") and "0 new blobs" in unchanged
    log = json.loads(_swiftreg(env, "log", "team/sql-lora", "--json").stdout)
    assert [(r["number"], r["tags"], r["branches"], r["message"]) for r in log] == [
        (2, [], ["main"], "second"), (1, ["v1"], [], "first")]
    out = Path(_swiftreg(env, "pull", "team/sql-lora@v1", "--format", "peft", "-o", tmp_path / "pulled")
               .stdout.strip())
    assert out == tmp_path / "pulled" and json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    cached = Path(_swiftreg(env, "pull", "team/sql-lora@v1").stdout.strip())
    assert cached.is_relative_to(tmp_path / "cli-home" / "remote") and (cached / "default").is_dir()
    assert "team/sql-lora" in _swiftreg(env, "ls").stdout
    assert "default/adapter_model.safetensors" in _swiftreg(env, "show", "team/sql-lora@v1").stdout
    _swiftreg(env, "tag", "team/sql-lora@2", "v2")
    _swiftreg(env, "untag", "team/sql-lora@v2")
    missing = _swiftreg(env, "pull", "team/none", ok=False)
    assert missing.returncode == 1 and "no adapter or base model team/none" in missing.stderr
    upgrade = _swiftreg(env, "db", "upgrade", ok=False)
    assert upgrade.returncode == 1 and "not available over HTTP" in upgrade.stderr
    denied = _swiftreg(_cli_env(fresh_server.url, "srg_wrong", tmp_path / "cli-home"), "ls", ok=False)
    assert denied.returncode == 1 and "unknown or revoked" in denied.stderr and "Traceback" not in denied.stderr
    down = _swiftreg(_cli_env(f"http://127.0.0.1:{free_port()}", "t", tmp_path / "cli-home"), "ls", ok=False)
    assert down.returncode == 1 and "no usable answer" in down.stderr and "Traceback" not in down.stderr


def test_worker_commands_read_and_push_over_http(fresh_server: Server, tmp_path: Path) -> None:
    env = _cli_env(fresh_server.url, fresh_server.write_token, tmp_path / "cli-home")
    reg = _client(fresh_server, tmp_path)
    reg.push(write_peft_lora(tmp_path / "a", seed=1), "team/a")
    reg.push(write_swift_lora(tmp_path / "b", seed=2), "team/b")
    done = json.loads(_swiftreg(env, "combine", "team/a", "team/b", "--weights", "0.6,0.4", "--method", "cat",
                                "--push", "team/ab", "--tag", "v1", "--json").stdout)
    assert done["passed"] and done["pushed"]["repo"] == "team/ab" and done["pushed"]["tags"] == ["v1"]
    lineage = reg.show("team/ab@v1").parents
    assert [p.get("repo") for p in lineage if p.get("role", "").startswith("source")] == ["team/a", "team/b"]


def test_a_repush_changing_one_file_uploads_only_that_file(fresh_server: Server, tmp_path: Path) -> None:
    reg = _client(fresh_server, tmp_path)
    ck = write_peft_lora(tmp_path / "a", seed=1)
    files = sorted(p.name for p in ck.iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    start = _received(fresh_server)
    first = reg.push(ck, "team/a")
    total = sum(p.stat().st_size for p in ck.iterdir())
    assert _received(fresh_server) - start == total == first.bytes_written
    (ck / "README.md").write_text("# a longer description of the same adapter\n")
    before = _received(fresh_server)
    second = reg.push(ck, "team/a")
    assert second.created and second.revision.number == 2 and second.blobs_written == 1
    assert _received(fresh_server) - before == (ck / "README.md").stat().st_size == second.bytes_written
    before = _received(fresh_server)
    assert not reg.push(ck, "team/a").created and _received(fresh_server) == before


PUSHER = """
import sys, time
from registry.client import RemoteRegistry
url, token, home, folder = sys.argv[1:5]
reg = RemoteRegistry(url, token, home=home, chunk_size=1 << 20)
reg.push(folder, "team/big", progress=lambda n: time.sleep(0.05))   # slow enough to be killed midway
print("finished")
"""


def test_a_killed_push_resumes_from_the_servers_offset(fresh_server: Server, tmp_path: Path) -> None:
    ck = write_big_peft(tmp_path / "big", megabytes=50)
    weights = ck / "adapter_model.safetensors"
    digest, size = _sha(weights), weights.stat().st_size
    blobs = sum(p.stat().st_size for p in ck.iterdir())
    proc = subprocess.Popen([sys.executable, "-c", PUSHER, fresh_server.url, fresh_server.write_token,
                             str(tmp_path / "c1"), str(ck)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _received(fresh_server) < 8 << 20:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # let the server finish with the cut request
    killed_at = _received(fresh_server)
    assert 8 << 20 <= killed_at < blobs
    reg = _client(fresh_server, tmp_path)
    offset, complete = reg._upload_offset(digest)
    assert not complete and 0 < offset < size
    with pytest.raises(NotFoundError):
        reg.show("team/big")  # nothing was committed

    result = reg.push(ck, "team/big")
    assert result.created and result.blobs_written == 1
    assert result.bytes_written == size - offset  # exactly the bytes the server lacked
    assert blobs <= _received(fresh_server) <= blobs + (1 << 20)  # at most one chunk was sent twice
    served = Registry(home=fresh_server.home, database_url=fresh_server.database_url)
    try:
        assert served.verify("team/big") == []
    finally:
        served.close()
    assert _sha(reg.resolve("team/big") / "adapter_model.safetensors") == digest


class Proxy:
    """A TCP proxy to the server that counts, stalls or cuts the responses to GETs of one blob."""

    def __init__(self, upstream: int, digest: str) -> None:
        self.upstream, self.marker = upstream, f"GET /api/v1/blobs/{digest}".encode()
        self.drop_after: int | None = None   # close the connection after this many response bytes (once)
        self.stall_after: int | None = None  # stop forwarding after this many response bytes
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", self.port),
                                         self.loop).result(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        current: list[dict[str, Any] | None] = [None]

        async def upstream() -> None:
            while data := await reader.read(1 << 16):
                if self.marker in data:
                    head = data.decode("latin-1")
                    match = re.search(r"(?im)^range: *(\S+)\r?$", head)
                    current[0] = {"range": match.group(1) if match else None, "bytes": 0}
                    self.requests.append(current[0])
                elif re.match(rb"[A-Z]+ /", data):
                    current[0] = None
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            while data := await up_reader.read(1 << 16):
                record = current[0]
                if record is not None:
                    limit = self.drop_after if self.drop_after is not None else self.stall_after
                    if limit is not None and record["bytes"] + len(data) >= limit:
                        data = data[:limit - record["bytes"]]
                        record["bytes"] += len(data)
                        writer.write(data)
                        await writer.drain()
                        if self.drop_after is not None:
                            self.drop_after = None
                            writer.transport.abort()
                            up_writer.close()
                            return
                        await asyncio.Event().wait()  # stalled until the client dies
                    record["bytes"] += len(data)
                writer.write(data)
                await writer.drain()
            writer.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)

    def close(self) -> None:
        async def stop() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _pushed_big(server: Server, tmp_path: Path, megabytes: int) -> tuple[Path, str, int]:
    ck = write_big_peft(tmp_path / "big", megabytes=megabytes)
    RemoteRegistry(server.url, server.write_token, home=tmp_path / "pusher").push(ck, "team/big", tag="v1")
    weights = ck / "adapter_model.safetensors"
    return weights, _sha(weights), weights.stat().st_size


def test_a_cut_download_resumes_with_range_in_the_same_call(fresh_server: Server, tmp_path: Path) -> None:
    weights, digest, size = _pushed_big(fresh_server, tmp_path, 20)
    proxy = Proxy(int(fresh_server.url.rsplit(":", 1)[1]), digest)
    try:
        proxy.drop_after = 7_000_000
        reg = RemoteRegistry(proxy.url, fresh_server.read_token, home=tmp_path / "c")
        folder = reg.resolve("team/big@v1")
        assert _sha(folder / "adapter_model.safetensors") == digest
        first, second = proxy.requests
        assert first["range"] is None and first["bytes"] == 7_000_000
        received = first["bytes"] - 1024  # less its response head (under 1 KiB)
        assert second["range"] is not None and int(second["range"][6:-1]) >= received
        assert first["bytes"] + second["bytes"] <= size + 2048  # nothing downloaded twice
    finally:
        proxy.close()


def test_a_killed_pull_resumes_from_its_part_file_in_a_new_process(fresh_server: Server, tmp_path: Path) -> None:
    weights, digest, size = _pushed_big(fresh_server, tmp_path, 50)
    proxy = Proxy(int(fresh_server.url.rsplit(":", 1)[1]), digest)
    home = tmp_path / "cli-home"
    part = home / "remote" / f"127.0.0.1_{proxy.port}" / "downloads" / f"{digest[7:]}.part"
    try:
        proxy.stall_after = 30_000_000
        env = _cli_env(proxy.url, fresh_server.read_token, home)
        proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "pull", "team/big@v1", "-o",
                                 str(tmp_path / "out")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        last = -1
        while True:  # until 30 MB went through and the .part stopped growing (the client waits for more)
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the pull never got 30 MB through the proxy"
            time.sleep(0.2)
            now = part.stat().st_size if part.is_file() else 0
            if proxy.requests and proxy.requests[0]["bytes"] >= 30_000_000 and now == last:
                break
            last = now
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept = part.stat().st_size
        # the client writes what arrives in batches of up to SINK_BATCH: a kill loses at most the last one
        assert 30_000_000 - SINK_BATCH - 1024 <= kept < size and not (tmp_path / "out").exists()

        proxy.stall_after = None
        done = _swiftreg(env, "pull", "team/big@v1", "-o", tmp_path / "out")
        assert Path(done.stdout.strip()) == tmp_path / "out"
        assert _sha(tmp_path / "out" / "adapter_model.safetensors") == digest and not part.exists()
        rerun = proxy.requests[1:]
        assert [r["range"] for r in rerun] == [f"bytes={kept}-"]
        assert size - kept <= rerun[0]["bytes"] <= size - kept + 1024  # only the missing bytes (+ the head)
    finally:
        proxy.close()


def test_a_corrupt_download_is_refused_naming_file_and_blob(fresh_server: Server, tmp_path: Path) -> None:
    reg = _client(fresh_server, tmp_path, token="read")
    writer = RemoteRegistry(fresh_server.url, fresh_server.write_token, home=tmp_path / "w")
    writer.push(write_peft_lora(tmp_path / "a"), "team/a")
    digest = _sha(tmp_path / "a" / "adapter_model.safetensors")
    part = reg.cache / "downloads" / f"{digest[7:]}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 100)
    with pytest.raises(IntegrityError, match=rf"adapter_model.safetensors: the bytes downloaded for blob {digest}"):
        reg.resolve("team/a")
    assert not part.exists() and not list((reg.cache / "snapshots" / "team" / "a").glob("r1-*"))
    assert (reg.resolve("team/a") / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "a" / "adapter_model.safetensors").read_bytes()


def test_a_revision_sharing_files_with_a_cached_one_downloads_only_the_new_files(fresh_server: Server,
                                                                                  tmp_path: Path) -> None:
    weights, digest, size = _pushed_big(fresh_server, tmp_path, 10)
    (tmp_path / "big" / "README.md").write_text("# revision 2\n")
    pusher = RemoteRegistry(fresh_server.url, fresh_server.write_token, home=tmp_path / "pusher")
    pusher.push(tmp_path / "big", "team/big")
    proxy = Proxy(int(fresh_server.url.rsplit(":", 1)[1]), digest)
    try:
        reg = RemoteRegistry(proxy.url, fresh_server.read_token, home=tmp_path / "c")
        reg.resolve("team/big@1")
        assert len(proxy.requests) == 1
        second = reg.resolve("team/big@2")
        assert len(proxy.requests) == 1  # the weights came from the cached revision 1
        assert (second / "README.md").read_text() == "# revision 2\n"
        assert _sha(second / "adapter_model.safetensors") == digest
    finally:
        proxy.close()


def test_resolve_works_offline_once_cached(fresh_server: Server, tmp_path: Path) -> None:
    writer = RemoteRegistry(fresh_server.url, fresh_server.write_token, home=tmp_path / "w")
    writer.push(write_peft_lora(tmp_path / "a", seed=1), "team/a", tag="v1")
    reg = _client(fresh_server, tmp_path, token="read", retries=1)
    tagged = reg.resolve("team/a@v1")
    peft_main = reg.resolve("team/a", format="swift")
    numbered = reg.resolve("team/a@1")
    fresh_server.process.terminate()
    fresh_server.process.wait(30)
    assert reg.resolve("team/a@v1") == tagged
    assert reg.resolve("team/a@1") == numbered
    fresh = _client(fresh_server, tmp_path, token="read", retries=0)  # another process: only the files on disk
    assert fresh.resolve("team/a@v1") == tagged
    assert fresh.resolve("team/a", format="swift") == peft_main
    assert fresh.resolve("team/a@1") == numbered
    with pytest.raises(ServerUnreachableError):
        fresh.resolve("team/a@v2")  # never resolved: nothing to fall back on
    with pytest.raises(ServerUnreachableError):
        fresh.list()
    env = _cli_env(fresh_server.url, fresh_server.read_token, tmp_path / "client")
    assert Path(_swiftreg(env, "pull", "team/a@v1").stdout.strip()) == tagged
