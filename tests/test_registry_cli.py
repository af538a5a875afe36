"""The registry commands of `swiftreg`: thin surfaces over the service, --json everywhere, exit 1 on refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.cli import main
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SWIFTREG_DATABASE_URL", database_url)

    def run(*args: object, ok: bool = True):
        result = CliRunner().invoke(main, [str(a) for a in args])
        if ok:
            assert result.exit_code == 0, (args, result.output, result.stderr)
        return result
    return run


def test_push_tag_pull_log_show_ls_over_the_cli(cli, tmp_path: Path) -> None:
    db = cli("db", "upgrade")
    from migrations import HEAD

    assert f"schema at {HEAD}" in db.output
    pushed = json.loads(cli("push", write_swift_lora(tmp_path / "a", seed=1), "team/sql-lora", "--tag", "v1",
                            "-m", "first", "--json").output)
    assert pushed["created"] and pushed["revision"]["number"] == 1 and pushed["revision"]["tags"] == ["v1"]
    cli("push", write_peft_lora(tmp_path / "b", seed=2), "team/sql-lora", "-m", "second")
    cli("tag", "team/sql-lora@2", "v2")
    log = json.loads(cli("log", "team/sql-lora", "--json").output)
    assert [(r["number"], r["tags"], r["branches"], r["message"]) for r in log] == [
        (2, ["v2"], ["main"], "second"), (1, ["v1"], [], "first")]
    text_log = cli("log", "team/sql-lora").output
    assert "(main, tag:v2)" in text_log and "tag:v1" in text_log
    shown = json.loads(cli("show", "team/sql-lora@v1", "--json").output)
    assert shown["format"] == "swift" and shown["meta"]["tuner_type"] == "LORA"
    assert "default/adapter_model.safetensors" in cli("show", "team/sql-lora@v1").output
    listed = json.loads(cli("ls", "team", "--json").output)
    assert [(r["repo"], r["revisions"], r["main"]) for r in listed] == [("team/sql-lora", 2, 2)]
    out = Path(cli("pull", "team/sql-lora@v1", "--format", "peft", "-o", tmp_path / "pulled").output.strip())
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    cached = Path(cli("pull", f"team/sql-lora@{shown['digest'][:19]}").output.strip())
    assert (cached / "default" / "adapter_config.json").is_file()
    cli("untag", "team/sql-lora@v2")
    cli("rm", "team/sql-lora@v1")
    assert json.loads(cli("show", "team/sql-lora", "--json").output)["tags"] == []
    gc = json.loads(cli("gc", "--grace", "0", "--json").output)
    assert gc["blobs_removed"] == 0 and gc["blobs_kept"] > 0


def test_refusals_exit_1_with_one_line(cli, tmp_path: Path) -> None:
    cli("push", write_peft_lora(tmp_path / "a", seed=1), "team/x", "--tag", "v1")
    for args, message in (
        (("push", write_peft_lora(tmp_path / "b", seed=2), "team/x", "--tag", "v1"), "tags are immutable"),
        (("push", tmp_path / "b", "team/x@v3"), "without '@ref'"),
        (("pull", "team/x@nope"), "no tag or branch 'nope'"),
        (("pull", "team/none"), "no adapter or base model team/none"),
        (("show", "../etc/passwd"), "exactly one '/'"),
        (("show", "team/.."), "is not allowed"),
        (("rm", "team/x@main"), "--force"),
        (("push", tmp_path / "missing", "team/x"), "no such file or folder"),
    ):
        result = cli(*args, ok=False)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output


def test_base_push_and_validation_against_it(cli, tmp_path: Path, llama_base: Path) -> None:
    shown = json.loads(cli("base", "push", llama_base, "meta/llama-tiny", "--tag", "v1", "--json").output)
    assert shown["revision"]["meta"]["architecture"] == "LlamaForCausalLM"
    ok = json.loads(cli("push", write_peft_lora(tmp_path / "a", seed=1), "team/x", "--base-model",
                        "meta/llama-tiny@v1", "--json").output)
    assert ok["revision"]["base_model"] == "meta/llama-tiny@1"
    listed = {r["repo"]: r for r in json.loads(cli("ls", "--json").output)}
    assert listed["meta/llama-tiny"]["kind"] == "base" and listed["team/x"]["base_model"] == "meta/llama-tiny"
