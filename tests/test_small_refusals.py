"""Issue 14's small items, each on a real registry or a real `swiftreg serve`:

- no absolute server path in any error answer of the hub dialects (body or `X-Error-Message`);
- the pickle filter ignores case and covers every pickle-bearing suffix (.joblib, .dill, .npy, ...);
- an adapter with zero tensors is refused;
- a read naming an unknown commit id converts nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from safetensors.numpy import save_file
from sqlalchemy import func, select

from converters.layout import is_pickle_file
from registry.db.models import DerivedRecord
from registry.errors import InvalidCheckpointError
from registry.service import Registry
from tests.helpers.api_v1 import API, checkpoint_files, client, manifest_of, push_folder, upload
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora
from tests.helpers.server import Server

PICKLES = ("training_args.BIN", "optimizer.PT", "scheduler.Pth", "rng.pkl", "state.Pickle", "last.CKPT",
           "scaler.joblib", "sampler.dill", "mask.npy", "arrays.NPZ")


def test_pickle_names_are_recognised_whatever_their_case() -> None:
    for name in PICKLES:
        assert is_pickle_file(name), name
        assert is_pickle_file(f"sub/{name}"), name
    assert is_pickle_file("adapter_model.bin")
    assert not is_pickle_file("adapter_model.bin", weights_allowed=True)
    assert is_pickle_file("adapter_model.BIN", weights_allowed=True)  # only the exact legacy weights name is read
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.model", "bin", "npy.txt"):
        assert not is_pickle_file(name), name


def test_a_local_push_leaves_out_every_pickle_whatever_its_case(reg: Registry, tmp_path: Path) -> None:
    folder = write_peft_lora(tmp_path / "ckpt")
    for name in PICKLES:
        (folder / name).write_bytes(b"\x80\x04K\x01.")  # pickle.dumps(1): never opened, never stored
    result = reg.push(folder, "team/pickles")
    stored = {f["path"] for f in result.revision.manifest["files"]}
    assert stored == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert any(n.startswith("left out pickle files") and all(p in n for p in PICKLES) for n in result.notices)


@pytest.mark.server
def test_a_commit_naming_a_pickle_is_refused_whatever_its_case(server: Server, tmp_path: Path) -> None:
    folder = write_peft_lora(tmp_path / "ckpt")
    (folder / "scaler.JOBLIB").write_bytes(b"\x80\x04K\x01.")
    with client(server, server.write_token) as http:
        files = checkpoint_files(folder)
        for f in files:
            assert upload(http, f["data"], f["sha256"]).status_code in (201, 200), f["path"]
        r = http.post(f"{API}/repos/team/pickle-commit/revisions", json={"manifest": manifest_of(files)})
    assert r.status_code == 422 and "scaler.JOBLIB" in r.json()["error"]["message"], r.text


def test_an_adapter_with_zero_tensors_is_refused(reg: Registry, tmp_path: Path) -> None:
    folder = write_peft_lora(tmp_path / "ckpt")
    save_file({}, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InvalidCheckpointError, match="adapter_model.safetensors: holds no tensors"):
        reg.push(folder, "team/empty")
    with pytest.raises(Exception, match="no adapter or base model|not found|no adapter"):
        reg.show("team/empty")


def _derived_rows(server: Server) -> int:
    reg = Registry(home=server.home, database_url=server.database_url)
    try:
        with reg.db.read() as session:
            return int(session.scalar(select(func.count()).select_from(DerivedRecord)) or 0)
    finally:
        reg.close()


@pytest.mark.server
def test_an_unknown_commit_id_converts_nothing(server: Server, tmp_path: Path) -> None:
    repo = "team/swift-unknown-commit"
    with client(server, server.write_token) as http:
        for seed in range(3):  # three Swift revisions: each would have been converted to find a commit id
            r = push_folder(http, repo, write_swift_lora(tmp_path / f"swift{seed}", seed=seed + 40))
            assert r.status_code == 201, r.text
    before = _derived_rows(server)
    auth = {"Authorization": f"Bearer {server.read_token}"}
    for path in (f"/api/models/{repo}/revision/{'ab' * 20}", f"/{repo}/resolve/{'cd' * 20}/adapter_config.json",
                 f"/api/v1/models/{repo}/repo/files?Revision={'ef' * 20}"):
        r = httpx.get(server.url + path, headers=auth, timeout=60)
        assert r.status_code == 404, (path, r.status_code, r.text[:300])
    assert _derived_rows(server) == before
    # A commit id handed out for a derived form still works after the process forgets it: found by one query.
    info = httpx.get(f"{server.url}/api/models/{repo}/revision/main", headers=auth, timeout=60).json()
    assert _derived_rows(server) == before + 1
    again = httpx.get(f"{server.url}/api/models/{repo}/revision/{info['sha']}", headers=auth, timeout=60)
    assert again.status_code == 200 and again.json()["sha"] == info["sha"]


@pytest.mark.server
def test_hub_errors_never_name_a_server_path(server: Server, tmp_path: Path) -> None:
    """A corrupt blob met while deriving the PEFT form of a Swift revision: the answer names the file, not
    where the registry keeps it (the body, and the Hub's X-Error-Message)."""
    repo = "team/swift-corrupt-path"
    folder = write_swift_lora(tmp_path / "swift", seed=77)
    with client(server, server.write_token) as http:
        assert push_folder(http, repo, folder).status_code == 201
    weights = next(f for f in checkpoint_files(folder) if f["path"].endswith(".safetensors"))
    hexdigest = weights["sha256"].removeprefix("sha256:")
    blob = server.home / "blobs" / "sha256" / hexdigest[:2] / hexdigest[2:]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    auth = {"Authorization": f"Bearer {server.read_token}"}
    answers = [
        httpx.get(f"{server.url}/{repo}/resolve/main/adapter_model.safetensors", headers=auth, timeout=60),
        httpx.get(f"{server.url}/api/models/{repo}/revision/main", headers=auth, timeout=60),
        httpx.get(f"{server.url}/api/v1/models/{repo}/repo", headers=auth, timeout=60,
                  params={"Revision": "main", "FilePath": "adapter_model.safetensors"}),
    ]
    roots = {str(server.home), str(server.home.resolve()), str(tmp_path), "/tmp/"}
    for r in answers:
        assert r.status_code >= 400, (r.request.url, r.status_code)
        text = r.text + json.dumps(dict(r.headers))
        assert not any(root in text for root in roots), (r.request.url, text[:800])
