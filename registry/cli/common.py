"""What every command module of the CLI shares: the `swiftreg` click group, the one-line error exit,
the output helpers (JSON, progress bars, targets) and how a command opens its registry.

Exit codes: 0 ok, 1 refused or invalid input, 2 usage error (click's own).
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TypeVar

import click

import converters

from ..errors import RegistryError

if TYPE_CHECKING:
    from ..api import RegistryAPI
    from ..service import Registry

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


class SwiftregGroup(click.Group):
    """The `swiftreg` group: whatever command runs under it, every refusal (the registry's and the
    format layer's error trees, and a file the OS refuses) is one clear line and exit 1, never a
    traceback for a user mistake. Written once here rather than on every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (converters.FormatError, RegistryError) as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"{exc.filename or ''}: {exc.strerror or exc}")


@click.group(cls=SwiftregGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swiftreg")
def main() -> None:
    """swiftreg: adapter registry and lossless ms-swift <-> PEFT conversion."""


def open_registry() -> RegistryAPI:
    """The registry most commands work on: the server SWIFTREG_URL names, else the embedded one."""
    from .. import constants

    url = constants.url()
    if url is None:
        from ..service import Registry

        return Registry()
    from ..client import RemoteRegistry

    return RemoteRegistry(url, constants.token())


def local_registry(command: str) -> Registry:
    """The embedded registry, for the commands that work on its own database and blob store (db upgrade,
    token, worker, validate-all): they run where the registry is, never over HTTP, and say so."""
    from .. import constants
    from ..service import Registry

    url = constants.url()
    if url is not None:
        raise RegistryError(f"`swiftreg {command}` works on the registry's own database and blob store and is not "
                            f"available over HTTP (SWIFTREG_URL={url}): run it where the registry is (the server's "
                            "machine) without SWIFTREG_URL, with SWIFTREG_HOME / SWIFTREG_DATABASE_URL pointing at it")
    return Registry()


def progress_bar(total: int, what: str) -> Any:
    """A byte progress bar on stderr for anything over a few MB, silent when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=what, leave=False,
                disable=None if total > 4 << 20 else True, file=sys.stderr)


def folder_size(path: Path) -> int:
    """Bytes under a folder (0 for a file or nothing): the total a push's progress bar counts to."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else 0


def echo_json(data: Any) -> None:
    """Print `data` for machines (`--json`): indented, anything not JSON as its str()."""
    click.echo(json.dumps(data, indent=2, default=str))


def format_targets(targets: Any) -> str:
    """target_modules for a table cell: a regex as is, a list sorted and comma-joined."""
    if targets is None:
        return "-"
    if isinstance(targets, str):
        return targets
    if isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        return ",".join(sorted(targets))
    return repr(targets)


def json_option(help: str = "Print the result as JSON.") -> Callable[[F], F]:
    """The `--json` flag every command that prints a result offers, for machines."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def shows(to_json: Callable[[Any], Any],
          text: Callable[[Any], None]) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """The shape of every command that only reads and shows: the command returns what it found, and
    this prints it, `to_json(found)` with `--json` (for machines) or `text(found)` (for people)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., None]:
        @functools.wraps(func)
        def command(*args: Any, as_json: bool, **kwargs: Any) -> None:
            found = func(*args, **kwargs)
            if as_json:
                echo_json(to_json(found))
            else:
                text(found)

        return json_option()(command)

    return decorate
