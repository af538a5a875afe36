"""The vLLM serving checks (registry/vllm_checks.py), one per vLLM limit, on adapters the real peft made.

Each refused case names the limit, the config field at fault and what to do instead; the plain LoRA
beside them passes, so every check can fail. The integration tier (tests/test_vllm.py) proves the
same refusals reach a real vLLM's clients and log.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import converters
from registry.vllm_checks import (
    MERGE_ADVICE, BaseRequirement, ServedBase, base_fingerprint, check_base_model, check_init, check_modules_to_save,
    check_vllm,
)
from tests.helpers.models import build_base, make_peft_checkpoint

T = ["q_proj", "v_proj"]
PLAIN = dict(r=4, lora_alpha=8, target_modules=T)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory):
    """One real peft adapter per case, on one tiny Llama; made lazily and kept for the module."""
    root = tmp_path_factory.mktemp("serving")
    base = build_base("llama", root / "base")
    cache: dict[str, Path] = {}

    def make(name: str, config: dict, config_class: str = "LoraConfig") -> Path:
        if name not in cache:
            make_peft_checkpoint(base, root / name, {"default": config}, config_class=config_class)
            cache[name] = root / name
        return cache[name]

    make.base = base  # type: ignore[attr-defined]
    make.root = root  # type: ignore[attr-defined]
    return make


def _only(verdict, limit: str):  # type: ignore[no-untyped-def]
    assert not verdict.ok, verdict
    assert [r.limit for r in verdict.reasons] == [limit], verdict.reasons
    return verdict.reasons[0]


def test_plain_lora_is_servable(made) -> None:
    verdict = check_vllm(made("plain", PLAIN))
    assert verdict.ok and verdict.reasons == () and verdict.max_lora_rank == 16
    assert "servable" in verdict.summary()


def test_dora_is_refused_with_merge_advice(made) -> None:
    reason = _only(check_vllm(made("dora", dict(PLAIN, use_dora=True))), "dora")
    assert "use_dora" in reason.where and reason.advice == MERGE_ADVICE and "swiftreg merge" in reason.advice


def test_lora_bias_is_refused(made) -> None:
    reason = _only(check_vllm(made("lora_bias", dict(PLAIN, lora_bias=True))), "lora_bias")
    assert "lora_bias" in reason.where


def test_bias_other_than_none_is_refused(made) -> None:
    reason = _only(check_vllm(made("bias_all", dict(PLAIN, bias="all"))), "bias")
    assert "'all'" in reason.message and "bias" in reason.where


def test_rank_above_max_lora_rank_is_refused_and_fits_a_larger_limit(made) -> None:
    folder = made("r32", dict(r=32, lora_alpha=32, target_modules=T))
    reason = _only(check_vllm(folder), "rank")
    assert "r=32" in reason.where and "--max-lora-rank 16" in reason.message
    assert "--max-lora-rank 32" in reason.advice
    assert check_vllm(folder, max_lora_rank=32).ok


def test_rank_pattern_values_count(made) -> None:
    folder = made("rank_pattern", dict(r=8, lora_alpha=8, target_modules=T, rank_pattern={"v_proj": 24}))
    reason = _only(check_vllm(folder), "rank")
    assert "rank_pattern['v_proj']=24" in reason.where and "lora_A of" in reason.where


def test_modules_to_save_other_than_classification_heads_is_refused(made) -> None:
    reason = _only(check_vllm(made("mts", dict(PLAIN, modules_to_save=["lm_head"]))), "modules_to_save")
    assert "['lm_head']" in reason.message and reason.advice == MERGE_ADVICE
    assert check_modules_to_save({"modules_to_save": ["score"]}) == []
    assert check_modules_to_save({"modules_to_save": ["classifier", "embed_tokens"]})[0].message.startswith(
        "['embed_tokens']")


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_inits_that_change_base_weights_are_refused(made, init: str) -> None:
    reason = _only(check_vllm(made(init, dict(PLAIN, init_lora_weights=init))), "init")
    assert repr(init) in reason.message and "path_initial_model_for_weight_conversion" in reason.advice
    for other in ("corda", "loftq", "pissa_niter_4"):
        assert check_init({"init_lora_weights": other}), other
    for fine in (True, False, "gaussian", "eva", "orthogonal", "lora_ga"):
        assert check_init({"init_lora_weights": fine}) == [], fine


def test_alora_is_refused(made) -> None:
    folder = made("alora", dict(PLAIN, alora_invocation_tokens=[5, 6], task_type="CAUSAL_LM"))
    assert "alora_invocation_tokens" in _only(check_vllm(folder), "alora").where


def test_layer_replication_is_refused(made) -> None:
    folder = made("layer_replication", dict(PLAIN, layer_replication=[[0, 2], [1, 2]]))
    assert "layer_replication" in _only(check_vllm(folder), "layer_replication").where


def test_bdlora_is_refused(made) -> None:
    from peft import BdLoraConfig

    folder = made("bdlora", dict(PLAIN, use_bdlora=BdLoraConfig(target_modules_bd_a=["q_proj"],
                                                                target_modules_bd_b=["v_proj"], nblocks=2)))
    assert "use_bdlora" in _only(check_vllm(folder), "bdlora").where


def test_qalora_is_refused(made) -> None:
    folder = made("qalora", dict(PLAIN, use_qalora=True, qalora_group_size=8))
    assert "use_qalora" in _only(check_vllm(folder), "qalora").where


def test_non_lora_tuner_is_refused(made) -> None:
    folder = made("shira", dict(r=4, target_modules=T), config_class="ShiraConfig")
    assert "'SHIRA'" in _only(check_vllm(folder), "tuner").message


def test_swift_checkpoint_is_refused_with_conversion_advice(made) -> None:
    swift = converters.convert(made("plain", PLAIN), made.root / "plain_swift", "swift").destination
    reason = _only(check_vllm(swift), "format")
    assert "--to peft" in reason.advice


def test_every_reason_is_reported_at_once(made) -> None:
    folder = made("many", dict(r=32, lora_alpha=8, target_modules=T, use_dora=True, modules_to_save=["lm_head"]))
    verdict = check_vllm(folder)
    assert [r.limit for r in verdict.reasons] == ["dora", "modules_to_save", "rank"]
    assert verdict.summary().count(" | ") == 2
    assert json.loads(json.dumps(verdict.to_dict()))["ok"] is False


def test_base_model_must_be_the_recorded_base(made) -> None:
    llama = base_fingerprint(made.base)
    other = base_fingerprint(build_base("qwen2", made.root / "qwen2"))
    assert llama and other and llama != other
    required = BaseRequirement("meta/tiny-llama@1", llama)
    folder = made("plain", PLAIN)
    assert check_vllm(folder, base=required, served=ServedBase(str(made.base), None, llama)).ok
    assert check_vllm(folder, base=required, served=ServedBase("meta/tiny-llama@1", "meta/tiny-llama@1")).ok
    reason = _only(check_vllm(folder, base=required, served=ServedBase("qwen", None, other)), "base_model")
    assert "meta/tiny-llama@1" in reason.message and "swiftreg pull meta/tiny-llama@1" in reason.advice
    reason = _only(check_vllm(folder, base=required, served=ServedBase("meta/x@2", "meta/x@2")), "base_model")
    assert "is meta/x@2" in reason.message
    reasons, notes = check_base_model(required, ServedBase("org/hub-name"))
    assert reasons == [] and "could not be compared" in notes[0]


def test_cli_validate_target_vllm_on_a_folder(made) -> None:
    from click.testing import CliRunner

    from registry.cli import main

    ok = CliRunner().invoke(main, ["validate", str(made("plain", PLAIN)), "--target", "vllm"])
    assert ok.exit_code == 0 and "servable by vLLM" in ok.output, ok.output
    refused = CliRunner().invoke(main, ["validate", str(made("dora", dict(PLAIN, use_dora=True))), "--target", "vllm",
                                        "--json"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    data = json.loads(refused.stdout)
    assert data["ok"] is False and data["reasons"][0]["limit"] == "dora"
    ranked = CliRunner().invoke(main, ["validate", str(made("r32", dict(r=32, lora_alpha=32, target_modules=T))),
                                       "--target", "vllm", "--max-lora-rank", "32"])
    assert ranked.exit_code == 0, ranked.output
    other_base = CliRunner().invoke(main, ["validate", str(made("plain", PLAIN)), "--target", "vllm", "--base-model",
                                           str(build_base("gpt2", made.root / "gpt2_cli"))])
    assert other_base.exit_code == 1 and "[vllm:base_model]" in other_base.output, other_base.output


# ----- the same checks on registry revisions: validate ID --target vllm, push --check vllm ------------------


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from click.testing import CliRunner

    from registry.cli import main

    monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SWIFTREG_DATABASE_URL", database_url)
    monkeypatch.delenv("SWIFTREG_URL", raising=False)

    def run(*args: object, code: int = 0):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == code, (args, result.output, result.stderr)
        assert "Traceback" not in result.output
        return result
    return run


def test_push_check_vllm_records_the_verdict_and_validate_resolves_ids(cli, made, database_url: str,
                                                                        tmp_path: Path) -> None:
    from registry.service import Registry

    cli("base", "push", made.base, "meta/llama")
    cli("base", "push", build_base("qwen2", made.root / "qwen2_cli"), "meta/qwen")
    ok = json.loads(cli("push", made("plain", PLAIN), "team/plain", "--base-model", "meta/llama@1", "--check", "vllm",
                        "--json").output)
    assert ok["check"]["ok"] is True and ok["check"]["recorded"] is True
    refused = json.loads(cli("push", made("dora", dict(PLAIN, use_dora=True)), "team/dora", "--check", "vllm",
                             "--json").output)  # the push itself succeeds; the verdict says why vLLM cannot serve it
    assert refused["check"]["ok"] is False and refused["check"]["reasons"][0]["limit"] == "dora"
    text = cli("push", made("r32", dict(r=32, lora_alpha=32, target_modules=T)), "team/wide", "--check", "vllm",
               "--max-lora-rank", "64")
    assert "vllm: servable (--max-lora-rank 64); verdict recorded" in text.stderr

    reg = Registry(home=tmp_path / "home", database_url=database_url)
    try:
        runs = reg.validation_history("team/dora@1", check_kind="serve:vllm")
        assert len(runs) == 1 and runs[0]["passed"] is False
        assert runs[0]["metrics"]["reasons"][0]["limit"] == "dora" and runs[0]["metrics"]["max_lora_rank"] == 16
        assert runs[0]["library_versions"]["vllm_limits"] == "0.32.0" and "swiftreg" in runs[0]["library_versions"]
        assert [r["passed"] for r in reg.validation_history("team/plain@1")] == [True]
        assert reg.show("team/dora@1").meta == reg.show("team/dora@1").meta  # revision row untouched (immutable)
    finally:
        reg.close()

    served = cli("validate", "team/plain@1", "--target", "vllm", "--base-model", "meta/llama@1")
    assert "team/plain@1" in served.output and "servable by vLLM" in served.output
    wrong = json.loads(cli("validate", "team/plain", "--target", "vllm", "--base-model", "meta/qwen", "--json",
                           code=1).output)
    assert [r["limit"] for r in wrong["reasons"]] == ["base_model"] and "meta/llama@1" in wrong["reasons"][0]["message"]
    by_folder = cli("validate", "team/plain@1", "--target", "vllm", "--base-model", made.base)
    assert "servable by vLLM" in by_folder.output  # the served folder's fingerprint is the recorded base's
    assert "DoRA" in cli("validate", "team/dora@1", "--target", "vllm", code=1).output
    assert "valid" in cli("validate", "team/plain@1").output  # a registry id without --target: the format checks
    missing = cli("validate", "team/absent@1", "--target", "vllm", code=1)
    assert "team/absent" in missing.stderr


@pytest.mark.server
def test_push_check_vllm_through_a_swiftreg_server_is_checked_and_recorded_there(
        made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from registry.cli import main
    from registry.client import RemoteRegistry
    from registry.errors import AccessDeniedError, InvalidIdError
    from registry.service import Registry
    from tests.helpers.server import running_server

    database = f"sqlite:///{tmp_path / 'server.db'}"
    with running_server(tmp_path / "server-home", database) as server:
        with RemoteRegistry(server.url, server.write_token, home=tmp_path / "client") as remote:
            remote.push_base(made.base, "meta/llama")
            remote.push(made("plain", PLAIN), "team/plain", base_model="meta/llama@1")
            verdict = remote.check_serving("team/plain@1", max_lora_rank=16, served_model="meta/llama@1")
            assert verdict["ok"] is True and verdict["recorded"] is True and verdict["revision"] == "team/plain@1"
            assert str(tmp_path) not in json.dumps(verdict), "no server path in the answer"
            with pytest.raises(InvalidIdError):  # the server reads no path it is sent
                remote.check_serving("team/plain@1", served_model="/etc")
        with RemoteRegistry(server.url, server.read_token, home=tmp_path / "reader") as reader:
            with pytest.raises(AccessDeniedError):
                reader.check_serving("team/plain@1")
        monkeypatch.setenv("SWIFTREG_URL", server.url)
        monkeypatch.setenv("SWIFTREG_TOKEN", server.write_token)
        monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "cli"))
        pushed = CliRunner().invoke(main, ["push", str(made("dora", dict(PLAIN, use_dora=True))), "team/dora",
                                           "--check", "vllm", "--json"])
        assert pushed.exit_code == 0, pushed.output
        check = json.loads(pushed.stdout)["check"]
        assert check["ok"] is False and check["recorded"] is True and check["reasons"][0]["limit"] == "dora"
    reg = Registry(home=tmp_path / "server-home", database_url=database)
    try:
        assert [r["passed"] for r in reg.validation_history("team/dora@1", check_kind="serve:vllm")] == [False]
        assert [r["metrics"]["served_model"] for r in reg.validation_history("team/plain@1")] == ["meta/llama@1"]
    finally:
        reg.close()


@pytest.mark.server
def test_plugin_resolver_answers_a_cached_immutable_id_with_no_network_call(made, tmp_path: Path) -> None:
    """registry/integrations/vllm.py's Resolver (vLLM-free) against a real server, counting every request."""
    import httpx

    from registry.client import RemoteRegistry
    from registry.errors import ServingRefusedError
    from registry.integrations.vllm import Resolver
    from tests.helpers.server import running_server

    sent: list[str] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(f"{request.method} {request.url.path}")
            return super().handle_request(request)

    with running_server(tmp_path / "server-home", f"sqlite:///{tmp_path / 'server.db'}") as server:
        with RemoteRegistry(server.url, server.write_token, home=tmp_path / "pusher") as remote:
            remote.push_base(made.base, "meta/llama")
            pushed = remote.push(made("plain", PLAIN), "team/plain", tag="v1", base_model="meta/llama@1")
            digest = pushed.revision.digest
            remote.push(made("dora", dict(PLAIN, use_dora=True)), "team/dora", tag="v1")

        def fresh() -> Resolver:  # a new vLLM process: new client, new resolver, the same SWIFTREG_HOME
            client = RemoteRegistry(server.url, server.read_token, home=tmp_path / "vllm", transport=Counting())
            return Resolver(registry=lambda: client, max_lora_rank=16)

        first = fresh().resolve(str(made.base), "team/plain@1")
        assert first is not None and first.revision == "team/plain@1" and first.verdict.ok and sent
        assert (first.folder / "adapter_config.json").is_file()
        for name in ("team/plain@1", f"team/plain@{digest[:19]}"):
            fresh().resolve(str(made.base), name)
        del sent[:]
        for name in ("team/plain@1", f"team/plain@{digest[:19]}"):
            again = fresh().resolve(str(made.base), name)
            assert again is not None and again.folder == first.folder
        assert sent == [], "a cached immutable id must cost no network call"
        tagged = fresh().resolve(str(made.base), "team/plain@v1")
        assert tagged is not None and tagged.folder == first.folder
        assert sent, "a tag is asked of the server (it may move)"
        assert fresh().resolve(str(made.base), "not-an-id") is None
        assert fresh().resolve(str(made.base), "team/absent") is None  # left to vLLM's other resolvers
        with pytest.raises(ServingRefusedError) as refused:
            fresh().resolve(str(made.base), "team/dora@1")
        assert refused.value.verdict.reasons[0].limit == "dora"
        served_elsewhere = Resolver(registry=lambda: RemoteRegistry(server.url, server.read_token,
                                                                     home=tmp_path / "vllm2"), max_lora_rank=16)
        with pytest.raises(ServingRefusedError) as wrong_base:
            served_elsewhere.resolve(str(build_base("qwen2", made.root / "qwen2_resolver")), "team/plain@1")
        assert wrong_base.value.verdict.reasons[0].limit == "base_model"
