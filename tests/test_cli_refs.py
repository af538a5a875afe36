"""Moving `main` back through the CLI (issue 16, item 1), and `--json` on every command that changes a ref or
pulls (item 8): what a user types, on each configured database."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.cli import main
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.cli import cli_on


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    return cli_on(tmp_path / "home", database_url, monkeypatch)


def test_main_rolls_back_with_branch_and_a_repush_says_how(cli, tmp_path: Path) -> None:
    good, bad = write_peft_lora(tmp_path / "good", seed=1), write_peft_lora(tmp_path / "bad", seed=2)
    cli("push", good, "team/x")
    cli("push", bad, "team/x")
    again = cli("push", good, "team/x")
    assert "unchanged: already team/x@1" in again.output
    assert "note: main did not move" in again.stderr and "swiftreg branch team/x@1 main" in again.stderr
    assert json.loads(cli("show", "team/x", "--json").output)["number"] == 2
    refused = cli("tag", "team/x@1", "main", "--force", ok=False)
    assert "is a branch, not a tag; move a branch with `swiftreg branch team/x@REVISION main`" in refused.stderr
    moved = cli("branch", "team/x@1", "main")
    assert moved.output.startswith("team/x@main -> revision 1 ")
    assert json.loads(cli("show", "team/x", "--json").output)["number"] == 1
    pulled = json.loads(cli("pull", "team/x", "--json").stdout)
    assert pulled["number"] == 1 and (Path(pulled["path"]) / "adapter_config.json").is_file()
    as_json = json.loads(cli("branch", "team/x@2", "canary", "--json").output)
    assert as_json == {"repo": "team/x", "branch": "canary", "number": 2, "digest": as_json["digest"]}
    usage = CliRunner().invoke(main, ["branch", "team/x", "main"])
    assert usage.exit_code == 2 and "name the revision the branch will point at" in usage.output


def test_json_on_tag_untag_rm_and_pull(cli, tmp_path: Path) -> None:
    cli("push", write_peft_lora(tmp_path / "a", seed=3), "team/y")
    tagged = json.loads(cli("tag", "team/y@1", "v1", "--json").output)
    assert tagged["tag"] == "v1" and tagged["number"] == 1 and tagged["digest"].startswith("sha256:")
    out = tmp_path / "pulled"
    pulled = json.loads(cli("pull", "team/y@v1", "-o", out, "--json").stdout)
    assert pulled == {"path": str(out), "repo": "team/y", "number": 1, "digest": tagged["digest"], "format": "peft"}
    assert json.loads(cli("untag", "team/y@v1", "--json").output) == {"removed": "team/y@v1", "repo": "team/y",
                                                                      "tag": "v1"}
    cli("branch", "team/y@1", "dev")
    assert json.loads(cli("rm", "team/y@dev", "--json").output) == {"removed": "team/y@dev"}
