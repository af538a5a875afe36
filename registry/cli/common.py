"""What every command module of the CLI shares: the `swiftreg` click group, the one-line error exit,
the output helpers (JSON, progress bars, targets) and how a command opens its registry.

Exit codes: 0 ok, 1 refused or invalid input, 2 usage error (click's own), 130 interrupted (Ctrl-C,
with a line saying what was kept), 141 the reader of stdout went away (`swiftreg ls | head -1`:
quietly, as standard tools do when SIGPIPE ends them).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, TypeVar

import click

import converters

from ..errors import RegistryError

if TYPE_CHECKING:
    from ..api import RegistryAPI
    from ..service import Registry

F = TypeVar("F", bound=Callable[..., Any])


#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), and of one whose stdout reader went away
#: (128 + SIGPIPE), as a shell reports a standard tool ended by that signal.
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
#: ctx.meta keys (shared by every context of one invocation) through which a command says, as it goes,
#: what it is writing (named if the disk fills) and what a Ctrl-C at this point leaves behind.
_WRITING = "swiftreg.writing"
_INTERRUPTED = "swiftreg.interrupted"
#: errno values meaning "this filesystem is full" (no space left, or the writer's disk quota).
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _fail(message: str) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def doing(*, writing: str | None = None, interrupted: str | None = None) -> None:
    """Say what the running command does now: `writing` is named if the disk fills ("blobs into
    ~/.cache/swiftreg/blobs"), `interrupted` is what a Ctrl-C at this point leaves behind."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    if writing is not None:
        ctx.meta[_WRITING] = writing
    if interrupted is not None:
        ctx.meta[_INTERRUPTED] = interrupted


def _stdout_gone() -> NoReturn:
    """The reader of stdout went away (`| head -1`): exit quietly. What is still buffered goes to
    /dev/null, so the flush at exit cannot raise a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - stdout without a descriptor (an embedding host)
        pass
    sys.exit(EXIT_BROKEN_PIPE)


def _interrupted(ctx: click.Context) -> NoReturn:
    kept = ctx.meta.get(_INTERRUPTED) or "the command stopped before it finished"
    click.secho(f"\ninterrupted: {kept}", fg="yellow", err=True)
    sys.exit(EXIT_INTERRUPTED)


def _disk_full(ctx: click.Context, exc: OSError) -> str:
    """The full-disk line: which file, what the command was writing, and what to do."""
    command = f"swiftreg {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "swiftreg"
    writing = ctx.meta.get(_WRITING) or f"the output of `{command}`"
    where = f" ({exc.filename})" if exc.filename else ""
    return (f"no space left on device while writing {writing}{where}: free space on that filesystem (`swiftreg gc` "
            "reclaims blobs no revision needs) and run it again")


class SwiftregGroup(click.Group):
    """The `swiftreg` group: whatever command runs under it, every refusal (the registry's and the
    format layer's error trees, and a file the OS refuses) is one clear line and exit 1, never a
    traceback for a user mistake; a full disk names what was being written; Ctrl-C says what was
    kept and exits 130; a closed stdout (`| head`) ends it quietly. Written once here rather than
    on every command."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return super().main(*args, **kwargs)
            finally:  # what is still buffered meets a closed pipe here, not in the interpreter's exit
                sys.stdout.flush()
        except BrokenPipeError:
            _stdout_gone()
        except KeyboardInterrupt:  # before a command ran (while starting up)
            click.secho("\ninterrupted: nothing was done", fg="yellow", err=True)
            sys.exit(EXIT_INTERRUPTED)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, click.Command] = _LazyCommands(self.commands)

    @property
    def lazy(self) -> dict[str, str]:
        """command name -> the module of registry/cli that defines it (registry/cli/__init__.py fills it)."""
        assert isinstance(self.commands, _LazyCommands)
        return self.commands.lazy

    @lazy.setter
    def lazy(self, table: dict[str, str]) -> None:
        assert isinstance(self.commands, _LazyCommands)
        self.commands.lazy = dict(table)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (converters.FormatError, RegistryError) as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _interrupted(ctx)
        except BrokenPipeError:
            _stdout_gone()
        except OSError as exc:
            if exc.errno in _FULL:
                _fail(_disk_full(ctx, exc))
            _fail(f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc.strerror or exc))
        except Exception as exc:
            if type(exc).__module__.startswith("sqlalchemy") and "database or disk is full" in str(exc):
                _fail(_database_full())  # SQLite's SQLITE_FULL: the disk under the registry database
            if type(exc).__module__.startswith("sqlalchemy"):  # the database down: one line, no traceback
                from ..db.faults import cause_of, database_fault

                if database_fault(exc) is not None:
                    _fail(_database_down(cause_of(exc)))
            raise


class _LazyCommands(dict):  # type: ignore[type-arg]
    """The group's commands, each module of registry/cli imported when one of its commands is first looked up:
    `swiftreg convert` imports the format commands only, never the server's, the jobs' or the registry's (each
    costs milliseconds of every start). Listing them all (`--help`, iterating) imports every module."""

    def __init__(self, commands: dict[str, click.Command]) -> None:
        super().__init__(commands)
        self.lazy: dict[str, str] = {}

    def _load(self, module: str) -> None:
        import importlib

        for command in importlib.import_module(f"registry.cli.{module}").COMMANDS:
            dict.__setitem__(self, command.name, command)
        self.lazy = {k: v for k, v in self.lazy.items() if v != module}

    def _load_all(self) -> None:
        for module in sorted(set(self.lazy.values())):
            self._load(module)

    def _wanted(self, name: object) -> None:
        if not isinstance(name, str) or dict.__contains__(self, name):
            return
        if name in self.lazy:
            self._load(self.lazy[name])
        else:  # a command the table misses (tests/test_transfer_once.py flags it) or a typo: look everywhere
            self._load_all()

    def __getitem__(self, name: str) -> click.Command:
        self._wanted(name)
        return dict.__getitem__(self, name)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        self._wanted(name)
        return dict.get(self, name, default)

    def __contains__(self, name: object) -> bool:
        self._wanted(name)
        return dict.__contains__(self, name)

    def __iter__(self) -> Iterator[str]:
        self._load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load_all()
        return dict.__len__(self)

    def keys(self):  # type: ignore[no-untyped-def, override]
        self._load_all()
        return dict.keys(self)

    def values(self):  # type: ignore[no-untyped-def, override]
        self._load_all()
        return dict.values(self)

    def items(self):  # type: ignore[no-untyped-def, override]
        self._load_all()
        return dict.items(self)


def _database_down(cause: str) -> str:
    from .. import constants
    from ..db.faults import safe_url

    where = safe_url(constants.database_url() or f"sqlite:///{constants.home() / 'registry.db'}")
    return f"the database at {where} does not answer ({cause}): start it and run this again"


def _database_full() -> str:
    from .. import constants

    where = constants.database_url() or f"sqlite:///{constants.home() / 'registry.db'}"
    return (f"no space left on device while writing the registry database ({where}): nothing was committed; free "
            "space on that filesystem (`swiftreg gc` reclaims blobs no revision needs) and run it again")


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


def stages(command: str, *, models: bool = False) -> Callable[[str], None]:
    """A reporter of a long command's stages, one line each on stderr: plain off a terminal (logs, CI: there the
    progress bars are silent, so these lines are the progress), dim on a terminal beside the bars. With
    `models` (commands that load models), off a terminal the model libraries' own bars are silenced too:
    they would write one log line per update."""
    tty = sys.stderr.isatty()
    if models and not tty:  # read by huggingface_hub, and by transformers from it, when first imported
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    start = time.monotonic()

    def say(message: str) -> None:
        click.secho(f"{command}: {message} ({time.monotonic() - start:.1f} s)", err=True, dim=tty)

    return say


@contextlib.contextmanager
def slow_stage(command: str, message: str, after: float = 1.0) -> Iterator[None]:
    """Say `message` as a stage line (see `stages`) only if the block is still running after `after` seconds:
    a pull from a warm cache says nothing, a long download or conversion says what it is doing."""
    timer = threading.Timer(after, stages(command), args=(message,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


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


#: What `--base-model` takes in every command: a local model folder (a directory that exists wins) or a registry id.
BASE_MODEL_METAVAR = "DIR|NS/NAME[@REF]"


def base_model_option(help: str, *, required: bool = False) -> Callable[[F], F]:
    """The one `--base-model` option (`--base` is kept as an alias): a model folder or a registered base model."""
    return click.option("--base-model", "--base", "base_model", metavar=BASE_MODEL_METAVAR, required=required,
                        help=help + " A folder that exists is read as a folder; anything else as a registry id.")


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
