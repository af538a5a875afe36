"""The `swiftreg` command line run in-process (click's runner) on a registry of the test's own."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner, Result

from registry.cli import main


def cli_on(home: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`run(*args, ok=True)`: the CLI on the embedded registry at `home` / `database_url` (never a server). With
    `ok` the command must exit 0; without, it must refuse: exit 1 and one line, no traceback."""
    monkeypatch.setenv("SWIFTREG_HOME", str(home))
    monkeypatch.setenv("SWIFTREG_DATABASE_URL", database_url)
    monkeypatch.delenv("SWIFTREG_URL", raising=False)

    def run(*args: Any, ok: bool | None = True) -> Result:
        """`ok=None`: any outcome, for a test that checks the exit code itself (a usage error's 2)."""
        result = CliRunner().invoke(main, [str(a) for a in args])
        if ok is None:
            return result
        if ok:
            assert result.exit_code == 0, (args, result.output, result.stderr)
        else:
            assert result.exit_code == 1 and "Traceback" not in result.output, (args, result.output)
        return result

    return run
