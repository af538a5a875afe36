"""The `swiftreg` command line: exit codes, JSON output, messages, and no torch on the convert path."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from registry.cli import main
from tests.helpers.models import make_peft_checkpoint


@pytest.fixture(scope="module")
def peft_ckpt(llama_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "peft"
    make_peft_checkpoint(llama_base, out, {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                                           "sql": dict(r=2, lora_alpha=2, target_modules=["k_proj"], use_rslora=True)})
    return out


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_convert_inspect_validate_round_trip(peft_ckpt: Path, tmp_path: Path, llama_base: Path) -> None:
    converted = run("convert", peft_ckpt, tmp_path / "swift", "--to", "swift")
    assert converted.exit_code == 0, converted.output
    assert "swift checkpoint written" in converted.output
    shown = run("inspect", tmp_path / "swift", "--json")
    assert shown.exit_code == 0
    data = json.loads(shown.output)
    assert data["format"] == "swift"
    by_name = {a["name"]: a for a in data["adapters"]}
    assert by_name["sql"]["use_rslora"] and by_name["sql"]["r"] == 2 and by_name["default"]["modules"] == 4
    table = run("inspect", tmp_path / "swift")
    assert "default" in table.output and "sql" in table.output and "LORA rs" in table.output
    checked = run("validate", tmp_path / "swift", "--base-model", llama_base)
    assert checked.exit_code == 0 and "valid" in checked.output


def test_refusals_exit_1_with_one_line_and_no_traceback(peft_ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    for args in (("convert", tmp_path / "missing", tmp_path / "o", "--to", "peft"),
                 ("convert", peft_ckpt, tmp_path / "taken", "--to", "swift"),
                 ("convert", peft_ckpt, tmp_path / "o2", "--to", "swift", "--adapter", "nope"),
                 ("convert", peft_ckpt, tmp_path / "o3", "--to", "peft", "--rename", "noequals"),
                 ("inspect", tmp_path / "missing"),
                 ("validate", tmp_path / "taken")):
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert isinstance(result.exception, SystemExit)
        assert "error:" in result.stderr and "Traceback" not in result.output


def test_usage_errors_exit_2(peft_ckpt: Path, tmp_path: Path) -> None:
    assert run("convert", peft_ckpt, tmp_path / "o", "--to", "onnx").exit_code == 2
    assert run("convert", peft_ckpt).exit_code == 2


def test_invalid_checkpoint_exits_1_and_lists_problems(peft_ckpt: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(peft_ckpt, broken)
    config = json.loads((broken / "adapter_config.json").read_text())
    config["r"] = 16
    (broken / "adapter_config.json").write_text(json.dumps(config))
    result = run("validate", broken, "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert not report["ok"] and any("rank for" in p["message"] for p in report["problems"])


def test_the_convert_path_never_imports_torch(peft_ckpt: Path, tmp_path: Path) -> None:
    code = ("import sys; from registry.cli import main; sys.argv = ['swiftreg', 'convert', sys.argv[1], sys.argv[2], "
            "'--to', 'swift'];\ntry:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code, str(peft_ckpt), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def _commands(group: click.Group, path: str = "swiftreg") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        found.append((f"{path} {name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{path} {name}")
    return found


def test_every_command_option_and_argument_is_explained() -> None:
    """`--help` answers every question: each command has a docstring, each option help text, and each
    argument is named (by its metavar) in its command's help, since click arguments take no help=."""
    missing = []
    for path, command in _commands(main):
        if not (command.help or "").strip():
            missing.append(f"{path}: no help text")
        for param in command.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{path} {param.opts[0]}: no help text")
            if isinstance(param, click.Argument):
                names = {param.metavar, (param.name or "").upper()} - {None, ""}
                if not any(name in (command.help or "") for name in names):
                    missing.append(f"{path} {'/'.join(sorted(names))}: argument not described in the command's help")
    assert not missing, "\n".join(missing)


def test_python_dash_m_runs_the_same_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "registry.cli", "jobs", "submit", "--help"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "[inline|worker|ray]" in done.stdout, done.stderr
