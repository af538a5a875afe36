"""The ModelScope write protocol on a real `swiftreg serve`, driven by the installed ModelScope client
(modelscope 1.40 on modelscope-hub 0.5, with only MODELSCOPE_ENDPOINT and MODELSCOPE_API_TOKEN set):
`HubApi.upload_folder`, `upload_file`, `create_model_tag` and `login` land as registry revisions and
tags, on SQLite and PostgreSQL; refusals (a read token, another namespace's token, a blob the token
never uploaded, bytes that do not hash to the oid, a commit that leaves no valid checkpoint) store
nothing. Then ms-swift, in its own environment, loads what the client pushed by id, with its own logits.
Clients run in subprocesses with their caches and credentials in tmp_path.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch

from registry import tokens
from registry.interop.swift_env import run_jobs
from registry.service import Registry
from tests.helpers.checkpoints import write_swift_lora
from tests.helpers.models import PROBE, forward, load_base, read_tensors
from tests.helpers.server import Server, running_server

pytestmark = [pytest.mark.hubpush, pytest.mark.hubs, pytest.mark.server]

REPO = "team/ms-lora"

PRELUDE = '''
import json, os, sys
out = {}

def attempt(fn, *args, **kwargs):
    try:
        return {"ok": repr(fn(*args, **kwargs))[:400]}
    except BaseException as exc:
        return {"error": type(exc).__name__, "message": str(exc)[:600]}

def uploaded(events):
    """Bytes the client sent to object storage (its own progress events count only real PUTs)."""
    return max([e.get("uploaded_bytes", 0) for e in events] or [0])
'''


def ms_client(body: str, tmp: Path, env: dict[str, str]) -> tuple[dict, str]:
    """Run `body` with the installed ModelScope client in a clean subprocess; it fills `out`. (out, stderr)."""
    script = tmp / f"ms-push-{abs(hash(body))}.py"
    script.write_text(PRELUDE + textwrap.dedent(body) + "\nprint('@@' + json.dumps(out))\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE", "SWIFTREG_", "HF_"))}
    env = {**clean, "HOME": str(tmp / "client-home"), "MODELSCOPE_CACHE": str(tmp / "ms-cache"), **env}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1][2:]), done.stderr


def _sha_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def _token(server: Server, scope: str, namespace: str) -> str:
    reg = Registry(home=server.home, database_url=server.database_url)
    try:
        return tokens.create(reg, scope, "tests", [namespace])[0]
    finally:
        reg.close()


def test_modelscope_client_pushes_revisions_and_refusals_store_nothing(database_url: str, tmp_path: Path) -> None:
    checkpoint = write_swift_lora(tmp_path / "ck", seed=1, names=("default", "default2"))
    changed = write_swift_lora(tmp_path / "changed", seed=9)
    with running_server(tmp_path / "home", database_url) as server:
        elsewhere = _token(server, "write", "elsewhere")
        env = {"MODELSCOPE_ENDPOINT": server.url, "MODELSCOPE_API_TOKEN": server.write_token}
        out, stderr = ms_client(f'''
            from modelscope.hub.api import HubApi
            api = HubApi()
            events = []
            out["first"] = api.upload_folder(repo_id="{REPO}", folder_path="{checkpoint}", commit_message="trained",
                                             progress_callback=events.append)
            out["first_sent"] = uploaded(events)
            # Again, without the client's own record of what it committed: the server must see it is unchanged.
            events = []
            out["again"] = api.upload_folder(repo_id="{REPO}", folder_path="{checkpoint}", use_cache=False,
                                             progress_callback=events.append)
            out["again_sent"] = uploaded(events)
            out["card"] = api.upload_file(repo_id="{REPO}", path_or_fileobj=b"# chat LoRA\\n", path_in_repo="README.md")
            out["tag"] = attempt(api.create_model_tag, "{REPO}", "v1")
            out["tag_again"] = attempt(api.create_model_tag, "{REPO}", "v1")  # where it is: nothing changes
            out["tag_moved"] = attempt(api.create_repo_tag, "{REPO}", "model", "v1", revision="1")
            out["card_only"] = attempt(api.upload_file, repo_id="team/card-only", path_or_fileobj=b"# no weights\\n",
                                       path_in_repo="README.md")
            for who, token in (("read", "{server.read_token}"), ("elsewhere", "{elsewhere}")):
                other = HubApi(token=token)
                out[who + "_file"] = attempt(other.upload_file, repo_id="{REPO}", path_or_fileobj=b"x",
                                             path_in_repo="notes.txt")
                out[who + "_folder"] = attempt(other.upload_folder, repo_id="{REPO}", folder_path="{changed}",
                                               use_cache=False)
            from modelscope_hub import HubApi as Hub
            out["login"] = attempt(lambda: Hub().login("{server.write_token}").username)  # then GET users/me
        ''', tmp_path, env)

        # 1. One revision per upload_folder that changes something; the unchanged one sent no byte.
        first = out["first"]["SwiftReg"]
        assert first["created"] and first["revision"] == 1 and first["format"] == "swift", out["first"]
        assert out["first_sent"] > 0 and out["again_sent"] == 0, out
        assert out["again"]["SwiftReg"]["created"] is False and out["again"]["SwiftReg"]["revision"] == 1
        assert out["card"]["SwiftReg"]["revision"] == 2 and out["card"]["SwiftReg"]["created"]
        assert "ok" in out["tag"], out["tag"]
        assert "ok" in out["tag_again"], out["tag_again"]
        assert out["tag_moved"]["error"] == "AlreadyExistsError" and "v1" in out["tag_moved"]["message"], out

        assert out["login"] == {"ok": "'tests'"}, out["login"]
        # 2. Refusals: the reason reaches the client, and nothing is stored.
        assert out["card_only"]["error"] == "InvalidParameter", out["card_only"]
        assert "team/card-only" in out["card_only"]["message"], out["card_only"]
        for who in ("read", "elsewhere"):
            assert out[f"{who}_file"]["error"] == "PermissionDeniedError", out[f"{who}_file"]
            assert "does not allow write" in out[f"{who}_file"]["message"], out[f"{who}_file"]
            assert out[f"{who}_folder"]["error"], out[f"{who}_folder"]
        assert "does not allow write" in stderr  # upload_folder logs the server's reason per file

        reg = Registry(home=server.home, database_url=server.database_url)
        try:
            history = reg.log(REPO)
            assert [r.number for r in history] == [2, 1]
            assert reg.show(f"{REPO}@v1").number == 2 and reg.show(f"{REPO}@main").number == 2
            stored = _sha_files(reg.resolve(f"{REPO}@1", "swift"))
            assert stored == _sha_files(checkpoint)
            assert reg.log("team/card-only") == []  # created by upload_file's create_repo, never committed
            weights = hashlib.sha256((checkpoint / "default" / "adapter_model.safetensors").read_bytes()).hexdigest()
        finally:
            reg.close()

        # 3. The protocol underneath: the dedup rule, a replayed href, the error envelope.
        api = f"{server.url}/api/v1/repos/models"
        as_elsewhere = {"Authorization": f"Bearer {elsewhere}"}
        batch = httpx.post(f"{api}/elsewhere/copy/info/lfs/objects/batch", headers=as_elsewhere,
                           json={"operation": "upload", "objects": [{"oid": weights, "size": 1}]}).json()
        assert batch["Success"] and "upload" in batch["Data"]["objects"][0]["actions"], \
            "a digest another namespace stored must be uploaded again, never granted"
        httpx.post(f"{server.url}/api/v1/models", headers=as_elsewhere, json={"Path": "elsewhere", "Name": "copy"})
        named = httpx.post(f"{api}/elsewhere/copy/commit/master", headers=as_elsewhere, json={
            "commit_message": "borrow", "actions": [{"action": "create", "path": "adapter_model.safetensors",
                                                     "type": "lfs", "size": 1, "sha256": weights}]})
        assert named.status_code == 409 and named.json()["Success"] is False
        assert "upload it through the LFS batch first" in named.json()["Message"]
        href = batch["Data"]["objects"][0]["actions"]["upload"]["href"]
        replayed = httpx.put(href.replace("Size=1", "Size=5"), content=b"other", headers=as_elsewhere)
        assert replayed.status_code == 400 and "nothing was stored" in replayed.json()["Message"], replayed.text
        uncreated = httpx.post(f"{api}/team/never-created/commit/master", headers={
            "Authorization": f"Bearer {server.write_token}"}, json={"commit_message": "x", "actions": [
                {"action": "create", "path": "README.md", "type": "normal", "content": "eA==", "encoding": "base64"}]})
        assert uncreated.status_code == 404 and "create it first" in uncreated.json()["Message"], uncreated.text
        anonymous = httpx.post(f"{server.url}/api/v1/models", json={"Path": "team", "Name": "x"})  # refused unread
        assert anonymous.status_code == 401 and anonymous.json()["Success"] is False, anonymous.text
        assert "bearer token" in anonymous.json()["Message"]


@pytest.mark.oracle
def test_ms_swift_loads_what_the_modelscope_client_pushed(tmp_path: Path, llama_base: Path,
                                                          swift_python: str) -> None:
    checkpoint = write_swift_lora(tmp_path / "ck", seed=3, names=("default", "default2"))
    with running_server(tmp_path / "home", f"sqlite:///{tmp_path / 'r.db'}") as server:
        out, _ = ms_client(f'''
            from modelscope.hub.api import HubApi
            out["pushed"] = HubApi().upload_folder(repo_id="team/swift-lora", folder_path="{checkpoint}")
        ''', tmp_path, {"MODELSCOPE_ENDPOINT": server.url, "MODELSCOPE_API_TOKEN": server.write_token})
        assert out["pushed"]["SwiftReg"]["revision"] == 1
        jobs = [{"op": "load", "id": f"{where}:{name}", "base": str(llama_base), "checkpoint": checkpoint_id,
                 "revision": revision, "adapters": [name], "probe": PROBE,
                 "outputs": str(tmp_path / f"{where}-{name}.safetensors")}
                for where, checkpoint_id, revision in (("local", str(checkpoint), None),
                                                       ("hub", "team/swift-lora", "master"))
                for name in ("default", "default2")]
        results = run_jobs(jobs, python=swift_python, env={
            "MODELSCOPE_ENDPOINT": server.url, "MODELSCOPE_API_TOKEN": server.read_token, "MODELSCOPE_OFFLINE": "0",
            "MODELSCOPE_CACHE": str(tmp_path / "swift-cache")})
    for result in results:
        assert result["ok"], f"{result['id']}: {result.get('traceback')}"
    base = forward(load_base(llama_base))
    for name in ("default", "default2"):
        local = read_tensors(tmp_path / f"local-{name}.safetensors")[name]
        hub = read_tensors(tmp_path / f"hub-{name}.safetensors")[name]
        assert (local - base).abs().max() > 1e-3, f"{name}: the adapter must change the output"
        assert torch.equal(hub, local), f"{name}: max abs diff {(hub - local).abs().max()}"
