"""The ModelScope read API on a real `swiftreg serve`, driven by the real modelscope clients and ms-swift.

- the new client (modelscope 1.40 on modelscope-hub, the one a fresh ms-swift install gets) over
  plain HTTP with MODELSCOPE_ENDPOINT, in this environment, on SQLite and PostgreSQL;
- the classic client (modelscope 1.37.1) over HTTPS with MODELSCOPE_DOMAIN and a self-signed
  certificate, in its own small environment (scripts/_env.sh: ensure_classic_modelscope_env);
- ms-swift 4.6.0 in its own environment: `Swift.from_pretrained(base, "team/name", revision="v1")`
  with nothing but the endpoint variable set, through both clients, against ms-swift's own logits.
Clients run in subprocesses with their caches in tmp_path.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch

from registry.interop.swift_env import run_jobs
from registry.service import Registry
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora
from tests.helpers.models import PROBE, make_peft_checkpoint, peft_forward, read_tensors
from tests.helpers.server import running_server

pytestmark = [pytest.mark.hubs, pytest.mark.server]

REPO = "team/chat-lora"


@pytest.fixture(scope="session")
def classic_python() -> str:
    """The classic modelscope client's interpreter (ms-swift importable). Never skipped."""
    python = os.environ.get("SWIFTREG_CLASSIC_MODELSCOPE_PYTHON")
    if not python or not os.path.exists(python):
        pytest.fail("SWIFTREG_CLASSIC_MODELSCOPE_PYTHON is not set: run the suite with scripts/test, which builds "
                    "the classic ModelScope client's environment once and sets it", pytrace=False)
    return python


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with `cryptography` (no network, no openssl CLI)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def tls_args(cert: Path, key: Path) -> tuple[str, ...]:
    return ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key))


PRELUDE = '''
import json, os, sys, hashlib
from pathlib import Path
out = {}

def attempt(fn, *args, **kwargs):
    try:
        return {"ok": fn(*args, **kwargs)}
    except BaseException as exc:
        return {"error": type(exc).__name__, "message": str(exc)[:400]}

def files(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and not p.name.startswith(".")}
'''


def ms_client(python: str, body: str, tmp: Path, env: dict[str, str]) -> dict:
    """Run `body` with a real modelscope client in a clean subprocess; it fills the dict `out`."""
    script = tmp / f"ms-client-{abs(hash(body))}.py"
    script.write_text(PRELUDE + textwrap.dedent(body) + "\nprint('@@' + json.dumps(out))\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSCOPE", "SWIFTREG_", "HF_"))}
    done = subprocess.run([python, str(script)], env={**clean, **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1][2:])


def _rot(reg: Registry, manifest: dict) -> None:
    """Flip a byte of a revision's weights blob in the store, after it was verified: the server streams
    blobs as they are, so only the client's own checksum can catch it."""
    weights = next(f for f in manifest["files"] if f["path"] == "adapter_model.safetensors")
    blob = reg.store.path(weights["sha256"])
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))


def _sha_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_new_client_downloads_every_revision_form_with_checked_files(database_url: str, tmp_path: Path) -> None:
    with running_server(tmp_path / "home", database_url) as server:
        reg = Registry(home=server.home, database_url=server.database_url)
        swift_rev = reg.push(write_swift_lora(tmp_path / "swift", seed=1, names=("default", "default2")), REPO,
                             tag="v1").revision
        peft_rev = reg.push(write_peft_lora(tmp_path / "peft", seed=2), REPO).revision  # revision 2: main
        corrupt_rev = reg.push(write_peft_lora(tmp_path / "corrupt", seed=3), "team/corrupt").revision
        served_v1 = _sha_files(reg.resolve(f"{REPO}@v1", "peft"))  # Swift LoRA is served as canonical PEFT
        main_files = _sha_files(tmp_path / "peft")
        v1_commit = reg.manifest(f"{REPO}@v1", "peft").digest.removeprefix("sha256:")[:40]  # the served form's id
        _rot(reg, corrupt_rev.manifest)  # the client must notice from the listed Sha256
        reg.close()
        env = {"MODELSCOPE_ENDPOINT": server.url, "MODELSCOPE_API_TOKEN": server.read_token,
               "MODELSCOPE_CACHE": str(tmp_path / "ms-cache")}
        out = ms_client(sys.executable, f'''
            from modelscope import snapshot_download
            out["v1"] = files(snapshot_download("{REPO}", revision="v1"))
            out["master"] = files(snapshot_download("{REPO}", revision="master"))
            out["default"] = files(snapshot_download("{REPO}"))
            out["number"] = files(snapshot_download("{REPO}", revision="1"))
            out["digest"] = files(snapshot_download("{REPO}", revision="{swift_rev.digest[:23]}"))
            out["commit"] = files(snapshot_download("{REPO}", revision="{v1_commit}"))
            out["local_dir"] = files(snapshot_download("{REPO}", revision="v1", local_dir=sys.argv[0] + ".dir"))
            out["no_repo"] = attempt(snapshot_download, "team/nope", revision="v1")
            out["no_revision"] = attempt(snapshot_download, "{REPO}", revision="v9")
            out["corrupt"] = attempt(snapshot_download, "team/corrupt", revision="master")
        ''', tmp_path, env)
        assert out["v1"] == served_v1 == out["number"] == out["digest"] == out["commit"] == out["local_dir"]
        assert "default2/adapter_model.safetensors" in served_v1 and "adapter_config.json" in served_v1
        assert out["master"] == out["default"] == main_files
        assert out["no_repo"]["error"] and "team/nope" in out["no_repo"]["message"]
        assert out["no_revision"]["error"] and "v9" in out["no_revision"]["message"]
        assert out["corrupt"]["error"], "the client must refuse a file whose sha256 is not the listed one"

        # The protocol itself: envelope, listings, revisions, Range, auth.
        auth = {"Authorization": f"Bearer {server.read_token}"}
        api = f"{server.url}/api/v1/models/{REPO}"
        listing = httpx.get(f"{api}/repo/files", params={"Revision": "v1", "Recursive": "True"}, headers=auth).json()
        assert listing["Code"] == 200 and listing["Success"] is True
        blobs = {f["Path"]: f for f in listing["Data"]["Files"] if f["Type"] == "blob"}
        assert {p: f["Sha256"] for p, f in blobs.items()} == served_v1
        commits = {f["Revision"] for f in blobs.values()}
        assert len(commits) == 1 and len(commits.pop()) == 40
        by_commit = httpx.get(f"{api}/repo/files", params={"Revision": blobs["adapter_config.json"]["Revision"],
                                                           "Recursive": "True"}, headers=auth).json()
        assert sorted(f["Path"] for f in by_commit["Data"]["Files"] if f["Type"] == "blob") == sorted(blobs)
        top = httpx.get(f"{api}/repo/files", params={"Revision": "v1"}, headers=auth).json()["Data"]["Files"]
        assert {f["Path"]: f["Type"] for f in top}["default2"] == "tree" and "default2/adapter_config.json" not in \
            {f["Path"] for f in top}
        rooted = httpx.get(f"{api}/repo/files", params={"Revision": "v1", "Root": "default2", "Recursive": "True"},
                           headers=auth).json()["Data"]["Files"]
        assert sorted(f["Path"] for f in rooted) == sorted(p for p in served_v1 if p.startswith("default2/"))
        revisions = httpx.get(f"{api}/revisions", headers=auth).json()["Data"]["RevisionMap"]
        assert {b["Revision"] for b in revisions["Branches"]} == {"main", "master"}
        assert [t["Revision"] for t in revisions["Tags"]] == ["v1"]
        info = httpx.get(api, headers=auth).json()
        assert info["Success"] and info["Data"]["SwiftReg"]["revision"] == peft_rev.number
        url = f"{api}/repo"
        ranged = httpx.get(url, params={"Revision": "v1", "FilePath": "adapter_model.safetensors"},
                           headers={**auth, "Range": "bytes=10-19"})
        whole = httpx.get(url, params={"Revision": "v1", "FilePath": "adapter_model.safetensors"}, headers=auth)
        assert ranged.status_code == 206 and ranged.content == whole.content[10:20]
        assert hashlib.sha256(whole.content).hexdigest() == served_v1["adapter_model.safetensors"]
        missing = httpx.get(url, params={"Revision": "v1", "FilePath": "nope.json"}, headers=auth)
        assert missing.status_code == 404 and missing.json()["Success"] is False and REPO in missing.json()["Message"]
        # Auth: the classic client's session cookie works like the bearer header; none is refused.
        cookie = httpx.get(f"{api}/revisions", cookies={"m_session_id": server.read_token})
        assert cookie.status_code == 200
        anonymous = httpx.get(f"{api}/revisions")
        assert anonymous.status_code == 401 and anonymous.json()["Code"] == 401
        other = server.token("read", namespace="elsewhere")
        assert httpx.get(f"{api}/revisions", headers={"Authorization": f"Bearer {other}"}).status_code == 403
        assert swift_rev.number == 1


def test_classic_client_over_https(tmp_path: Path, classic_python: str) -> None:
    cert, key = self_signed(tmp_path / "tls")
    home = tmp_path / "home"
    reg = Registry(home=home, database_url=f"sqlite:///{tmp_path / 'r.db'}")
    reg.push(write_swift_lora(tmp_path / "swift", seed=4, names=("default", "second")), REPO, tag="v1")
    reg.push(write_peft_lora(tmp_path / "peft", seed=6), REPO, tag="v2")
    served = {"v1": _sha_files(reg.resolve(f"{REPO}@v1", "peft")), "v2": _sha_files(tmp_path / "peft")}
    _rot(reg, reg.push(write_peft_lora(tmp_path / "rotten", seed=8), "team/rotten").revision.manifest)
    reg.close()
    with running_server(home, f"sqlite:///{tmp_path / 'r.db'}", anonymous_read=True,
                        extra_args=tls_args(cert, key)) as server:
        assert server.url.startswith("https://")
        env = {"MODELSCOPE_DOMAIN": server.url.removeprefix("https://"), "REQUESTS_CA_BUNDLE": str(cert),
               "MODELSCOPE_CACHE": str(tmp_path / "classic-cache")}
        out = ms_client(classic_python, f'''
            import modelscope
            from modelscope import snapshot_download
            out["version"] = modelscope.__version__
            # One cache folder per revision: the classic client keeps one revision per repo folder and
            # leaves the previous revision's extra files there.
            cache = os.environ["MODELSCOPE_CACHE"]
            out["v1"] = files(snapshot_download("{REPO}", revision="v1", cache_dir=cache + "/v1"))
            out["v2"] = files(snapshot_download("{REPO}", revision="v2", cache_dir=cache + "/v2"))
            out["master"] = files(snapshot_download("{REPO}", revision="master", cache_dir=cache + "/master"))
            out["no_repo"] = attempt(snapshot_download, "team/nope", revision="v1")
            out["no_revision"] = attempt(snapshot_download, "{REPO}", revision="v9")
            out["number"] = attempt(snapshot_download, "{REPO}", revision="1")
            out["rotten"] = attempt(snapshot_download, "team/rotten", revision="master", cache_dir=cache + "/r")
        ''', tmp_path, env)
    assert out["version"] == "1.37.1"
    assert out["v1"] == served["v1"] and out["v2"] == served["v2"] == out["master"]
    assert out["no_repo"]["error"] and out["no_revision"]["error"]
    assert out["number"]["error"], "the classic client accepts only names the revisions listing gives"
    assert out["rotten"]["error"], "the classic client must refuse a file whose sha256 is not the listed one"


SWIFT_MULTI = [  # embedding LoRA in the default adapter: ms-swift's own Swift loader would lose it
    {"name": "default", "config": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj", "v_proj"])},
    {"name": "default2", "config": dict(r=2, lora_alpha=4, target_modules=["k_proj", "o_proj"])},
]
SWIFT_ONLY = [{"name": "default", "type": "ADAPTER", "config": dict(
    dim=32, target_modules=r"^model\.layers\.\d+\.mlp$", hidden_pos=0, adapter_length=8)}]


@pytest.mark.oracle
def test_ms_swift_loads_adapters_from_the_registry_through_both_clients(
        tmp_path: Path, llama_base: Path, swift_python: str, classic_python: str) -> None:
    # 1. ms-swift makes the checkpoints and records each adapter's logits (one process).
    made = {}
    jobs = [{"op": "make", "id": name, "base": str(llama_base), "adapters": adapters, "seed": seed,
             "out": str(tmp_path / "made" / name), "probe": PROBE,
             "outputs": str(tmp_path / "made" / f"{name}.out.safetensors")}
            for name, adapters, seed in (("multi", SWIFT_MULTI, 31), ("adapter", SWIFT_ONLY, 32))]
    for result in run_jobs(jobs):
        assert result["ok"], result.get("traceback")
        made[result["id"]] = read_tensors(tmp_path / "made" / f"{result['id']}.out.safetensors")
    # A PEFT adapter made by the real peft, to be imported from the hub and handed to ms-swift as Swift.
    make_peft_checkpoint(llama_base, tmp_path / "peft", {"default": dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])}, seed=33)
    peft_logits = peft_forward(llama_base, tmp_path / "peft")

    # 2. Pushed to a registry that serves over plain HTTP and over HTTPS at once.
    home, db = tmp_path / "hub", f"sqlite:///{tmp_path / 'hub.db'}"
    reg = Registry(home=home, database_url=db)
    assert reg.push(tmp_path / "made" / "multi", "team/multi", tag="v1").revision.format == "swift"
    assert reg.push(tmp_path / "made" / "adapter", "team/swift-adapter", tag="v1").revision.format == "swift"
    reg.push(tmp_path / "peft", "team/peft-lora", tag="v1")
    reg.close()
    cert, key = self_signed(tmp_path / "tls")
    with running_server(home, db, anonymous_read=True) as plain, \
            running_server(home, db, anonymous_read=True, extra_args=tls_args(cert, key)) as tls:
        # The import: ms:// from the hub into another registry, pulled back in Swift form.
        local_env = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFTREG_", "MODELSCOPE"))}
        local_env.update(SWIFTREG_HOME=str(tmp_path / "local"), MODELSCOPE_ENDPOINT=plain.url,
                         MODELSCOPE_CACHE=str(tmp_path / "import-cache"))
        for args in (["import", "ms://team/peft-lora@v1", "local/peft-lora"],
                     ["pull", "local/peft-lora", "--format", "swift", "-o", str(tmp_path / "imported-swift")]):
            done = subprocess.run([sys.executable, "-m", "registry.cli", *args], env=local_env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((tmp_path / "imported-swift" / "default" / "adapter_config.json").read_text())["swift_type"]

        def loads(checkpoint: str, adapters: list[str], tag: str, revision: str | None = "v1") -> list[dict]:
            return [{"op": "load", "id": f"{tag}:{checkpoint}:{name}", "base": str(llama_base),
                     "checkpoint": checkpoint, "revision": revision, "adapters": [name], "probe": PROBE,
                     "report_modelscope": True,
                     "outputs": str(tmp_path / "loaded" / f"{tag}-{checkpoint.replace('/', '_')}-{name}.st")}
                    for name in adapters]

        (tmp_path / "loaded").mkdir()
        # 3. ms-swift with the new client, only MODELSCOPE_ENDPOINT set (plus a private cache) ...
        new_jobs = loads("team/multi", ["default", "default2"], "new") + \
            loads("team/swift-adapter", ["default"], "new") + \
            loads(str(tmp_path / "imported-swift"), ["default"], "imported", revision=None)
        new = run_jobs(new_jobs, env={"MODELSCOPE_ENDPOINT": plain.url, "MODELSCOPE_OFFLINE": "0",
                                      "MODELSCOPE_CACHE": str(tmp_path / "cache-new")})
        # ... and with the classic client over HTTPS (MODELSCOPE_DOMAIN, the certificate trusted).
        classic_jobs = loads("team/multi", ["default", "default2"], "classic") + \
            loads("team/swift-adapter", ["default"], "classic")
        classic = run_jobs(classic_jobs, python=classic_python, env={
            "MODELSCOPE_DOMAIN": tls.url.removeprefix("https://"), "REQUESTS_CA_BUNDLE": str(cert),
            "MODELSCOPE_OFFLINE": "0", "MODELSCOPE_CACHE": str(tmp_path / "cache-classic")})

    jobs_by_id = {job["id"]: job for job in new_jobs + classic_jobs}
    versions = set()
    for result in new + classic:
        assert result["ok"], f"{result['id']}: {result.get('traceback')}"
        tag, checkpoint, name = result["id"].split(":")
        versions.add((tag, result["modelscope"]))
        got = read_tensors(Path(jobs_by_id[result["id"]]["outputs"]))[name]
        if tag == "imported":
            expected = peft_logits
            assert result["kind"] == ["SwiftModel"], "the Swift form must load through ms-swift's Swift path"
        else:
            expected = made["multi" if checkpoint == "team/multi" else "adapter"][name]
            # LoRA is served as PEFT (ms-swift loads it through PEFT), the Swift-only tuner as Swift.
            assert result["kind"] == (["PeftModel"] if checkpoint == "team/multi" else ["SwiftModel"]), result
        base = made["multi"]["__base__"]
        assert (expected - base).abs().max() > 1e-3, f"{result['id']}: the adapter must change the output"
        assert torch.equal(got, expected), f"{result['id']}: max abs diff {(got - expected).abs().max()}"
    assert ("classic", "1.37.1") in versions and any(t == "new" and v >= "1.38" for t, v in versions), versions
