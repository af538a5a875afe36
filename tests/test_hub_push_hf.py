"""The Hugging Face upload protocol (LFS path) on a real `swiftreg serve`, driven by the unmodified clients.

Every push runs the stock huggingface_hub / peft / `hf` CLI in a subprocess with `HF_ENDPOINT` at the server,
`HF_HUB_DISABLE_XET=1` (the LFS path; Xet is issue 23) and a swiftreg token as its token, on SQLite and on
PostgreSQL (one server per module and database: the `server` fixture):

- PeftModel.push_to_hub creates revision 1, a second identical push creates nothing, and the pulled folder
  loads with the pushed model's logits;
- upload_folder of a Swift checkpoint (with training pickles) is a Swift revision that pulls as PEFT, the
  pickles left out and recorded; `hf upload` works; branches and tags are registry refs;
- a stale parentCommit is 412, a commit leaving no checkpoint is refused with the reason and stores nothing,
  a read token and another namespace's token are refused;
- a 300 MB file goes through multipart; a client killed mid-upload leaves no revision, and the re-run does not
  send again the objects it had finished (bytes counted by the server);
- a signed upload href is good for its own object only; an abandoned part is swept by gc;
- `Registry.commit` itself (both databases, no server): concurrent commits without a parent are both kept
  (re-applied on the moved head), with a parent one of them is 412; a commit back to an older content moves
  the branch; deletes and copies.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import converters
from registry.service import Registry
from registry.errors import InvalidCheckpointError, NotFoundError, StaleParentError
from registry.service.commits import CommitOperation
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.models import make_peft_checkpoint, peft_forward
from tests.helpers.server import Server

pytestmark = pytest.mark.hubpush  # the `server` fixture adds the server tier to the tests that use it

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
BIG_BYTES = 300 * 1000 * 1000

PRELUDE = '''
import json, os, sys
from pathlib import Path
import httpx2
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.utils import _http as hf_http

REQUESTS = []

def _factory():
    def record(request):
        REQUESTS.append([request.method, request.url.path, "authorization" in request.headers])
    hooks = {"request": [hf_http.hf_request_event_hook, record]}
    return httpx2.Client(event_hooks=hooks, follow_redirects=True, timeout=None)

hf_http.set_client_factory(_factory)
ENDPOINT, TOKEN, WORK = os.environ["HF_ENDPOINT"], os.environ.get("HF_TOKEN"), Path(sys.argv[1])
api = HfApi(endpoint=ENDPOINT, token=TOKEN)
out = {}

def attempt(fn, *args, **kwargs):
    try:
        return {"ok": str(fn(*args, **kwargs))}
    except Exception as exc:
        response = getattr(exc, "response", None)
        return {"error": type(exc).__name__, "status": getattr(response, "status_code", None),
                "message": str(exc)[:600]}
'''


def _env(server: Server, work: Path, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "SWIFTREG_"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(work / "hf-home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=str(Path(__file__).parent.parent))
    if token:
        env["HF_TOKEN"] = token
    return env


def _script(work: Path, body: str) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    script = work / f"client-{abs(hash(body))}.py"
    script.write_text(PRELUDE + textwrap.dedent(body) + "\nprint('@@' + json.dumps(out))\n")
    return script


def hf_client(server: Server, work: Path, body: str, token: str | None) -> dict[str, Any]:
    """Run `body` with the stock huggingface_hub (and peft) in a clean subprocess; it fills the dict `out`."""
    done = subprocess.run([sys.executable, str(_script(work, body)), str(work)], env=_env(server, work, token),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1]
    result: dict[str, Any] = json.loads(line[2:])
    return result


def _registry(server: Server) -> Registry:
    return Registry(home=server.home, database_url=server.database_url)


def _log(server: Server, repo: str) -> list[Any]:
    reg = _registry(server)
    try:
        return reg.log(repo)
    finally:
        reg.close()


def _received(server: Server) -> int:
    r = httpx.get(server.url + "/api/v1/stats", headers={"Authorization": f"Bearer {server.admin_token}"})
    r.raise_for_status()
    return int(r.json()["bytes_received"])


@pytest.fixture(scope="module")
def team_tokens(server: Server) -> dict[str, str]:
    """A write token for namespace team, and one for namespace other (made with the real CLI)."""
    return {"team": server.token("write", "team"), "other": server.token("write", "other")}


@pytest.fixture(scope="module")
def checkpoints(llama_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real PEFT LoRA on the tiny Llama, its Swift form with training pickles beside it, and its logits."""
    root = tmp_path_factory.mktemp("hub-push")
    peft_dir = root / "peft"
    make_peft_checkpoint(llama_base, peft_dir, {"default": LORA}, seed=5)
    swift_dir = converters.convert(peft_dir, root / "swift", "swift").destination
    (swift_dir / "training_args.bin").write_bytes(b"\x80\x04pickled training args")
    (swift_dir / "optimizer.pt").write_bytes(os.urandom(2048))
    return {"peft": peft_dir, "swift": swift_dir, "logits": peft_forward(llama_base, peft_dir)}


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 MB (sparse: fast to make and to hash) for the multipart path."""
    path = tmp_path_factory.mktemp("big") / "big.dat"
    with open(path, "wb") as f:
        f.truncate(BIG_BYTES)
    return path


def test_peft_push_to_hub_is_revision_1_and_pulls_with_its_logits(server: Server, tmp_path: Path, llama_base: Path,
                                                                   team_tokens: dict[str, str]) -> None:
    out = hf_client(server, tmp_path, f'''
        import torch, peft
        sys.path.insert(0, os.environ["PYTHONPATH"])
        from tests.helpers.models import load_base, randomise_adapter_weights, forward, peft_forward
        model = peft.get_peft_model(load_base(Path({str(llama_base)!r})),
                                    peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        randomise_adapter_weights(model, 11)
        pushed = forward(model.eval())
        out["first"] = str(model.push_to_hub("team/peft-push"))
        out["second"] = str(model.push_to_hub("team/peft-push"))
        folder = snapshot_download("team/peft-push")
        pulled = peft_forward(Path({str(llama_base)!r}), Path(folder))
        out["equal"] = bool(torch.equal(pulled, pushed))
        out["files"] = sorted(p.name for p in Path(folder).iterdir())
        out["upload_puts"] = [r for r in REQUESTS if "/api/lfs-uploads/" in r[1] and r[0] == "PUT"]
    ''', team_tokens["team"])
    revisions = _log(server, "team/peft-push")
    assert [r.number for r in revisions] == [1], "the second, identical push must create nothing"
    assert revisions[0].format == "peft" and revisions[0].tags == [] and revisions[0].branches == ["main"]
    assert out["equal"], "the pulled adapter must give the pushed model's logits exactly"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(out["files"])
    assert out["first"].endswith(out["second"].rsplit("/", 1)[-1]), (out["first"], out["second"])
    assert out["upload_puts"] and not any(auth for _, _, auth in out["upload_puts"]), out["upload_puts"]


def test_upload_folder_of_a_swift_checkpoint_and_hf_upload(server: Server, tmp_path: Path, llama_base: Path,
                                                           checkpoints: dict[str, Any],
                                                           team_tokens: dict[str, str]) -> None:
    swift = checkpoints["swift"]
    out = hf_client(server, tmp_path, f'''
        api.create_repo("team/swift-up")
        out["again"] = attempt(api.create_repo, "team/swift-up")
        out["exist_ok"] = str(api.create_repo("team/swift-up", exist_ok=True))
        out["empty_card"] = attempt(api.hf_hub_download, "team/swift-up", "README.md", cache_dir=str(WORK / "c"))
        info = api.upload_folder(repo_id="team/swift-up", folder_path={str(swift)!r}, commit_message="from swift")
        out["commit"] = info.oid
        out["sha"] = api.model_info("team/swift-up").sha
        out["folder"] = snapshot_download("team/swift-up", cache_dir=str(WORK / "c"))
        out["files"] = sorted(str(p.relative_to(out["folder"])) for p in Path(out["folder"]).rglob("*")
                              if p.is_file())
    ''', team_tokens["team"])
    assert out["again"]["status"] == 409
    assert out["empty_card"]["error"] in ("RemoteEntryNotFoundError", "EntryNotFoundError"), out["empty_card"]
    (revision,) = _log(server, "team/swift-up")
    assert revision.format == "swift" and revision.message == "from swift"
    assert revision.meta["left_out"] == ["optimizer.pt", "training_args.bin"]
    assert not any(f["path"].endswith((".bin", ".pt")) for f in revision.manifest["files"])
    assert out["commit"] == out["sha"], "commitOid must be the commit id the read routes show"
    assert "adapter_config.json" in out["files"] and "adapter_model.safetensors" in out["files"]
    assert torch.equal(peft_forward(llama_base, Path(out["folder"])), checkpoints["logits"])

    cli = subprocess.run([str(Path(sys.executable).parent / "hf"), "upload", "team/cli-up", str(checkpoints["peft"]),
                          ".", "--commit-message", "by the hf CLI"], env=_env(server, tmp_path, team_tokens["team"]),
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-3000:]
    (by_cli,) = _log(server, "team/cli-up")
    assert by_cli.format == "peft" and by_cli.message == "by the hf CLI"


def test_refs_stale_parent_invalid_commits_and_refused_tokens(server: Server, tmp_path: Path,
                                                              checkpoints: dict[str, Any],
                                                              team_tokens: dict[str, str]) -> None:
    out = _refs_client(server, tmp_path, checkpoints["peft"], team_tokens)
    assert out["stale"]["status"] == 412, out["stale"]
    assert "ok" in out["fresh"], out["fresh"]
    assert out["invalid"]["status"] == 422 and "adapter_config.json" in out["invalid"]["message"], out["invalid"]
    assert out["missing"]["status"] == 404 and out["missing"]["error"] in ("RemoteEntryNotFoundError",
                                                                            "EntryNotFoundError"), out["missing"]
    assert out["readme_only"]["status"] == 422, out["readme_only"]
    assert "README.md" in out["readme_only"]["message"] and "no adapter_config.json" in out["readme_only"]["message"]
    assert _log(server, "team/readme-only") == [], "a refused first commit leaves the repository empty"
    assert out["branch_again"]["status"] == 409 and out["tag_again"]["status"] == 409
    assert out["no_branch"]["error"] == "RevisionNotFoundError", out["no_branch"]
    assert out["no_repo"]["error"] == "RepositoryNotFoundError", out["no_repo"]
    for refused in ("other_ns", "other_create", "read_token", "read_tag"):
        assert out[refused]["status"] in (401, 403), (refused, out[refused])
        assert "does not allow write" in out[refused]["message"], (refused, out[refused])
    revisions = {r.number: r for r in _log(server, "team/refs")}
    assert sorted(revisions) == [1, 2, 3, 4], "stale, invalid and refused commits must store nothing"
    assert revisions[3].message == "fresh" and revisions[3].branches == ["main"]
    assert revisions[4].message.startswith("Upload DEV.md"), revisions[4].message
    assert revisions[4].tags == [] and revisions[4].branches == [], "dev was deleted"
    assert out["v1"] == out["first"] and out["dev"] == out["dev_commit"], "tag and branch are registry refs"
    assert out["commits"] == [out["fresh_oid"], out["second"], out["first"]]
    assert out["v1_after"]["error"] == "RevisionNotFoundError" and out["dev_after"]["error"] == "RevisionNotFoundError"


def _refs_client(server: Server, tmp_path: Path, peft_dir: Path, team_tokens: dict[str, str]) -> dict[str, Any]:
    env_tokens = {"OTHER_TOKEN": team_tokens["other"], "READ_TOKEN": server.read_token}
    body = f'''
        from huggingface_hub import CommitOperationAdd
        api.create_repo("team/refs", exist_ok=True)
        first = api.upload_folder(repo_id="team/refs", folder_path={str(peft_dir)!r}).oid
        second = api.upload_file(path_or_fileobj=b"# card", path_in_repo="README.md", repo_id="team/refs").oid
        out["first"], out["second"] = first, second
        out["stale"] = attempt(api.create_commit, "team/refs", [CommitOperationAdd("NOTES.md", b"x")],
                               commit_message="stale", parent_commit=first)
        out["fresh"] = attempt(api.create_commit, "team/refs", [CommitOperationAdd("NOTES.md", b"x")],
                               commit_message="fresh", parent_commit=second)
        out["fresh_oid"] = api.model_info("team/refs").sha
        out["invalid"] = attempt(api.delete_file, "adapter_config.json", "team/refs")
        out["missing"] = attempt(api.delete_file, "nope.txt", "team/refs")
        api.create_repo("team/readme-only")
        out["readme_only"] = attempt(api.upload_file, path_or_fileobj=b"# just a card", path_in_repo="README.md",
                                     repo_id="team/readme-only")
        api.create_branch("team/refs", branch="dev", revision=first)
        out["branch_again"] = attempt(api.create_branch, "team/refs", branch="dev")
        api.create_tag("team/refs", tag="v1", revision=first)
        out["tag_again"] = attempt(api.create_tag, "team/refs", tag="v1")
        out["dev_commit"] = api.upload_file(path_or_fileobj=b"dev", path_in_repo="DEV.md", repo_id="team/refs",
                                            revision="dev").oid
        out["commits"] = [c.commit_id for c in api.list_repo_commits("team/refs")]
        out["no_branch"] = attempt(api.upload_file, path_or_fileobj=b"x", path_in_repo="X.md", repo_id="team/refs",
                                   revision="nope")
        out["no_repo"] = attempt(api.upload_file, path_or_fileobj=b"x", path_in_repo="X.md", repo_id="team/nope")
        other = HfApi(endpoint=ENDPOINT, token=os.environ["OTHER_TOKEN"])
        out["other_ns"] = attempt(other.upload_file, path_or_fileobj=b"x", path_in_repo="X.md", repo_id="team/refs")
        out["other_create"] = attempt(other.create_repo, "team/mine")
        reader = HfApi(endpoint=ENDPOINT, token=os.environ["READ_TOKEN"])
        out["read_token"] = attempt(reader.upload_file, path_or_fileobj=b"x", path_in_repo="X.md",
                                    repo_id="team/refs")
        out["read_tag"] = attempt(reader.create_tag, "team/refs", tag="v2")
        out["v1"] = api.model_info("team/refs", revision="v1").sha
        out["dev"] = api.model_info("team/refs", revision="dev").sha
        api.delete_tag("team/refs", tag="v1")
        api.delete_branch("team/refs", branch="dev")
        out["v1_after"] = attempt(api.model_info, "team/refs", revision="v1")
        out["dev_after"] = attempt(api.model_info, "team/refs", revision="dev")
    '''
    work = tmp_path
    done = subprocess.run([sys.executable, str(_script(work, body)), str(work)],
                          env={**_env(server, work, team_tokens["team"]), **env_tokens},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1]
    result: dict[str, Any] = json.loads(line[2:])
    return result


def _hex_of(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_multipart_300mb_and_a_killed_client_resumes_without_resending(
        server: Server, tmp_path: Path, checkpoints: dict[str, Any], big_file: Path,
        team_tokens: dict[str, str]) -> None:
    folder = tmp_path / "to-push"
    shutil.copytree(checkpoints["peft"], folder)
    try:
        os.link(big_file, folder / "big.dat")
    except OSError:
        shutil.copyfile(big_file, folder / "big.dat")
    (folder / "medium.dat").write_bytes(os.urandom(8 << 20))  # one whole (basic) object, finished before the kill
    medium, big = _hex_of(folder / "medium.dat"), _hex_of(folder / "big.dat")
    body = f'''
        api.create_repo("team/big", exist_ok=True)
        out["commit"] = api.upload_folder(repo_id="team/big", folder_path={str(folder)!r}).oid
        out["requests"] = [r for r in REQUESTS if r[0] in ("PUT", "POST")]
    '''
    env = _env(server, tmp_path, team_tokens["team"])
    client = subprocess.Popen([sys.executable, str(_script(tmp_path, body)), str(tmp_path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reg = _registry(server)
    try:
        deadline = time.monotonic() + 240
        while True:  # kill once the medium object is stored and part of the big one arrived, before its last part
            assert client.poll() is None, "the client finished before it could be killed: " + (
                client.stderr.read().decode()[-2000:] if client.stderr else "")
            partials = list(server.home.rglob(f"{big}.partial"))
            if reg.store.exists("sha256:" + medium) and partials and partials[0].stat().st_size >= 64 << 20:
                break
            assert time.monotonic() < deadline, "the upload never got under way"
            time.sleep(0.01)
        client.send_signal(signal.SIGKILL)
        client.wait()
        assert reg.log("team/big") == [], "a client killed mid-upload leaves no revision"
        before = _received(server)
        out = hf_client(server, tmp_path, body, team_tokens["team"])
        resent = _received(server) - before
        (revision,) = reg.log("team/big")
    finally:
        reg.close()
        if client.poll() is None:
            client.kill()
    files = {f["path"]: f for f in revision.manifest["files"]}
    assert files["big.dat"]["size"] == BIG_BYTES and files["big.dat"]["sha256"] == "sha256:" + big
    assert out["commit"] == revision.digest.removeprefix("sha256:")[:40]
    parts = [r for r in out["requests"] if r[0] == "PUT" and f"/api/lfs-uploads/{big}/part/" in r[1]]
    assert len(parts) == 5, "300 MB goes in five 64 MiB parts"
    assert not any(f"/api/lfs-uploads/{medium}" in r[1] for r in out["requests"]), \
        "the object finished before the kill is not sent again"
    assert BIG_BYTES <= resent < BIG_BYTES + (1 << 20), resent


def test_signed_hrefs_are_good_for_their_own_object_only_and_gc_sweeps_parts(
        server: Server, team_tokens: dict[str, str]) -> None:
    import hashlib

    auth = {"Authorization": f"Bearer {team_tokens['team']}"}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/api/repos/create", json={"name": "replay", "organization": "team"}, headers=auth)
        assert r.status_code == 200, r.text
        x, y = b"the object x", b"another object y"
        ox, oy = hashlib.sha256(x).hexdigest(), hashlib.sha256(y).hexdigest()
        huge = (64 << 20) + 1  # two parts: 64 MiB and 1 byte
        oh = "ab" * 32
        lfs = {**auth, "Accept": "application/vnd.git-lfs+json"}
        r = http.post("/team/replay.git/info/lfs/objects/batch", headers=lfs,
                      json={"operation": "upload", "transfers": ["basic", "multipart"], "hash_algo": "sha256",
                            "objects": [{"oid": ox, "size": len(x)}, {"oid": oy, "size": len(y)},
                                        {"oid": oh, "size": huge}]})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.git-lfs+json")
        actions = {o["oid"]: o["actions"] for o in r.json()["objects"]}
        href_x = actions[ox]["upload"]["href"]
        assert "Authorization" not in href_x and "sig=" in href_x
        replayed = href_x.replace(ox, oy)
        r = http.put(replayed, content=y)
        assert r.status_code == 403 and "signature" in r.json()["error"], r.text
        r = http.put(href_x, content=y + b"!" * (len(x) - len(y)) if len(y) < len(x) else y[:len(x)])
        assert r.status_code == 400 and "nothing was stored" in r.json()["error"], r.text
        r = http.put(href_x.split("?")[0], content=x)
        assert r.status_code == 401, "an unsigned upload needs a token"
        r = http.put(href_x, content=x)
        assert r.status_code == 200, r.text
        verified = http.post(actions[ox]["verify"]["href"], json={"oid": ox, "size": len(x)}, headers=auth)
        assert verified.status_code == 200, verified.text

        multipart = actions[oh]["upload"]
        assert multipart["header"]["chunk_size"] == str(64 << 20)
        assert set(multipart["header"]) == {"chunk_size", "1", "2"}
        r = http.put(multipart["header"]["2"], content=b"z")
        assert r.status_code == 200 and r.headers["etag"]
        etag2 = r.headers["etag"]
        r = http.put(multipart["header"]["1"].replace("/part/1", "/part/2"), content=b"z")
        assert r.status_code == 403, "a part's link is good for that part only"
        only_two = [{"partNumber": 2, "etag": etag2}]
        r = http.post(multipart["href"], json={"oid": oh, "parts": only_two})
        assert r.status_code == 400 and "not listed" in r.json()["error"], r.text
    partials = list(server.home.rglob(f"{oh}.partial"))
    assert partials, "the part is kept for the client to finish"
    reg = _registry(server)
    try:
        assert not reg.store.exists("sha256:" + oh)
        swept = reg.gc(grace_seconds=0)
    finally:
        reg.close()
    assert swept.partial_uploads_removed >= 1 and not partials[0].exists()


def _adds(folder: Path) -> list[CommitOperation]:
    return [CommitOperation("add", p.name, content=p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()]


def test_commit_service_concurrency_branch_moves_deletes_and_copies(reg: Registry, tmp_path: Path) -> None:
    import threading

    assert reg.create_repo("team/c") and not reg.create_repo("team/c")
    first = reg.commit("team/c", _adds(write_peft_lora(tmp_path / "a", seed=1)), message="one")
    assert first.created and first.revision.number == 1

    results: dict[str, Any] = {}

    def commit(name: str, parent: int | None) -> None:
        try:
            results[name] = reg.commit("team/c", [CommitOperation("add", f"{name}.md", content=name.encode())],
                                       parent=parent)
        except StaleParentError as exc:
            results[name] = exc

    threads = [threading.Thread(target=commit, args=(n, None)) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    head = reg.show("team/c")
    assert head.number == 3 and {"x.md", "y.md"} <= {f["path"] for f in head.manifest["files"]}, \
        "a commit without a parent is re-applied on the head that moved under it: nothing is lost"

    threads = [threading.Thread(target=commit, args=(n, 3)) for n in ("p", "q")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = sorted(type(results[n]).__name__ for n in ("p", "q"))
    assert kinds == ["CommitResult", "StaleParentError"], kinds
    assert reg.show("team/c").number == 4

    back = reg.commit("team/c", [CommitOperation("delete", n) for n in ("x.md", "y.md")]
                      + [CommitOperation("delete", [n for n in ("p.md", "q.md") if not isinstance(
                          results[n[0]], StaleParentError)][0])])
    assert not back.created and back.revision.number == 1 and back.revision.branches == ["main"], \
        "content an older revision holds: no new revision, main moved back to it"
    copied = reg.commit("team/c", [CommitOperation("copy", "notes/x-again.md", src_path="x.md", src_revision="3")],
                        message="copy")
    assert copied.created and "notes/x-again.md" in {f["path"] for f in copied.revision.manifest["files"]}
    with pytest.raises(NotFoundError, match="nope.md"):
        reg.commit("team/c", [CommitOperation("delete", "nope.md")])
    with pytest.raises(InvalidCheckpointError, match="adapter_config.json"):
        reg.commit("team/c", [CommitOperation("delete_folder", "notes"),
                              CommitOperation("delete", "adapter_config.json")])
    assert reg.show("team/c").number == 5


def test_upload_grants_expire_and_bind_every_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.service import hub_uploads as H

    monkeypatch.delenv("SWIFTREG_HUB_UPLOAD_KEY", raising=False)
    signer = H.Signer.of_home(tmp_path)
    assert (tmp_path / H.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert H.Signer.of_home(tmp_path).sign(H.grant_for("ns-team", 7, "a" * 64, 10)) == signer.sign(
        H.grant_for("ns-team", 7, "a" * 64, 10)), "the key is made once and shared by every process on the home"
    grant = H.grant_for("ns-team", 7, "a" * 64, 100 << 20)
    assert grant.chunk == H.CHUNK_BYTES and H.part_count(grant.size, grant.chunk) == 2
    good = signer.sign(grant, 2)
    assert signer.valid(grant, good, 2) is None
    assert signer.valid(grant, good, 1) is not None, "a part's signature is for that part only"
    for other in (H.Grant("ns-other", 7, grant.oid, grant.size, grant.chunk, grant.expires),
                  H.Grant(grant.owner, 8, grant.oid, grant.size, grant.chunk, grant.expires),
                  H.Grant(grant.owner, 7, "b" * 64, grant.size, grant.chunk, grant.expires),
                  H.Grant(grant.owner, 7, grant.oid, grant.size + 1, grant.chunk, grant.expires),
                  H.Grant(grant.owner, 7, grant.oid, grant.size, grant.chunk, grant.expires + 3600)):
        assert "signature" in (signer.valid(other, good, 2) or ""), other
    assert "expired" in (signer.valid(grant, good, 2, now=grant.expires + 1) or "")
    etags = [(n, signer.etag(grant, n, H.part_range(grant, n)[1])) for n in (1, 2)]
    assert H.checked_parts(signer, grant, etags) is None
    assert "ETag" in (H.checked_parts(signer, grant, [etags[0], (2, etags[0][1])]) or "")
    monkeypatch.setenv("SWIFTREG_HUB_UPLOAD_KEY", "00" * 32)
    assert H.Signer.of_home(tmp_path).sign(grant) != signer.sign(grant), "the configured key wins over the file"
