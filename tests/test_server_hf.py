"""The Hugging Face download protocol on a real `swiftreg serve`, driven by the unmodified huggingface_hub.

The client runs in a subprocess with its own environment (the suite sets HF_HUB_OFFLINE=1 for itself),
a cache in tmp_path, and an httpx2 request hook that records every request it makes, so cache hits are
checked from the client's side: a cached hf_hub_download makes one HEAD and no GET.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import converters
from registry.service import Registry
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora
from tests.helpers.models import make_peft_checkpoint, peft_forward
from tests.helpers.server import Server, running_server

pytestmark = pytest.mark.server

REPO = "team/chat-lora"
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)

PRELUDE = '''
import json, os, sys
import httpx2
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.utils import _http as hf_http

REQUESTS = []

def _factory():
    def record(request):
        REQUESTS.append([request.method, request.url.path])
    hooks = {"request": [hf_http.hf_request_event_hook, record]}
    return httpx2.Client(event_hooks=hooks, follow_redirects=True, timeout=None)

hf_http.set_client_factory(_factory)
ENDPOINT, TOKEN, CACHE = sys.argv[1], (sys.argv[2] or None), sys.argv[3]
KW = dict(endpoint=ENDPOINT, token=TOKEN, cache_dir=CACHE)
out = {}

def attempt(fn, *args, **kwargs):
    try:
        return {"ok": fn(*args, **kwargs)}
    except Exception as exc:
        response = getattr(exc, "response", None)
        return {"error": type(exc).__name__, "status": getattr(response, "status_code", None),
                "message": str(exc)[:300]}

def requests_of(fn, *args, **kwargs):
    del REQUESTS[:]
    value = fn(*args, **kwargs)
    return value, [list(r) for r in REQUESTS]
'''


def hf_client(server: Server, body: str, cache: Path, *, token: str | None = "read",
              offline: bool = False) -> dict:
    """Run `body` with the stock huggingface_hub in a clean subprocess; it fills the dict `out`."""
    script = cache.parent / f"client-{abs(hash(body))}.py"
    script.write_text(PRELUDE + textwrap.dedent(body) + "\nprint('@@' + json.dumps(out))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "SWIFTREG_"))}
    env.update(HF_HOME=str(cache.parent / "hf-home"), HF_HUB_OFFLINE="1" if offline else "0",
               HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_IMPLICIT_TOKEN="1")
    secret = {"read": server.read_token, None: ""}.get(token, token)
    done = subprocess.run([sys.executable, str(script), server.url, secret, str(cache)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1]
    return json.loads(line[2:])


@pytest.fixture(scope="module")
def adapters(llama_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real PEFT LoRA on the tiny Llama, its Swift conversion, and the reference logits."""
    root = tmp_path_factory.mktemp("hf-adapters")
    peft_dir = root / "peft"
    make_peft_checkpoint(llama_base, peft_dir, {"default": LORA}, seed=3)
    swift_dir = converters.convert(peft_dir, root / "swift", "swift").destination
    assert (swift_dir / "default" / "adapter_model.safetensors").is_file()
    return {"peft": peft_dir, "swift": swift_dir, "logits": peft_forward(llama_base, peft_dir)}


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def test_stock_client_downloads_swift_adapter_as_peft(database_url: str, tmp_path: Path, llama_base: Path,
                                                      adapters: dict) -> None:
    with running_server(tmp_path / "home", database_url) as server:
        reg = Registry(home=server.home, database_url=server.database_url)
        swift_rev = reg.push(adapters["swift"], REPO, tag="v1").revision
        assert swift_rev.format == "swift" and swift_rev.number == 1
        peft_rev = reg.push(adapters["peft"], REPO).revision  # revision 2, now main
        reg.push_base(llama_base, "team/llama-tiny", tag="v1")
        served = reg.resolve(f"{REPO}@v1", "peft")  # what the server must serve for v1, byte for byte
        cache = tmp_path / "hf-cache"
        cache.mkdir()
        out = hf_client(server, f'''
            api = HfApi(endpoint=ENDPOINT, token=TOKEN)
            info = api.model_info("{REPO}", revision="v1")
            out["sha"], out["siblings"] = info.sha, sorted(s.rfilename for s in info.siblings)
            out["main_sha"] = api.model_info("{REPO}").sha
            out["v1"] = snapshot_download("{REPO}", revision="v1", **KW)
            from pathlib import Path
            out["files"] = sorted(str(p.relative_to(out["v1"])) for p in Path(out["v1"]).rglob("*")
                                  if p.is_file())
            out["first"], out["first_requests"] = requests_of(
                hf_hub_download, "{REPO}", "adapter_config.json", revision="v1", **KW)
            out["second"], out["second_requests"] = requests_of(
                hf_hub_download, "{REPO}", "adapter_config.json", revision="v1", **KW)
            out["by_number"] = snapshot_download("{REPO}", revision="1", **KW)
            out["by_digest"] = hf_hub_download("{REPO}", "adapter_model.safetensors",
                                               revision="{swift_rev.digest[:23]}", **KW)
            out["by_commit"], out["by_commit_requests"] = requests_of(
                hf_hub_download, "{REPO}", "adapter_config.json", revision=info.sha, **KW)
            out["main"] = snapshot_download("{REPO}", **KW)
            out["local_dir"] = snapshot_download("{REPO}", revision="v1", local_dir=CACHE + "-local", **KW)
            out["base"] = snapshot_download("team/llama-tiny", revision="v1", **KW)
            out["no_repo"] = attempt(hf_hub_download, "team/nope", "adapter_config.json", **KW)
            out["no_repo_snapshot"] = attempt(snapshot_download, "team/nope", **KW)
            out["no_revision"] = attempt(hf_hub_download, "{REPO}", "adapter_config.json", revision="v9",
                                         **KW)
            out["no_revision_snapshot"] = attempt(snapshot_download, "{REPO}", revision="v9", **KW)
            out["no_commit"] = attempt(snapshot_download, "{REPO}", revision="ab" * 20, **KW)
            out["no_file"] = attempt(hf_hub_download, "{REPO}", "nope.json", revision="v1", **KW)
            from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError
            out["entry_not_found_base"] = issubclass(RemoteEntryNotFoundError, EntryNotFoundError)
        ''', cache)

        # Commit ids: the served PEFT manifest's digest for the Swift revision, the stored digest otherwise.
        v1_commit = out["sha"]
        assert len(v1_commit) == 40 and v1_commit != _hex(swift_rev.digest)[:40]
        assert out["main_sha"] == _hex(peft_rev.digest)[:40]
        # v1 (stored as Swift) arrives in PEFT layout, the same bytes the registry's own peft pull gives.
        assert out["v1"].endswith(f"snapshots/{v1_commit}")
        expected = sorted(str(p.relative_to(served)) for p in served.rglob("*") if p.is_file())
        assert out["files"] == expected == out["siblings"]
        assert "adapter_config.json" in expected and "adapter_model.safetensors" in expected
        for rel in expected:
            assert (Path(out["v1"]) / rel).read_bytes() == (served / rel).read_bytes()
        # The real PeftModel loads it and gives the original adapter's logits exactly.
        assert torch.equal(peft_forward(llama_base, Path(out["v1"])), adapters["logits"])

        # hf_hub_download: the second call is a cache hit (one HEAD, no GET); pinned to a commit, no request.
        assert out["first"] == out["second"] == f"{out['v1']}/adapter_config.json"
        assert [m for m, _ in out["second_requests"]] == ["HEAD"]
        assert out["second_requests"][0][1] == f"/{REPO}/resolve/v1/adapter_config.json"
        assert out["by_commit"] == out["first"] and out["by_commit_requests"] == []
        # Revision number, digest prefix, main.
        assert out["by_number"] == out["v1"]
        assert out["by_digest"] == f"{out['v1']}/adapter_model.safetensors"
        assert out["main"].endswith(f"snapshots/{out['main_sha']}")
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert (Path(out["main"]) / name).read_bytes() == (adapters["peft"] / name).read_bytes()
        for rel in expected:  # local_dir mode (the client checks sha256 ETags against files there)
            assert (Path(out["local_dir"]) / rel).read_bytes() == (served / rel).read_bytes()
        # Base models are served as stored.
        base_files = sorted(p.name for p in llama_base.iterdir() if p.is_file())
        assert sorted(p.name for p in Path(out["base"]).iterdir()) == base_files
        for name in base_files:
            assert (Path(out["base"]) / name).read_bytes() == (llama_base / name).read_bytes()
        # Errors the client raises.
        assert out["no_repo"]["error"] == "RepositoryNotFoundError" and out["no_repo"]["status"] == 404
        assert out["no_repo_snapshot"]["error"] == "RepositoryNotFoundError"
        assert out["no_revision"]["error"] == "RevisionNotFoundError"
        assert out["no_revision_snapshot"]["error"] == "RevisionNotFoundError"
        assert out["no_commit"]["error"] == "RevisionNotFoundError"
        assert out["no_file"]["error"] == "RemoteEntryNotFoundError" and out["entry_not_found_base"]
        # The absence is cached under the commit, as the client does for the Hub.
        assert (cache / "models--team--chat-lora" / ".no_exist" / v1_commit / "nope.json").exists()

        # Offline, the same calls are answered from the client's cache alone.
        offline = hf_client(server, f'''
            out["file"], out["requests"] = requests_of(hf_hub_download, "{REPO}", "adapter_config.json",
                                                       revision="v1", **KW)
            out["snapshot"] = snapshot_download("{REPO}", revision="v1", **KW)
        ''', cache, offline=True)
        assert offline["file"] == out["first"] and offline["snapshot"] == out["v1"]
        assert offline["requests"] == []
        reg.close()

    # A fresh server process knows no commit ids yet: it finds the Swift revision's by searching the repo.
    with running_server(tmp_path / "home", database_url) as fresh:
        auth = {"Authorization": f"Bearer {fresh.read_token}"}
        r = httpx.get(f"{fresh.url}/api/models/{REPO}/tree/{v1_commit}", params={"recursive": "true"},
                      headers=auth)
        assert r.status_code == 200 and r.headers["X-Repo-Commit"] == v1_commit
        assert sorted(e["path"] for e in r.json()) == expected
        r = httpx.head(f"{fresh.url}/{REPO}/resolve/{v1_commit}/adapter_model.safetensors", headers=auth)
        assert r.status_code == 200 and r.headers["X-Repo-Commit"] == v1_commit


def test_protocol_details(database_url: str, tmp_path: Path) -> None:
    """Headers, ranges, tree listing and pagination, and error codes, checked on the wire."""
    with running_server(tmp_path / "home", database_url) as server:
        reg = Registry(home=server.home, database_url=server.database_url)
        peft = reg.push(write_peft_lora(tmp_path / "p", seed=1), "team/plain", tag="v1").revision
        multi = reg.push(write_swift_lora(tmp_path / "s", seed=2, names=("default", "sql")), "team/multi")
        assert multi.revision.format == "swift"
        extras = write_swift_lora(tmp_path / "x", seed=5)  # extra_states/: PEFT cannot express it
        (extras / "extra_states").mkdir()
        save_file({"lm_head.weight": np.zeros((4, 4), dtype=np.float32)},
                  str(extras / "extra_states" / "adapter_model.safetensors"))
        reg.push(extras, "team/extras")
        reg.close()
        commit = _hex(peft.digest)[:40]
        auth = {"Authorization": f"Bearer {server.read_token}"}
        client = httpx.Client(base_url=server.url, headers=auth)
        entry = {f["path"]: f for f in peft.manifest["files"]}["adapter_model.safetensors"]
        data = (tmp_path / "p" / "adapter_model.safetensors").read_bytes()

        url = "/team/plain/resolve/v1/adapter_model.safetensors"
        head = client.head(url)
        assert head.status_code == 200
        assert head.headers["ETag"] == f'"{_hex(entry["sha256"])}"' == head.headers["X-Linked-Etag"]
        assert head.headers["Content-Length"] == str(entry["size"]) == head.headers["X-Linked-Size"]
        assert head.headers["X-Repo-Commit"] == commit and head.headers["Accept-Ranges"] == "bytes"
        full = client.get(url)
        assert full.status_code == 200 and full.content == data and full.headers["X-Repo-Commit"] == commit
        ranged = client.get(url, headers={"Range": "bytes=100-"})
        assert ranged.status_code == 206 and ranged.content == data[100:]
        assert ranged.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
        middle = client.get(url, headers={"Range": "bytes=10-19"})
        assert middle.status_code == 206 and middle.content == data[10:20]
        assert client.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
        # The revision endpoint takes URL-encoded revisions: a digest prefix, a number, the commit id.
        for rev in (f"sha256%3A{_hex(peft.digest)[:16]}", "1", commit, "v1", "main"):
            r = client.get(f"/api/models/team/plain/revision/{rev}")
            assert r.status_code == 200 and r.json()["sha"] == commit and r.json()["id"] == "team/plain", rev
        blobs = client.get("/api/models/team/plain", params={"blobs": "true"}).json()["siblings"]
        lfs = {s["rfilename"]: s["lfs"]["sha256"] for s in blobs}
        assert lfs["adapter_model.safetensors"] == _hex(entry["sha256"])
        assert client.head("/api/models/team/plain/revision/v1").status_code == 200

        # Tree: a Swift checkpoint with two adapters is served as PEFT with a subfolder.
        tree = client.get("/api/models/team/multi/tree/main", params={"recursive": "true"}).json()
        files = {e["path"]: e for e in tree if e["type"] == "file"}
        assert {"adapter_config.json", "adapter_model.safetensors", "sql/adapter_config.json",
                "sql/adapter_model.safetensors"} <= set(files)
        assert [e["path"] for e in tree if e["type"] == "directory"] == ["sql"]
        for e in files.values():
            assert len(e["oid"]) == 40 and len(e["lfs"]["oid"]) == 64 and e["lfs"]["size"] == e["size"]
            assert "xetHash" not in e
        top = client.get("/api/models/team/multi/tree/main").json()
        assert "sql/adapter_config.json" not in {e["path"] for e in top}
        assert [e["type"] for e in top if e["path"] == "sql"] == ["directory"]
        sub = client.get("/api/models/team/multi/tree/main/sql").json()
        assert sorted(e["path"] for e in sub) == sorted(p for p in files if p.startswith("sql/"))
        assert {"sql/adapter_config.json", "sql/adapter_model.safetensors"} <= {e["path"] for e in sub}
        pages, next_url = [], "/api/models/team/multi/tree/main?recursive=true&limit=2"
        while next_url:
            r = client.get(next_url)
            pages.append(r.json())
            next_url = r.links.get("next", {}).get("url")
        assert all(len(p) <= 2 for p in pages) and len(pages) > 1
        assert [e for p in pages for e in p] == tree

        def error(path: str, method: str = "GET") -> tuple[int, str | None, httpx.Response]:
            r = client.request(method, path)
            return r.status_code, r.headers.get("X-Error-Code"), r

        assert error("/api/models/team/nope")[:2] == (404, "RepoNotFound")
        assert error("/api/models/team/plain/revision/v9")[:2] == (404, "RevisionNotFound")
        assert error("/api/models/team/plain/revision/not%20a%20ref")[:2] == (404, "RevisionNotFound")
        assert error("/api/models/team/plain/revision/" + "cd" * 20)[:2] == (404, "RevisionNotFound")
        assert error("/api/models/team/plain/tree/v1/nope")[:2] == (404, "EntryNotFound")
        status, code, r = error("/api/models/team/extras")  # refused conversion: the Hub's error shape
        assert status == 422 and code is None and "extra_states" in r.json()["error"]
        assert "extra_states" in r.headers["X-Error-Message"] and str(server.home) not in r.text
        assert error("/team/extras/resolve/main/adapter_config.json", "HEAD")[0] == 422  # remembered
        assert error("/api/models/team/extras/revision/" + "ef" * 20)[:2] == (404, "RevisionNotFound")
        status, code, r = error("/team/plain/resolve/v1/nope.bin", "HEAD")
        assert (status, code, r.headers["X-Repo-Commit"]) == (404, "EntryNotFound", commit)
        status, code, r = error("/team/plain/resolve/v1/nope.bin")
        assert (status, code) == (404, "EntryNotFound") and "nope.bin" in r.json()["error"]
        for bad in ("team/plain--x", "team/a%40b", "team/a..b", "team/%2E%2E", "te--am/plain",
                    "team/.hidden"):
            assert error(f"/api/models/{bad}")[:2] == (404, "RepoNotFound"), bad
            assert error(f"/{bad}/resolve/main/adapter_config.json", "HEAD")[:2] == (404, "RepoNotFound"), bad
        assert error("/team/plain/resolve/v1/../../registry.db")[0] == 404
        client.close()


def test_authentication(database_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_server(home, database_url) as server:
        reg = Registry(home=server.home, database_url=server.database_url)
        reg.push(write_peft_lora(tmp_path / "p", seed=4), "team/private", tag="v1")
        reg.close()
        other = server.token("read", namespace="elsewhere")
        for path in ("/api/models/team/private", "/api/models/team/private/revision/v1",
                     "/api/models/team/private/tree/v1", "/team/private/resolve/v1/adapter_config.json",
                     "/api/models/team/nope"):
            r = httpx.get(server.url + path)
            assert r.status_code == 401 and r.headers["X-Error-Code"] == "RepoNotFound", path
            r = httpx.head(server.url + path, headers={"Authorization": "Bearer not-a-token"})
            assert r.status_code == 401
            assert r.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
            r = httpx.get(server.url + path, headers={"Authorization": f"Bearer {other}"})
            assert r.status_code == 403 and r.headers["X-Error-Code"] == "RepoNotFound", path
        out = hf_client(server, '''
            anonymous, wrong = dict(KW, token=None), dict(KW, token="not-a-token")
            out["snapshot"] = attempt(snapshot_download, "team/private", revision="v1", **anonymous)
            out["file"] = attempt(hf_hub_download, "team/private", "adapter_config.json", **anonymous)
            out["bad"] = attempt(snapshot_download, "team/private", revision="v1", **wrong)
            out["ok"] = snapshot_download("team/private", revision="v1", **KW)
        ''', tmp_path / "cache")
        assert out["snapshot"]["error"] == out["file"]["error"] == "RepositoryNotFoundError"
        assert out["snapshot"]["status"] == out["file"]["status"] == 401
        assert out["bad"]["error"] == "HfHubHTTPError" and out["bad"]["status"] == 401
        assert (Path(out["ok"]) / "adapter_model.safetensors").is_file()

    with running_server(home, database_url, anonymous_read=True) as server:
        out = hf_client(server, '''
            out["snapshot"] = snapshot_download("team/private", revision="v1", **KW)
            out["file"] = hf_hub_download("team/private", "adapter_config.json", revision="v1", **KW)
        ''', tmp_path / "cache-anon", token=None)
        assert (Path(out["snapshot"]) / "adapter_model.safetensors").read_bytes() == \
            (tmp_path / "p" / "adapter_model.safetensors").read_bytes()
        assert out["file"] == f"{out['snapshot']}/adapter_config.json"
        # A token is still checked when one is sent.
        assert httpx.get(server.url + "/api/models/team/private",
                         headers={"Authorization": "Bearer not-a-token"}).status_code == 401
