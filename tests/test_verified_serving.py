"""Verified serving and content served as data (issue 14: H1, M4) on a real `swiftreg serve`.

A blob damaged in the store (one byte flipped, truncated, or gone) must end in an error for every
client, the unmodified huggingface_hub (which does not hash what it downloads), modelscope's client
and swiftreg's own, and leave nothing corrupt in their caches; the blob is quarantined (moved out of
the store), reported by `stats` with the revisions that need it and in one log line, and a re-push of
the right file restores it. The hub clients run in subprocesses with their caches in tmp_path.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file

from registry.client import RemoteRegistry
from registry.db.models import BlobCheckRecord
from registry.errors import RegistryError
from registry.service import Registry
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.server import Server, running_server

pytestmark = pytest.mark.server

WEIGHTS = "model.safetensors"
#: Files a writer may ship beside the weights, and what a browser would do with them if served inline.
ACTIVE = {"index.html": "<script>alert(document.cookie)</script>\n",
          "logo.svg": '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>\n'}


def make_base(folder: Path, seed: int) -> Path:
    """A base model whose weights (6 MiB, unique per seed) are streamed, not served from memory (> 4 MiB)."""
    folder.mkdir(parents=True)
    weights = np.random.default_rng(seed).standard_normal((3 << 19,), dtype=np.float32)
    save_file({"model.embed_tokens.weight": weights}, str(folder / WEIGHTS))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                    "seed": seed}))
    (folder / "README.md").write_text(f"# base {seed}\n")
    for name, text in ACTIVE.items():
        (folder / name).write_text(text)
    return folder


def files_of(reg: Registry, repo: str) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in reg.show(repo).manifest["files"]}


def damage(reg: Registry, digest: str, how: str) -> None:
    """Damage a stored blob: flip one byte early on (sent before the hash can know), cut it to a third,
    or delete it."""
    blob = reg.store.path(digest)
    if how == "missing":
        blob.unlink()
        return
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        if how == "flip":
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0xFF]))
        else:
            f.truncate(blob.stat().st_size // 3)


def stats(server: Server) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/api/v1/stats", headers={"Authorization": f"Bearer {server.admin_token}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def corrupt_files(cache: Path, digest: str, size: int) -> list[str]:
    """Files a client kept that could be taken for the blob but hold other bytes: any finished file (not
    a partial download) of the blob's size or smaller named by its hex, or of exactly its size."""
    hexdigest = digest.removeprefix("sha256:")
    bad = []
    for path in cache.rglob("*"):
        if not path.is_file() or path.is_symlink() or path.name.endswith((".incomplete", ".part", ".lock")):
            continue
        named = hexdigest in path.name or path.name == WEIGHTS
        if (named or path.stat().st_size == size) and sha(path) != digest:
            bad.append(str(path.relative_to(cache)))
    return bad


HF_CLIENT = '''
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
endpoint, token, cache, repo = sys.argv[1:5]
out = {}
for name, call in (("file", lambda: hf_hub_download(repo, "model.safetensors", revision="main", endpoint=endpoint,
                                                    token=token, cache_dir=cache)),
                   ("snapshot", lambda: snapshot_download(repo, revision="main", endpoint=endpoint, token=token,
                                                          cache_dir=cache))):
    try:
        out[name] = {"ok": call()}
    except Exception as exc:
        out[name] = {"error": type(exc).__name__, "message": str(exc)[:600]}
print("@@" + json.dumps(out))
'''

MS_CLIENT = '''
import json, sys
from modelscope import snapshot_download
try:
    out = {"ok": snapshot_download(sys.argv[1], revision="master")}
except BaseException as exc:
    out = {"error": type(exc).__name__, "message": str(exc)[:600]}
print("@@" + json.dumps(out))
'''


def run_client(script: str, args: list[str], env: dict[str, str], tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"client-{abs(hash(script))}.py"
    path.write_text(textwrap.dedent(script))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "MODELSCOPE",
                                                                       "SWIFTREG_"))}
    done = subprocess.run([sys.executable, str(path), *args], env={**clean, **env}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1][2:])


def hf_download(server: Server, repo: str, cache: Path) -> dict[str, Any]:
    env = {"HF_HOME": str(cache.parent / "hf-home"), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
    return run_client(HF_CLIENT, [server.url, server.read_token, str(cache), repo], env, cache.parent)


def ms_download(server: Server, repo: str, cache: Path) -> dict[str, Any]:
    env = {"MODELSCOPE_ENDPOINT": server.url, "MODELSCOPE_API_TOKEN": server.read_token,
           "MODELSCOPE_CACHE": str(cache)}
    return run_client(MS_CLIENT, [repo], env, cache.parent)


def swiftreg_pull(server: Server, repo: str, home: Path) -> dict[str, Any]:
    client = RemoteRegistry(server.url, server.read_token, home=home)
    try:
        return {"ok": str(client.pull(f"{repo}@1"))}
    except RegistryError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    finally:
        client.close()


# ----- H1: a damaged blob ends in a client error, everywhere --------------------------------------------------

@pytest.mark.hubs
@pytest.mark.parametrize("how", ["flip", "truncate", "missing"])
def test_damaged_blob_is_never_served_to_any_client(fresh_server: Server, tmp_path: Path, how: str) -> None:
    server, repo = fresh_server, f"team/damaged-{how}"
    reg = Registry(home=server.home, database_url=server.database_url)
    source = make_base(tmp_path / "base", seed={"flip": 1, "truncate": 2, "missing": 3}[how])
    reg.push_base(source, repo)
    weights = files_of(reg, repo)[WEIGHTS]
    digest, size = weights["sha256"], weights["size"]
    assert digest == sha(source / WEIGHTS) and size > 4 << 20

    clients = {
        "huggingface_hub": lambda cache: hf_download(server, repo, cache),
        "modelscope": lambda cache: ms_download(server, repo, cache),
        "swiftreg": lambda cache: swiftreg_pull(server, repo, cache),
    }
    for name, download in clients.items():
        damage(reg, digest, how)
        cache = tmp_path / name / "cache"
        cache.mkdir(parents=True)
        out = download(cache)
        failed = [v for v in (out.values() if name == "huggingface_hub" else [out])]
        assert all("error" in v for v in failed), f"{name} got the damaged blob without an error: {out}"
        assert corrupt_files(cache, digest, size) == [], f"{name} kept corrupt bytes"

        # Never served again, reported with the revision that needs it, in the store's quarantine or missing.
        assert not reg.store.exists(digest)
        figures = stats(server)
        kind = "missing" if how == "missing" else "quarantined"
        assert figures[f"blobs_{kind}"] == 1, figures
        [entry] = figures[kind]
        assert entry["digest"] == digest and entry["revisions"] == [f"{repo}@1"]
        if how != "missing":
            assert reg.store.is_quarantined(digest)
            assert "quarantine" in out.get("message", "") or name != "swiftreg"
        again = httpx.get(f"{server.url}/{repo}/resolve/main/{WEIGHTS}",
                          headers={"Authorization": f"Bearer {server.read_token}"})
        assert again.status_code == 404 and digest in again.json()["error"]

        # A re-push of the right file restores it (the revision already exists: only the blob is stored).
        assert reg.push_base(source, repo).blobs_written == 1
        assert reg.store.exists(digest) and stats(server)[f"blobs_{kind}"] == 0

    # After the restore the stock client gets the right bytes, and nothing it kept before got in the way.
    out = hf_download(server, repo, tmp_path / "huggingface_hub" / "cache")
    assert sha(Path(out["file"]["ok"])) == digest, out
    log = "".join(p.read_text() for p in tmp_path.glob("server-*.log"))
    lines = [ln for ln in log.splitlines() if digest in ln and ("quarantined;" in ln or "is missing" in ln)]
    assert len(lines) == (1 if how == "missing" else 3), lines  # one per quarantine (3 damages) / per absence
    assert all(f"{repo}@1" in ln for ln in lines)
    reg.close()


def test_corrupt_small_file_is_an_error_status(server: Server, tmp_path: Path) -> None:
    """A small blob is verified before its first byte: a corrupt one is a 404 saying it was quarantined."""
    reg = Registry(home=server.home, database_url=server.database_url)
    repo = "team/small-corrupt"
    reg.push_base(make_base(tmp_path / "base", seed=11), repo)
    config = files_of(reg, repo)["config.json"]
    _flip_first(reg, config["sha256"])
    auth = {"Authorization": f"Bearer {server.read_token}"}
    hf = httpx.get(f"{server.url}/{repo}/resolve/main/config.json", headers=auth)
    assert hf.status_code == 404 and "quarantine" in hf.json()["error"]
    ms = httpx.get(f"{server.url}/api/v1/models/{repo}/repo", params={"FilePath": "config.json"}, headers=auth)
    assert ms.status_code == 404 and ms.json()["Success"] is False and "quarantine" in ms.json()["Message"]
    v1 = httpx.get(f"{server.url}/api/v1/blobs/{config['sha256']}", headers=auth)
    assert v1.status_code == 404 and v1.json()["error"]["code"] == "blob_not_found"
    reg.close()


def _flip_first(reg: Registry, digest: str) -> None:
    blob = reg.store.path(digest)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF
    blob.write_bytes(bytes(data))


# ----- the verified-at record, ranges, the scrub ---------------------------------------------------------------

def test_verified_blob_is_not_rehashed_until_its_file_changes(server: Server, tmp_path: Path) -> None:
    reg = Registry(home=server.home, database_url=server.database_url)
    repo = "team/reread"
    source = make_base(tmp_path / "base", seed=21)
    reg.push_base(source, repo)
    digest = files_of(reg, repo)[WEIGHTS]["sha256"]
    auth = {"Authorization": f"Bearer {server.read_token}"}
    url = f"{server.url}/{repo}/resolve/main/{WEIGHTS}"
    before = stats(server)["blobs_hashed"]
    assert httpx.head(url, headers=auth).status_code == 200
    assert stats(server)["blobs_hashed"] == before  # a HEAD hashes nothing
    first = httpx.get(url, headers=auth)
    assert first.status_code == 200 and "sha256:" + hashlib.sha256(first.content).hexdigest() == digest
    assert stats(server)["blobs_hashed"] == before + 1
    with reg.db.read() as session:
        record = session.get(BlobCheckRecord, digest)
        assert record is not None and record.state == "verified"
        checked_at, fingerprint = record.checked_at, record.fingerprint
    for _ in range(3):  # hub route, /api/v1, and a range: all answered from the record
        assert httpx.get(url, headers=auth).content == first.content
    assert httpx.get(f"{server.url}/api/v1/blobs/{digest}", headers=auth).content == first.content
    ranged = httpx.get(url, headers={**auth, "Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == first.content[100:200]
    assert stats(server)["blobs_hashed"] == before + 1
    with reg.db.read() as session:
        record = session.get(BlobCheckRecord, digest)
        assert (record.checked_at, record.fingerprint) == (checked_at, fingerprint)
    # Touching the file (same bytes, new fingerprint) makes the next read verify it again.
    blob = reg.store.path(digest)
    os.chmod(blob, 0o644)
    os.utime(blob)
    assert httpx.get(url, headers=auth).content == first.content
    assert stats(server)["blobs_hashed"] == before + 2
    reg.close()


def test_range_of_an_unverified_corrupt_blob_is_refused(server: Server, tmp_path: Path) -> None:
    reg = Registry(home=server.home, database_url=server.database_url)
    repo = "team/ranged"
    reg.push_base(make_base(tmp_path / "base", seed=31), repo)
    digest = files_of(reg, repo)[WEIGHTS]["sha256"]
    damage(reg, digest, "flip")  # byte 1000: outside the range asked for, and never read before
    auth = {"Authorization": f"Bearer {server.read_token}"}
    for url in (f"{server.url}/{repo}/resolve/main/{WEIGHTS}",
                f"{server.url}/api/v1/models/{repo}/repo?FilePath={WEIGHTS}"):
        answer = httpx.get(url, headers={**auth, "Range": "bytes=4000000-4000099"})
        assert answer.status_code == 404, (url, answer.status_code)
    answer = httpx.get(f"{server.url}/api/v1/blobs/{digest}", headers={**auth, "Range": "bytes=5000-"})
    assert answer.status_code == 404 and "quarantine" in answer.json()["error"]["message"]
    assert digest in {e["digest"] for e in stats(server)["quarantined"]}
    reg.close()


def test_scrub_quarantines_and_validation_sees_it(server: Server, tmp_path: Path) -> None:
    reg = Registry(home=server.home, database_url=server.database_url)
    repo = "team/scrubbed"
    reg.push(write_peft_lora(tmp_path / "lora", seed=41), repo)
    reg.push(write_peft_lora(tmp_path / "lora2", seed=42), repo)
    weights = files_of(reg, f"{repo}@1")["adapter_model.safetensors"]["sha256"]
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    first = httpx.post(f"{server.url}/api/v1/scrub", headers=admin).json()
    assert first["checked"] >= 5 and first["corrupt"] == []
    again = httpx.post(f"{server.url}/api/v1/scrub", params={"max_age": 3600}, headers=admin).json()
    assert again["checked"] == 0 and again["skipped"] >= 5  # verified within the hour: not reread
    _flip_first(reg, weights)
    found = httpx.post(f"{server.url}/api/v1/scrub", params={"max_age": 3600}, headers=admin).json()
    assert found["corrupt"] == [weights] and found["checked"] == 1
    assert reg.store.is_quarantined(weights) and not reg.store.exists(weights)
    [entry] = [e for e in stats(server)["quarantined"] if e["digest"] == weights]
    assert entry["revisions"] == [f"{repo}@1"] and entry["actual"].startswith("sha256:")
    scoped = server.token("admin", namespace="elsewhere")
    assert httpx.post(f"{server.url}/api/v1/scrub", headers={"Authorization": f"Bearer {scoped}"}).status_code == 403
    # A namespace admin's stats name only the blobs its namespaces' revisions need.
    for namespace, seen in (("team", True), ("elsewhere", False)):
        token = scoped if namespace == "elsewhere" else server.token("admin", namespace=namespace)
        mine = httpx.get(f"{server.url}/api/v1/stats", headers={"Authorization": f"Bearer {token}"}).json()
        assert (weights in {e["digest"] for e in mine["quarantined"]}) is seen, (namespace, mine)

    report = reg.validate_all(revisions=[f"{repo}@1"], checks=["integrity"], backend="inline")
    [result] = report.results
    assert not result.passed and "quarantine" in result.reason and weights[:19] in result.reason
    reg.close()


def test_the_server_scrubs_on_its_own_clock(one_database_url: str, tmp_path: Path) -> None:
    """`swiftreg serve --scrub-interval`: a blob damaged after it was stored is quarantined with no request for it."""
    with running_server(tmp_path / "home", one_database_url,
                        extra_args=("--scrub-interval", "0.5", "--scrub-max-age", "0")) as server:
        reg = Registry(home=server.home, database_url=server.database_url)
        reg.push_base(make_base(tmp_path / "base", seed=81), "team/rotting")
        config = files_of(reg, "team/rotting")["config.json"]["sha256"]
        _flip_first(reg, config)
        deadline = time.monotonic() + 60
        while not stats(server)["blobs_quarantined"] and time.monotonic() < deadline:
            time.sleep(0.2)
        [entry] = stats(server)["quarantined"]
        assert entry["digest"] == config and entry["revisions"] == ["team/rotting@1"]
        assert reg.store.is_quarantined(config)
        reg.close()


def test_revision_check_quarantines_what_it_finds_corrupt(reg: Registry, tmp_path: Path) -> None:
    reg.push(write_peft_lora(tmp_path / "lora", seed=51), "team/checked")
    weights = files_of(reg, "team/checked@1")["adapter_model.safetensors"]["sha256"]
    _flip_first(reg, weights)
    report = reg.validate_all(revisions=["team/checked@1"], checks=["integrity"], backend="inline")
    assert not report.results[0].passed
    assert reg.store.is_quarantined(weights)
    assert [e["revisions"] for e in reg.integrity_report()["quarantined"]] == [["team/checked@1"]]


# ----- M4: content served as data ------------------------------------------------------------------------------

@pytest.mark.hubs
def test_file_routes_serve_content_as_data(server: Server, tmp_path: Path) -> None:
    reg = Registry(home=server.home, database_url=server.database_url)
    repo = "team/site"
    reg.push_base(make_base(tmp_path / "base", seed=61), repo)
    files = files_of(reg, repo)
    auth = {"Authorization": f"Bearer {server.read_token}"}

    def routes(path: str) -> dict[str, httpx.Response]:
        return {"hf GET": httpx.get(f"{server.url}/{repo}/resolve/main/{path}", headers=auth),
                "hf HEAD": httpx.head(f"{server.url}/{repo}/resolve/main/{path}", headers=auth),
                "ms GET": httpx.get(f"{server.url}/api/v1/models/{repo}/repo", params={"FilePath": path},
                                    headers=auth),
                "v1 GET": httpx.get(f"{server.url}/api/v1/blobs/{files[path]['sha256']}", headers=auth)}

    expected = {"index.html": None, "logo.svg": None, WEIGHTS: None, "config.json": "application/json",
                "README.md": "text/markdown; charset=utf-8"}
    for path, text_type in expected.items():
        for route, answer in routes(path).items():
            where = f"{route} {path}"
            assert answer.status_code == 200, where
            assert answer.headers["x-content-type-options"] == "nosniff", where
            assert "sandbox" in answer.headers["content-security-policy"], where
            if text_type is None or route == "v1 GET":  # /api/v1/blobs names no file: always bytes
                assert answer.headers["content-type"] == "application/octet-stream", where
                assert answer.headers["content-disposition"].startswith("attachment"), where
            else:
                assert answer.headers["content-type"] == text_type, where
            if route != "hf HEAD":
                assert "sha256:" + hashlib.sha256(answer.content).hexdigest() == files[path]["sha256"], where
    assert routes("index.html")["hf GET"].headers["content-disposition"] == 'attachment; filename="index.html"'

    # The stock clients still download every file with these headers (huggingface_hub reads ETag,
    # X-Repo-Commit, X-Linked-Etag and Content-Length), the HTML and SVG included, byte for byte.
    source = tmp_path / "base"
    expected_files = {p.name: sha(p) for p in source.iterdir()}
    out = hf_download(server, repo, tmp_path / "hf" / "cache")
    assert {p.name: sha(p) for p in Path(out["snapshot"]["ok"]).iterdir()} == expected_files
    assert sha(Path(out["file"]["ok"])) == expected_files[WEIGHTS]
    ms = ms_download(server, repo, tmp_path / "ms" / "cache")
    got = {p.name: sha(p) for p in Path(ms["ok"]).iterdir() if p.is_file() and not p.name.startswith(".")}
    assert got == expected_files
    reg.close()
