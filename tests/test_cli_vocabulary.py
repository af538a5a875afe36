"""One vocabulary (issue 16, item 8): every command that takes a base model names it `--base-model` and takes a
model folder or a registry id alike; `inspect` takes registry ids like `validate`. Through the real CLI."""
from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from registry.cli import main
from tests.helpers.cli import cli_on
from tests.helpers.models import build_base, make_peft_checkpoint

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


@pytest.fixture
def cli(one_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    return cli_on(tmp_path / "home", one_database_url, monkeypatch)


def _commands(group: click.Group, prefix: str = "swiftreg"):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", command


def test_every_base_model_option_has_one_name_and_takes_a_folder_or_an_id() -> None:
    found = {}
    for path, command in _commands(main):
        for param in command.params:
            names = set(getattr(param, "opts", ()))
            if names & {"--base", "--base-model"} or param.name in ("base", "base_ref"):
                found[path] = (sorted(names), param.metavar)
    assert set(found) == {"swiftreg push", "swiftreg import", "swiftreg validate", "swiftreg merge",
                          "swiftreg combine", "swiftreg check-equivalence"}, found
    assert set(map(str, found.values())) == {str((["--base", "--base-model"], "DIR|NS/NAME[@REF]"))}


def test_push_and_validate_take_a_base_folder_or_a_registered_base(cli, llama_base: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "fits"
    make_peft_checkpoint(llama_base, adapter, {"default": LORA}, seed=3)
    other_base = build_base("gpt2", tmp_path / "gpt2")
    cli("base", "push", llama_base, "meta/llama")
    by_folder = json.loads(cli("push", adapter, "team/a", "--base-model", llama_base, "--json").output)
    assert by_folder["revision"]["base_model"] is None  # validated against the folder, nothing to record
    by_id = json.loads(cli("push", adapter, "team/b", "--base-model", "meta/llama", "--json").output)
    assert by_id["revision"]["base_model"] == "meta/llama@1"  # recorded: a registered base
    refused = cli("push", adapter, "team/c", "--base-model", other_base, ok=False)
    assert "error:" in refused.stderr and "Traceback" not in refused.output
    assert cli("validate", adapter, "--base-model", "meta/llama").output.rstrip().endswith("valid")
    assert cli("validate", "team/b", "--base", llama_base).output.rstrip().endswith("valid")  # the alias, a folder
    assert "INVALID" in cli("validate", "team/b", "--base-model", other_base, ok=False).output


def test_inspect_takes_a_registry_id_like_validate(cli, llama_base: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "fits"
    make_peft_checkpoint(llama_base, adapter, {"default": LORA}, seed=4)
    cli("push", adapter, "team/i", "--tag", "v1")
    by_id = json.loads(cli("inspect", "team/i@v1", "--json").output)
    by_folder = json.loads(cli("inspect", adapter, "--json").output)
    assert by_id["adapters"] == by_folder["adapters"] and by_id["format"] == "peft"
    missing = cli("inspect", "team/nope", ok=False)
    assert "no folder team/nope" in missing.stderr and "no repository team/nope" in missing.stderr
