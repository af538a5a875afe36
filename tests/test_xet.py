"""The Xet upload protocol on a real `swiftreg serve`, driven by the unmodified huggingface_hub + hf_xet.

No test sets HF_HUB_DISABLE_XET: the client pushes through Xet as it does against the Hub. The parsers
are checked on what hf_xet itself produced (the xorbs and shards the server kept, byte for byte as
received); the refusals are crafted with httpx (a corrupted xorb, a shard naming a xorb never uploaded,
a sha256 that does not match the reconstruction), and none of them leaves a blob or a revision.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import hf_xet  # noqa: F401 - the client under test: a missing one fails collection, never skips
import httpx
import numpy as np
import pytest

from registry.xet import hashing, shard, xorb
from tests.helpers.server import Server, running_server

pytestmark = [pytest.mark.xet, pytest.mark.server]

PRELUDE = '''
import json, os, sys
from pathlib import Path
from huggingface_hub import HfApi
url, token, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
api = HfApi(endpoint=url, token=token)
out = {}
'''


def hub(server: Server, body: str, work: Path, token: str | None = None) -> dict[str, Any]:
    """Run `body` with the stock huggingface_hub (hf_xet enabled) in a clean subprocess; it fills `out`."""
    work.mkdir(parents=True, exist_ok=True)
    script = work / f"client-{abs(hash(body))}.py"
    script.write_text(PRELUDE + textwrap.dedent(body) + "\nprint('@@' + json.dumps(out))\n")
    done = subprocess.run([sys.executable, str(script), server.url, token or server.write_token, str(work)],
                          env=client_env(work), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1][2:])


def client_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "SWIFTREG_"))}
    env.update(HF_HOME=str(work / "hf-home"), HF_XET_CACHE=str(work / "xet-cache"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1")
    assert "HF_HUB_DISABLE_XET" not in env
    return env


@pytest.fixture(scope="module")
def xsrv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("xet-server")
    with running_server(root / "home", f"sqlite:///{root / 'registry.db'}") as srv:
        yield srv


def xet_root(server: Server) -> Path:
    return server.home / "blobs" / "xet"


def blob_path(server: Server, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return server.home / "blobs" / "sha256" / hexd[:2] / hexd[2:]


def cas_token(server: Server, repo: str, token: str | None = None) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/api/models/{repo}/xet-write-token/main",
                  headers={"authorization": f"Bearer {token or server.write_token}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Xet-Access-Token"] == body["accessToken"] and r.headers["X-Xet-Cas-Url"] == body["casUrl"]
    return body


def stats(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.url}/api/v1/stats", headers={"authorization": f"Bearer {server.admin_token}"}).json()


# ----- crafted xorbs and shards (for the refusals) ------------------------------------------------------------

def make_xorb(pieces: list[bytes]) -> tuple[bytes, bytes, list[tuple[bytes, int]]]:
    """(xorb hash, the xorb's bytes with each piece an uncompressed chunk, [(chunk hash, size)])."""
    body = b"".join(bytes([0]) + len(p).to_bytes(3, "little") + bytes([0]) + len(p).to_bytes(3, "little") + p
                    for p in pieces)
    chunks = [(hashing.chunk_hash(p), len(p)) for p in pieces]
    return hashing.xorb_hash(chunks), body, chunks


def make_shard(files: list[tuple[bytes, list[tuple[bytes, int, int, int]], str]],
               xorbs: list[tuple[bytes, list[tuple[bytes, int]]]]) -> bytes:
    """An upload shard: files (Xet hash, [(xorb, bytes, first chunk, end chunk)], sha256 hex) and new xorbs."""
    out = bytearray(shard.TAG + struct.pack("<QQ", 2, 0))
    for fhash, segments, sha in files:
        out += struct.pack("<32sIIQ", fhash, shard.WITH_METADATA_EXT, len(segments), 0)
        for xh, size, start, end in segments:
            out += struct.pack("<32sIIII", xh, 0, size, start, end)
        out += hashing.from_hex(sha) + bytes(16)
    out += shard.BOOKEND + bytes(16)
    for xh, chunks in xorbs:
        out += struct.pack("<32sIIII", xh, 0, len(chunks), sum(s for _, s in chunks), 0)
        offset = 0
        for ch, size in chunks:
            out += struct.pack("<32sIIII", ch, offset, size, 0, 0)
            offset += size
    out += shard.BOOKEND + bytes(16)
    return bytes(out)


# ----- the parsers, on what hf_xet produced ---------------------------------------------------------------------

class Capture(http.server.BaseHTTPRequestHandler):
    """A stand-in CAS that records what hf_xet sends: the token route, xorbs and shards accepted, the rest 404."""

    protocol_version = "HTTP/1.1"
    bodies: dict[str, bytes] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if "/xet-write-token/" in self.path:
            cas, exp = f"http://127.0.0.1:{self.server.server_address[1]}/cas", int(time.time()) + 3600
            body = json.dumps({"accessToken": "t", "exp": exp, "casUrl": cas}).encode()
            return self._answer(200, body, {"Content-Type": "application/json", "X-Xet-Cas-Url": cas,
                                            "X-Xet-Access-Token": "t", "X-Xet-Token-Expiration": str(exp)})
        self._answer(404)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "/cas/v1/xorbs/" in self.path or self.path == "/cas/v1/shards":
            self.bodies[self.path] = body
            return self._answer(200, b'{"was_inserted":true}' if "xorbs" in self.path else b'{"result":1}',
                                {"Content-Type": "application/json"})
        self._answer(404)


def test_parsers_verify_what_hf_xet_sends(tmp_path: Path) -> None:
    """Random bytes (sent as they are), text (LZ4) and float32 weights (byte-grouped LZ4) go through the real
    client to a recording stand-in; every xorb it sent verifies chunk by chunk, its shard parses, and each
    file's Xet hash, verification hashes, sha256 and bytes are what the file gives."""
    rng = np.random.default_rng(7)
    data = tmp_path / "data"
    data.mkdir()
    (data / "random.bin").write_bytes(rng.bytes(700_000))
    words = np.array(["lora", "rank", "alpha", "layer", "weight", "bias"])
    (data / "notes.txt").write_text(" ".join(f"{w}{i % 97}" for i, w in enumerate(rng.choice(words, 150_000))))
    (data / "weights.bin").write_bytes(rng.standard_normal(400_000).astype(np.float32).tobytes())
    Capture.bodies = {}
    cas = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    thread = threading.Thread(target=cas.serve_forever, daemon=True)
    thread.start()
    try:
        fake = Server(f"http://127.0.0.1:{cas.server_address[1]}", tmp_path, "", "", "t", "", None)  # type: ignore
        out = hub(fake, '''
            from huggingface_hub._commit_api import CommitOperationAdd, _upload_xet_files
            files = sorted((work.parent / "data").iterdir())
            ops = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
            _upload_xet_files(additions=ops, repo_type="model", repo_id="alice/parse", headers=api._build_hf_headers(),
                              endpoint=url, revision="main")
            out["sha256"] = {op.path_in_repo: op.upload_info.sha256.hex() for op in ops}
        ''', tmp_path / "w")
    finally:
        cas.shutdown()
    xorbs = {hashing.from_hex(k.rsplit("/", 1)[1]): v for k, v in Capture.bodies.items() if "/xorbs/" in k}
    assert xorbs and "/cas/v1/shards" in Capture.bodies
    schemes: set[int] = set()
    stored: dict[bytes, list[xorb.Chunk]] = {}
    for name, raw in xorbs.items():
        stored[name] = xorb.verify(io.BytesIO(raw), len(raw), name)
        schemes |= {raw[c.offset + 4] for c in stored[name]}
        with pytest.raises(xorb.XorbError):  # the same bytes under another name
            xorb.verify(io.BytesIO(raw), len(raw), bytes(32))
    assert schemes == {0, 1, 2}, schemes
    parsed = shard.parse(Capture.bodies["/cas/v1/shards"])
    assert {f.sha256 for f in parsed.files} == {"sha256:" + h for h in out["sha256"].values()}
    assert {x.hash for x in parsed.xorbs} == set(xorbs)
    by_sha = {f.sha256: f for f in parsed.files}
    for name, sha in out["sha256"].items():
        content = (data / name).read_bytes()
        assert hashlib.sha256(content).hexdigest() == sha
        info = by_sha["sha256:" + sha]
        nodes = [(c.hash, c.size) for s in info.segments for c in stored[s.xorb][s.start:s.end]]
        assert hashing.file_hash(nodes) == info.hash and info.size == len(content)
        assert info.verification == [hashing.range_hash([c.hash for c in stored[s.xorb][s.start:s.end]])
                                     for s in info.segments]
        rebuilt = b"".join(xorb.read_chunk(io.BytesIO(xorbs[s.xorb]), c)
                           for s in info.segments for c in stored[s.xorb][s.start:s.end])
        assert rebuilt == content
    answer = shard.dedup_answer([(h, [(c.hash, c.size) for c in cs], 1) for h, cs in stored.items()])
    again = shard.parse(answer)
    assert {x.hash: [(c.hash, c.size) for c in x.chunks] for x in again.xorbs} == \
        {h: [(c.hash, c.size) for c in cs] for h, cs in stored.items()}
    assert struct.unpack_from("<Q", answer, 40)[0] == shard.FOOTER_SIZE


def test_regroup4_undoes_byte_grouping() -> None:
    for n in range(0, 13):
        data = bytes(range(n))
        grouped = b"".join(data[k::4] for k in range(4))
        assert xorb.regroup4(grouped) == data


# ----- tokens and crafted refusals ------------------------------------------------------------------------------

def test_tokens_are_scoped_short_lived_and_checked_before_the_body(xsrv: Server) -> None:
    repo = "alice/tok"
    assert httpx.get(f"{xsrv.url}/api/models/{repo}/xet-write-token/main").status_code == 401
    read = httpx.get(f"{xsrv.url}/api/models/{repo}/xet-write-token/main",
                     headers={"authorization": f"Bearer {xsrv.read_token}"})
    assert read.status_code == 403
    other = xsrv.token("write", "bob")
    assert httpx.get(f"{xsrv.url}/api/models/{repo}/xet-write-token/main",
                     headers={"authorization": f"Bearer {other}"}).status_code == 403
    grant = cas_token(xsrv, repo)
    assert grant["casUrl"] == f"{xsrv.url}/xet/cas"
    assert time.time() < grant["exp"] <= time.time() + 3600
    h, body, _ = make_xorb([b"x" * 1000])
    url = f"{grant['casUrl']}/v1/xorbs/default/{hashing.to_hex(h)}"
    prefix, _, signature = grant["accessToken"].rpartition(".")
    tampered = prefix[:-2] + ("AA" if prefix[-2:] != "AA" else "BB") + "." + signature
    for headers in ({}, {"authorization": f"Bearer {xsrv.write_token}"}, {"authorization": "Bearer xet1.forged.00"},
                    {"authorization": f"Bearer {tampered}"}):
        r = httpx.post(url, content=body, headers=headers)
        assert r.status_code == 401, r.text
    assert not (xet_root(xsrv) / "xorbs" / hashing.to_hex(h)[:2] / f"{hashing.to_hex(h)}.data").exists()
    # the grant is signed with the registry's key: an expired one, or one for another operation, is refused
    import dataclasses

    from registry.server.xet import KEY_FILE, Grant

    key = bytes.fromhex((xsrv.home / KEY_FILE).read_text())
    mine = Grant.decode(grant["accessToken"], key)
    assert mine is not None and mine.repo == repo and mine.op == "write"
    expired = dataclasses.replace(mine, exp=int(time.time()) - 1).encode(key)
    assert httpx.post(url, content=body, headers={"authorization": f"Bearer {expired}"}).status_code == 401
    reading = dataclasses.replace(mine, op="read").encode(key)
    assert httpx.post(url, content=body, headers={"authorization": f"Bearer {reading}"}).status_code == 403
    assert httpx.post(url, content=body, headers={"authorization": f"Bearer {grant['accessToken']}"}).status_code \
        == 200
    # revoking the registry token stops its CAS tokens at once
    from registry import tokens
    from registry.service import Registry

    secret = xsrv.token("write", "alice")
    doomed = cas_token(xsrv, repo, secret)
    doomed_auth = {"authorization": f"Bearer {doomed['accessToken']}"}
    assert httpx.post(url, content=body, headers=doomed_auth).status_code == 200
    reg = Registry(home=xsrv.home, database_url=xsrv.database_url)
    try:
        info = tokens.verify(reg, secret)
        assert info is not None
        tokens.revoke(reg, info.id)
    finally:
        reg.close()
    assert httpx.post(url, content=body, headers=doomed_auth).status_code == 401
    assert httpx.get(f"{xsrv.url}/api/models/{repo}/xet-read-token/main",
                     headers={"authorization": f"Bearer {xsrv.write_token}"}).status_code == 404


def test_crafted_refusals_leave_nothing(xsrv: Server) -> None:
    """A corrupted xorb, a shard naming a xorb (or chunks) never uploaded, and a sha256 the reconstruction does
    not give are refused; nothing of theirs is kept, and a correct shard then goes through."""
    grant = cas_token(xsrv, "alice/crafted")
    cas, auth = grant["casUrl"], {"authorization": f"Bearer {grant['accessToken']}"}
    rng = np.random.default_rng(3)
    pieces = [rng.bytes(5000), rng.bytes(7000), rng.bytes(3000)]
    content = b"".join(pieces)
    sha = hashlib.sha256(content).hexdigest()
    h, body, chunks = make_xorb(pieces)
    name = hashing.to_hex(h)
    fhash = hashing.file_hash(chunks)

    corrupted = bytearray(body)
    corrupted[100] ^= 0xFF
    r = httpx.post(f"{cas}/v1/xorbs/default/{name}", content=bytes(corrupted), headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "xet_refused", r.text
    assert "hash to" in r.json()["error"]["message"]
    lz4_garbage = bytes([0]) + (50).to_bytes(3, "little") + bytes([1]) + (100).to_bytes(3, "little") + b"\x00" * 50
    bad = httpx.post(f"{cas}/v1/xorbs/default/{name}", content=lz4_garbage, headers=auth)
    assert bad.status_code == 400 and "LZ4" in bad.json()["error"]["message"], bad.text
    assert not list(xet_root(xsrv).glob(f"xorbs/*/{name}.*"))

    never = make_shard([(fhash, [(h, len(content), 0, 3)], sha)], [])
    r = httpx.post(f"{cas}/v1/shards", content=never, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "xet_missing", r.text
    assert not blob_path(xsrv, sha).exists()

    assert httpx.post(f"{cas}/v1/xorbs/default/{name}", content=body, headers=auth).json() == {"was_inserted": True}
    assert httpx.post(f"{cas}/v1/xorbs/default/{name}", content=body, headers=auth).json() == {"was_inserted": False}

    past_end = make_shard([(fhash, [(h, len(content), 0, 4)], sha)], [(h, chunks)])
    r = httpx.post(f"{cas}/v1/shards", content=past_end, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "xet_missing", r.text
    wrong_hash = make_shard([(bytes(32), [(h, len(content), 0, 3)], sha)], [(h, chunks)])
    r = httpx.post(f"{cas}/v1/shards", content=wrong_hash, headers=auth)
    assert r.status_code == 400 and "Xet hash" in r.json()["error"]["message"], r.text
    liar = hashlib.sha256(b"someone else's file").hexdigest()
    r = httpx.post(f"{cas}/v1/shards", content=make_shard([(fhash, [(h, len(content), 0, 3)], liar)], [(h, chunks)]),
                   headers=auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "digest_mismatch", r.text
    assert not blob_path(xsrv, liar).exists() and not blob_path(xsrv, sha).exists()
    # ... and a commit naming the claimed sha256 (as the client's next step would) makes no revision
    hub_auth = {"authorization": f"Bearer {xsrv.write_token}"}
    assert httpx.post(f"{xsrv.url}/api/repos/create", json={"name": "crafted", "organization": "alice"},
                      headers=hub_auth).status_code in (200, 409)
    ndjson = "\n".join(json.dumps(line) for line in (
        {"key": "header", "value": {"summary": "crafted"}},
        {"key": "lfsFile", "value": {"path": "adapter_model.safetensors", "algo": "sha256", "oid": liar,
                                     "size": len(content)}}))
    commit = httpx.post(f"{xsrv.url}/api/models/alice/crafted/commit/main", content=ndjson,
                        headers={**hub_auth, "content-type": "application/x-ndjson"})
    assert 400 <= commit.status_code < 500, commit.text
    assert httpx.get(f"{xsrv.url}/api/v1/repos/alice/crafted/revisions", headers=hub_auth).json() == []
    assert not list(xet_root(xsrv).glob(f"xorbs/*/{name}.files"))
    assert httpx.post(f"{cas}/v1/shards", content=b"not a shard", headers=auth).status_code == 400

    good = make_shard([(fhash, [(h, len(content), 0, 3)], sha)], [(h, chunks)])
    r = httpx.post(f"{cas}/v1/shards", content=good, headers=auth)
    assert r.status_code == 200 and r.json() == {"result": 1}, r.text
    assert blob_path(xsrv, sha).read_bytes() == content

    # a later file on those chunks is rebuilt from the xorb's data, whatever became of the earlier file's blob
    damaged = blob_path(xsrv, sha)
    damaged.chmod(0o644)
    damaged.write_bytes(b"\0" * len(content))
    part = b"".join(pieces[:2])
    part_sha = hashlib.sha256(part).hexdigest()
    r = httpx.post(f"{cas}/v1/shards", headers=auth,
                   content=make_shard([(hashing.file_hash(chunks[:2]), [(h, len(part), 0, 2)], part_sha)], []))
    assert r.status_code == 200, r.text
    assert blob_path(xsrv, part_sha).read_bytes() == part

    # the global dedup query answers the uploader for the file's first chunk, not a token of another namespace
    first = hashing.to_hex(chunks[0][0])
    mine = httpx.get(f"{cas}/v1/chunks/default/{first}", headers=auth)
    assert mine.status_code == 200 and [x.hash for x in shard.parse(mine.content).xorbs] == [h]
    bob = cas_token(xsrv, "bob/x", xsrv.token("write", "bob"))
    theirs = httpx.get(f"{bob['casUrl']}/v1/chunks/default/{first}",
                       headers={"authorization": f"Bearer {bob['accessToken']}"})
    assert theirs.status_code == 404
    # nor can bob build a file on alice's xorb, even knowing every hash, or by posting junk under its name
    bob_auth = {"authorization": f"Bearer {bob['accessToken']}"}
    r = httpx.post(f"{bob['casUrl']}/v1/xorbs/default/{name}", content=bytes(corrupted), headers=bob_auth)
    assert r.status_code == 400, r.text
    r = httpx.post(f"{bob['casUrl']}/v1/shards", content=good, headers=bob_auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "xet_missing", r.text
    # bob holding the bytes (uploading the whole xorb) may
    assert httpx.post(f"{bob['casUrl']}/v1/xorbs/default/{name}", content=body, headers=bob_auth).json() == \
        {"was_inserted": False}
    assert httpx.post(f"{bob['casUrl']}/v1/shards", content=good, headers=bob_auth).status_code == 200


# ----- gc ---------------------------------------------------------------------------------------------------------

UPLOAD_ONE = '''
    from huggingface_hub._commit_api import CommitOperationAdd, _upload_xet_files
    op = CommitOperationAdd(path_in_repo="f", path_or_fileobj=sys.argv[4])
    _upload_xet_files(additions=[op], repo_type="model", repo_id="alice/gc", headers=api._build_hf_headers(),
                      endpoint=url, revision="main")
'''


def test_gc_reclaims_xorbs_and_shards_no_revision_needs(tmp_path: Path) -> None:
    """Two files uploaded through Xet in two sessions: the one a revision names keeps its xorb and shard through
    a gc with no grace; the other's go."""
    from registry.service import Registry
    from tests.helpers.checkpoints import write_peft_lora

    kept = write_peft_lora(tmp_path / "kept", seed=1)
    loose = tmp_path / "loose.bin"
    loose.write_bytes(np.random.default_rng(9).bytes(300_000))
    with running_server(tmp_path / "home", f"sqlite:///{tmp_path / 'registry.db'}") as srv:
        for i, path in enumerate((kept / "adapter_model.safetensors", loose)):
            script = tmp_path / f"up{i}.py"
            script.write_text(PRELUDE + textwrap.dedent(UPLOAD_ONE))
            done = subprocess.run([sys.executable, str(script), srv.url, srv.write_token, str(tmp_path / f"w{i}"),
                                   str(path)], env=client_env(tmp_path / f"w{i}"), capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
        root = xet_root(srv)
        assert len(list(root.glob("xorbs/*/*.data"))) == 2 and len(list(root.glob("shards/*.shard"))) == 2
        reg = Registry(home=srv.home, database_url=srv.database_url)
        try:
            reg.push(kept, "alice/gc")
            young = reg.gc(grace_seconds=3600)
            assert young.xet_removed == 0
            result = reg.gc(grace_seconds=0)
        finally:
            reg.close()
        assert result.xet_removed == 2 and result.xet_bytes_removed > 300_000
        weights = "sha256:" + hashlib.sha256((kept / "adapter_model.safetensors").read_bytes()).hexdigest()
        left = list(root.glob("xorbs/*/*.data"))
        assert len(left) == 1
        assert [line.split()[0] for line in left[0].with_suffix(".files").read_text().splitlines()] == [weights]
        assert len(list(root.glob("shards/*.shard"))) == 1
        assert not blob_path(srv, "sha256:" + hashlib.sha256(loose.read_bytes()).hexdigest()).exists()


# ----- pushes by the unmodified clients land as `swiftreg push` revisions ------------------------------------

def same_revision(server: Server, xet_repo: str, folder: Path, cli_repo: str) -> None:
    """`xet_repo`'s head is what `swiftreg push` (the product's client) makes of `folder` in `cli_repo`."""
    from registry import RemoteRegistry

    remote = RemoteRegistry(server.url, server.write_token, home=folder.parent / "client-home")
    pushed = remote.push(folder, cli_repo).revision
    got = remote.show(xet_repo)
    assert (got.format, got.manifest) == (pushed.format, pushed.manifest)
    assert got.digest == pushed.digest


def xet_files(server: Server) -> set[str]:
    """The sha256 digests of every file that arrived through Xet (named by an accepted shard)."""
    return {f.sha256 for p in xet_root(server).glob("shards/*.shard") for f in shard.parse(p.read_bytes()).files
            if f.sha256}


def test_upload_folder_of_a_swift_checkpoint(xsrv: Server, tmp_path: Path) -> None:
    from tests.helpers.checkpoints import write_swift_lora

    folder = write_swift_lora(tmp_path / "swift", seed=11, r=16, layers=4)
    out = hub(xsrv, f'''
        api.create_repo("alice/swift-xet", exist_ok=True)
        out["url"] = str(api.upload_folder(folder_path={str(folder)!r}, repo_id="alice/swift-xet"))
    ''', tmp_path / "w")
    assert "/alice/swift-xet/commit/" in out["url"]
    weights = "sha256:" + hashlib.sha256((folder / "default" / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert weights in xet_files(xsrv)  # the weights went through Xet, not LFS
    same_revision(xsrv, "alice/swift-xet", folder, "alice/swift-cli")


def test_peft_push_to_hub(xsrv: Server, tmp_path: Path, llama_base: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    script = work / "peft_push.py"
    script.write_text(textwrap.dedent(f'''
        import sys, torch
        from transformers import AutoModelForCausalLM
        from peft import LoraConfig, get_peft_model
        torch.manual_seed(5)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained({str(llama_base)!r}), config)
        model.save_pretrained({str(work / "saved")!r})
        model.push_to_hub("alice/peft-xet")
    '''))
    env = {**client_env(work), "HF_ENDPOINT": xsrv.url, "HF_TOKEN": xsrv.write_token}
    env.pop("HF_HUB_DISABLE_IMPLICIT_TOKEN")  # push_to_hub takes HF_TOKEN as a user's shell gives it
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    weights = "sha256:" + hashlib.sha256((work / "saved" / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert weights in xet_files(xsrv)
    # push_to_hub uploads save_pretrained's files with a model card of its own (naming the repository), sent
    # inline, not through Xet: the folder it pushed is the saved one with that card
    from registry import RemoteRegistry

    pulled = RemoteRegistry(xsrv.url, xsrv.write_token, home=tmp_path / "ch").pull("alice/peft-xet", tmp_path / "p")
    (work / "saved" / "README.md").write_bytes((Path(pulled) / "README.md").read_bytes())
    same_revision(xsrv, "alice/peft-xet", work / "saved", "alice/peft-cli")


# ----- a 7B-scale adapter: `hf upload`, then one tensor changed ---------------------------------------------

def write_7b_lora(folder: Path, seed: int = 0, r: int = 32) -> Path:
    """A PEFT LoRA adapter shaped like Llama-2-7B's (32 layers, every linear module, r=32): about 305 MiB of
    float32 in 448 tensors, so one tensor is well under 1% of it."""
    from safetensors.numpy import save_file

    from tests.helpers.checkpoints import _config

    folder.mkdir(parents=True, exist_ok=True)
    shapes = {"q_proj": (4096, 4096), "k_proj": (4096, 4096), "v_proj": (4096, 4096), "o_proj": (4096, 4096),
              "gate_proj": (4096, 11008), "up_proj": (4096, 11008), "down_proj": (11008, 4096)}
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(32):
        for module, (fan_in, fan_out) in shapes.items():
            part = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            stem = f"base_model.model.model.layers.{layer}.{part}.{module}"
            tensors[f"{stem}.lora_A.weight"] = rng.standard_normal((r, fan_in), dtype=np.float32)
            tensors[f"{stem}.lora_B.weight"] = rng.standard_normal((fan_out, r), dtype=np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {**_config(r), "target_modules": list(shapes), "lora_alpha": 2 * r}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def hf_upload(server: Server, repo: str, folder: Path, work: Path) -> None:
    """The `hf` command line of the installed huggingface_hub, with a fresh Xet cache (another machine)."""
    hf = Path(sys.executable).with_name("hf")
    env = {**client_env(work), "HF_ENDPOINT": server.url, "HF_TOKEN": server.write_token}
    env.pop("HF_HUB_DISABLE_IMPLICIT_TOKEN")
    done = subprocess.run([str(hf), "upload", repo, str(folder), ".", "--repo-type", "model"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def test_hf_upload_of_a_7b_scale_adapter_then_one_tensor_changed(xsrv: Server, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    folder = write_7b_lora(tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    size = weights.stat().st_size
    assert size > 300 * 10**6
    hf_upload(xsrv, "alice/big-xet", folder, tmp_path / "w1")
    same_revision(xsrv, "alice/big-xet", folder, "alice/big-cli")

    tensors = load_file(str(weights))
    key = "base_model.model.model.layers.7.mlp.down_proj.lora_A.weight"
    tensors[key] = tensors[key] * 0.5
    save_file(tensors, str(weights), metadata={"format": "pt"})
    before = stats(xsrv)["bytes_received"]
    hf_upload(xsrv, "alice/big-xet", folder, tmp_path / "w2")
    sent = stats(xsrv)["bytes_received"] - before
    print(f"one tensor changed: the server received {sent:,} of {size:,} bytes ({sent / size:.2%})")
    assert sent < 0.05 * size, f"{sent} bytes received for a {size}-byte adapter with one tensor changed"
    from registry import RemoteRegistry

    head = RemoteRegistry(xsrv.url, xsrv.write_token, home=tmp_path / "ch").show("alice/big-xet")
    assert head.number == 2
    assert {f["path"]: f["sha256"] for f in head.manifest["files"]}["adapter_model.safetensors"] == \
        "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
