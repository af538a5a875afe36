"""`swiftreg import` from a second, real `swiftreg serve` acting as the hub (it speaks both hub protocols).

Every import runs the real CLI (or `registry.import_from`) in a subprocess with the hub clients' own
variables (HF_ENDPOINT/HF_TOKEN, MODELSCOPE_ENDPOINT/MODELSCOPE_API_TOKEN), so the real huggingface_hub
and modelscope clients do the downloads; the suite itself keeps HF_HUB_OFFLINE=1. The local registry
runs on SQLite and PostgreSQL. ms-swift loading an imported adapter is proved in
tests/test_server_modelscope.py, in the same ms-swift process as the other hub loads.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from registry.ids import parse_id
from registry.manifest import build_manifest
from registry.service import Registry
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora
from tests.helpers.server import Server, running_server

pytestmark = [pytest.mark.hubs, pytest.mark.server]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, llama_base: Path) -> Iterator[dict]:
    """A swiftreg server acting as the Hugging Face Hub and ModelScope, with the repos the tests import."""
    root = tmp_path_factory.mktemp("hub")
    peft = write_peft_lora(root / "peft", seed=1)
    write_peft_lora(peft / "second", seed=2)               # PEFT's multi-adapter layout: second/ is an adapter
    (peft / "second" / "README.md").unlink()
    (peft / "args.json").write_text(json.dumps({"model": "tiny-llama", "lr": 1e-4}))
    swift = write_swift_lora(root / "swift", seed=5, names=("default", "second"))
    big = write_peft_lora(root / "big", seed=9, r=64, layers=40)   # about 1.1 MB of weights
    home = root / "home"
    reg = Registry(home=home, database_url=f"sqlite:///{root / 'hub.db'}")
    revisions = {
        "peft": reg.push(peft, "team/peft-lora", tag="v1").revision,
        "swift": reg.push(swift, "team/swift-lora", tag="v1").revision,
        "big": reg.push(big, "team/big-lora", tag="v1").revision,
    }
    reg.push_base(llama_base, "team/no-adapter", tag="v1")  # a repo with a model and no adapter
    nan = write_peft_lora(root / "nan", seed=13)  # a diverged run: one NaN in a weight, as a real hub may hold
    weights = load_file(str(nan / "adapter_model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first].copy()
    weights[first].flat[0] = np.nan
    save_file(weights, str(nan / "adapter_model.safetensors"), metadata={"format": "pt"})
    reg.push(nan, "team/nan-lora", tag="v1", allow_nonfinite=True)
    _pickle_only_repo(reg, root / "pickles", "team/pickles")
    served_swift = reg.resolve("team/swift-lora@v1", "peft")  # what both hub protocols serve for it
    reg.close()
    with running_server(home, f"sqlite:///{root / 'hub.db'}") as server:
        yield {"server": server, "peft": peft, "swift_served": served_swift, "revisions": revisions,
               "commit": {k: v.digest.removeprefix("sha256:")[:40] for k, v in revisions.items()}}


def _pickle_only_repo(reg: Registry, folder: Path, repo: str) -> None:
    """A hub repo holding only a pickle checkpoint, as a real hub can. `swiftreg push` refuses pickles,
    so the test writes the revision through the store and the commit step directly."""
    folder.mkdir()
    for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt"):
        (folder / name).write_bytes(b"\x80\x04\x95not-a-real-pickle-but-never-read" + name.encode())
    files = [(p.name, p) for p in sorted(folder.iterdir())]
    manifest = build_manifest(files)
    for entry, (_, path) in zip(manifest.files, files):
        reg.store.put_file(path, expected=entry.sha256)
    reg._commit_revision("adapter", parse_id(repo, allow_ref=False), manifest, "peft", {}, tag="v1", force=False,
                         message=None, author=None, base_rev_id=None, repo_values={})


def _env(tmp_path: Path, database_url: str, hub_url: str, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SWIFTREG_", "HF_", "HUGGINGFACE_", "MODELSCOPE"))}
    env.update(SWIFTREG_HOME=str(tmp_path / "local"), SWIFTREG_DATABASE_URL=database_url,
               HF_ENDPOINT=hub_url, MODELSCOPE_ENDPOINT=hub_url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HOME=str(tmp_path / "hf-home"),
               MODELSCOPE_CACHE=str(tmp_path / "ms-cache"), HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    if token:
        env.update(HF_TOKEN=token, MODELSCOPE_API_TOKEN=token)
    return env


def swiftreg(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "registry.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


BATCH = """
import json, sys
from click.testing import CliRunner
from registry.cli import main
out = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(main, args)
    crash = None if r.exception is None or isinstance(r.exception, SystemExit) else repr(r.exception)
    out.append([r.exit_code, r.stderr, crash])
print("@@" + json.dumps(out))
"""


def cli_batch(env: dict[str, str], commands: list[list[str]]) -> list[tuple[int, str, str | None]]:
    """Several CLI invocations in one process (the real `main`, through click's runner): exit code,
    stderr, and the exception if one escaped the CLI's error formatting."""
    done = subprocess.run([sys.executable, "-c", BATCH, json.dumps(commands)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [tuple(r) for r in json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1][2:])]


def _json(done: subprocess.CompletedProcess):  # type: ignore[no-untyped-def]
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_import_from_both_hubs_bit_identical_with_provenance_and_no_op_again(
        hub: dict, database_url: str, tmp_path: Path) -> None:
    server: Server = hub["server"]
    env = _env(tmp_path, database_url, server.url, server.read_token)
    commit = hub["commit"]["peft"]

    first = _json(swiftreg(env, "import", "hf://team/peft-lora@v1", "local/lora", "--tag", "imported", "--json"))
    assert first["created"] and not first["already_imported"] and first["commit"] == commit
    assert first["revision"]["number"] == 1 and first["revision"]["tags"] == ["imported"]
    assert first["revision"]["digest"] == hub["revisions"]["peft"].digest  # the same manifest: the same bytes
    assert sorted(first["files"]) == sorted(_files(hub["peft"]))
    (provenance,) = first["revision"]["provenance"]
    assert provenance["hub"] == "hf" and provenance["repo"] == "team/peft-lora" and provenance["commit"] == commit
    assert provenance["requested_revision"] == "v1" and provenance["endpoint"].rstrip("/") == server.url
    assert provenance["imported_at"] and provenance["subfolder"] == ""

    again = swiftreg(env, "import", "hf://team/peft-lora@v1", "local/lora")
    assert again.returncode == 0, again.stderr
    assert "already imported: local/lora@1" in again.stdout and commit in again.stdout
    assert "already revision 1 of local/lora" in again.stderr

    # The same bytes from the other hub: no new revision, a second provenance record.
    from_ms = _json(swiftreg(env, "import", "ms://team/peft-lora@v1", "local/lora", "--json"))
    assert not from_ms["created"] and not from_ms["already_imported"] and from_ms["revision"]["number"] == 1
    assert [p["hub"] for p in from_ms["revision"]["provenance"]] == ["hf", "ms"]
    assert from_ms["revision"]["provenance"][1]["commit"] == commit
    again_ms = _json(swiftreg(env, "import", "ms://team/peft-lora@v1", "local/lora", "--json"))
    assert again_ms["already_imported"] and again_ms["revision"]["number"] == 1

    reg = Registry(home=tmp_path / "local", database_url=database_url)
    try:
        assert len(reg.log("local/lora")) == 1
        assert _files(reg.resolve("local/lora@imported")) == _files(hub["peft"])  # bit-identical, args.json too
        shown = reg.show("local/lora@1")
        assert [p["commit"] for p in shown.provenance] == [commit, commit]
    finally:
        reg.close()
    logged = _json(swiftreg(env, "log", "local/lora", "--json"))
    assert logged[0]["provenance"][0]["commit"] == commit
    listed = _json(swiftreg(env, "ls", "--json"))
    assert listed[0]["repo"] == "local/lora" and listed[0]["source"]["commit"] == commit
    human = swiftreg(env, "show", "local/lora")
    assert f"imported from hf://team/peft-lora at v1 (commit {commit}" in human.stdout

    # The server API and the remote client carry provenance too.
    with running_server(tmp_path / "local", database_url) as local:
        import httpx

        from registry.client import RemoteRegistry

        auth = {"Authorization": f"Bearer {local.read_token}"}
        ref = httpx.get(f"{local.url}/api/v1/repos/local/lora/refs/imported", headers=auth).json()
        assert [p["hub"] for p in (ref.get("revision") or ref)["provenance"]] == ["hf", "ms"]
        repos = httpx.get(f"{local.url}/api/v1/repos", headers=auth).json()
        assert repos[0]["source"]["commit"] == commit
        remote = RemoteRegistry(local.url, local.read_token, home=tmp_path / "remote-cache")
        assert remote.show("local/lora@1").provenance[0]["commit"] == commit
        assert remote.list()[0].source["hub"] == "hf"

        # Over HTTP an import is a job: a `swiftreg worker` beside the server downloads from the hub
        # (with the hub variables of the worker's environment); the client only waits.
        from registry.errors import AccessDeniedError

        with pytest.raises(AccessDeniedError):
            remote.import_from("hf://team/peft-lora@v1", "local/other", wait=5)  # a read token may not
        worker = subprocess.Popen([sys.executable, "-m", "registry.cli", "worker", "--poll", "0.1"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            client = {k: v for k, v in env.items() if not k.startswith(("HF_", "MODELSCOPE"))}
            client.update(SWIFTREG_URL=local.url, SWIFTREG_TOKEN=local.write_token,
                          SWIFTREG_HOME=str(tmp_path / "client"), HF_ENDPOINT="http://127.0.0.1:9")  # never asked
            over_http = swiftreg(client, "import", "ms://team/peft-lora@v1", "local/other", "--tag", "v1", "--json")
            assert over_http.returncode == 0, over_http.stderr[-3000:]
            assert "queued as import job" in over_http.stderr
            job_import = json.loads(over_http.stdout)
            assert job_import["created"] and job_import["commit"] == commit
            assert job_import["revision"]["repo"] == "local/other" and job_import["revision"]["tags"] == ["v1"]
            assert job_import["revision"]["provenance"][0]["hub"] == "ms"
            writer = RemoteRegistry(local.url, local.write_token, home=tmp_path / "writer-cache")
            again = writer.import_from("ms://team/peft-lora@v1", "local/other", poll=0.1)
            assert again.already_imported and again.revision.number == 1 and again.commit == commit
            assert _files(writer.resolve("local/other@v1")) == _files(hub["peft"])
            from registry.errors import HubError

            with pytest.raises(HubError, match="team/nope"):
                writer.import_from("hf://team/nope@v1", "local/none", poll=0.1)
            assert [r.repo for r in writer.list()] == ["local/lora", "local/other"]
        finally:
            worker.terminate()
            worker.wait(timeout=60)


def test_import_swift_repo_subfolder_default_branch_and_python_api(hub: dict, tmp_path: Path) -> None:
    server: Server = hub["server"]
    env = _env(tmp_path, f"sqlite:///{tmp_path / 'local.db'}", server.url, server.read_token)
    # A Swift repo on the hub is served as PEFT by both protocols: the import stores that form.
    swift = _json(swiftreg(env, "import", "ms://team/swift-lora@v1", "local/swift", "--json"))
    assert swift["revision"]["format"] == "peft" and swift["created"]
    # --subfolder: the adapter kept in a folder of the repo, from the default branch (HF main).
    sub = _json(swiftreg(env, "import", "hf://team/peft-lora", "local/second", "--subfolder", "second", "--json"))
    assert sub["revision"]["provenance"][0]["subfolder"] == "second"
    assert sub["revision"]["provenance"][0]["requested_revision"] is None
    # The Python API, from ModelScope's default branch (`master` is the registry's main).
    code = ("import json, registry; r = registry.import_from('ms://team/peft-lora', 'local/api', tag='t1'); "
            "print(json.dumps([r.created, r.commit, r.revision.number, r.revision.tags, r.notices]))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    created, commit, number, tags, _ = json.loads(done.stdout.strip().splitlines()[-1])
    assert created and commit == hub["commit"]["peft"] and number == 1 and tags == ["t1"]

    reg = Registry(home=tmp_path / "local", database_url=f"sqlite:///{tmp_path / 'local.db'}")
    try:
        assert _files(reg.resolve("local/swift")) == _files(hub["swift_served"])
        assert _files(reg.resolve("local/second")) == _files(hub["peft"] / "second")
    finally:
        reg.close()


class DroppingProxy:
    """A TCP proxy to the hub that cuts the connection once `limit` bytes of one response went through,
    and from then on drops every new connection at once: a hub that dies mid-download."""

    def __init__(self, upstream_port: int, limit: int) -> None:
        self.upstream_port, self.limit, self.tripped = upstream_port, limit, False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.tripped:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.limit), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    dst.sendall(data[:limit - sent])
                    self.tripped = True
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


def test_import_refusals_name_repo_and_revision_and_register_nothing(hub: dict, tmp_path: Path) -> None:
    server: Server = hub["server"]
    database_url = f"sqlite:///{tmp_path / 'local.db'}"
    env = _env(tmp_path, database_url, server.url, server.read_token)
    cases = [
        (["hf://team/nope@v1"], ["team/nope", "no repository"]),
        (["ms://team/nope@v1"], ["team/nope", "no model"]),
        (["hf://team/peft-lora@v9"], ["team/peft-lora", "'v9'"]),
        (["ms://team/peft-lora@v9"], ["team/peft-lora", "'v9'"]),
        (["hf://team/no-adapter@v1"], ["hf://team/no-adapter@v1", "no adapter_config.json"]),
        (["ms://team/pickles@v1"], ["ms://team/pickles@v1", "only a pickle checkpoint", "training_args.bin"]),
        (["hf://team/peft-lora@v1", "--subfolder", "nowhere"], ["hf://team/peft-lora@v1", "under nowhere/"]),
        (["git://team/peft-lora"], ["hf://owner/name"]),
    ]
    for (args, words), (code, stderr, crash) in zip(cases, cli_batch(env, [["import", a[0], "local/x", *a[1:]]
                                                                            for a, _ in cases])):
        assert code == 1 and crash is None, (args, code, crash, stderr[-2000:])
        assert stderr.startswith("error: ") and "Traceback" not in stderr, stderr[-2000:]
        for word in words:
            assert word in stderr, (args, word, stderr)
    # Without the token the hub hides its repos (401), and the error says how to give one.
    anonymous = swiftreg(_env(tmp_path, database_url, server.url, None), "import", "hf://team/peft-lora@v1", "local/x")
    assert anonymous.returncode == 1 and "HF_TOKEN" in anonymous.stderr

    # A hub that drops the connection in the middle of the weights, for each client.
    for scheme in ("hf", "ms"):
        proxy = DroppingProxy(int(server.url.rsplit(":", 1)[1]), limit=200_000)
        dropping = _env(tmp_path / scheme, database_url, f"http://127.0.0.1:{proxy.port}", server.read_token)
        dropping.update(MODELSCOPE_DOWNLOAD_MAX_RETRIES="1", MODELSCOPE_API_MAX_RETRIES="1")  # fail in seconds
        try:
            dropped = swiftreg(dropping, "import", f"{scheme}://team/big-lora@v1", "local/x")
        finally:
            proxy.close()
        assert proxy.tripped, "the weights never went through the proxy"
        assert dropped.returncode == 1, dropped.stderr[-3000:]
        assert "Traceback" not in dropped.stderr and f"{scheme}://team/big-lora@v1" in dropped.stderr, dropped.stderr
        assert "nothing was imported" in dropped.stderr

    assert _json(swiftreg(env, "ls", "--json")) == []
    leftovers = [p for p in (tmp_path / "local").iterdir() if p.name.startswith("swiftreg-import-")]
    assert leftovers == []


def test_import_refuses_nonfinite_weights_unless_allowed(hub: dict, tmp_path: Path) -> None:
    server: Server = hub["server"]
    env = _env(tmp_path, f"sqlite:///{tmp_path / 'local.db'}", server.url, server.read_token)
    refused = swiftreg(env, "import", "hf://team/nan-lora@v1", "local/nan")
    assert refused.returncode == 1 and "NaN" in refused.stderr and "--allow-nonfinite" in refused.stderr, \
        refused.stderr[-2000:]
    allowed = _json(swiftreg(env, "import", "ms://team/nan-lora@v1", "local/nan", "--allow-nonfinite", "--json"))
    assert allowed["created"] and allowed["revision"]["repo"] == "local/nan"
