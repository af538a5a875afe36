"""The `swiftreg` command line: parse options, call the library, render the answer. Nothing else.

Exit codes: 0 ok, 1 refused or invalid input, 2 usage error (click's own).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

import converters
from converters.config import known_peft_versions

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def _format_errors(func: F) -> F:
    """Turn every FormatError into one clear line and exit 1: no traceback for a user mistake."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except converters.FormatError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"{exc.filename or ''}: {exc.strerror or exc}")

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swiftreg")
def main() -> None:
    """swiftreg: adapter registry and lossless ms-swift <-> PEFT conversion."""


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["peft", "swift"]), required=True, help="Target format.")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME",
              help="Convert only this adapter (repeat for several). Default: all.")
@click.option("--rename", "renames", multiple=True, metavar="OLD=NEW", help="Rename an adapter on the way.")
@click.option("--peft-version", metavar="X.Y",
              help=f"Write a config this PEFT release can load (known: {', '.join(known_peft_versions())}); "
                   "unknown fields are dropped only when they hold their default.")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists (atomically).")
@click.option("--fsync", "durable", is_flag=True,
              help="Flush every file to disk before DST appears, so it also survives a power loss.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_format_errors
def convert(src: Path, dst: Path, target: str, adapters: tuple[str, ...], renames: tuple[str, ...],
            peft_version: str | None, overwrite: bool, durable: bool, as_json: bool) -> None:
    """Convert the checkpoint SRC to TARGET format at DST, without decoding a tensor."""
    started = time.perf_counter()
    result = converters.convert(src, dst, target, adapters=list(adapters) or None,  # type: ignore[arg-type]
                                renames=converters.parse_renames(renames), peft_version=peft_version,
                                overwrite=overwrite, durable=durable)
    elapsed = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({"destination": str(result.destination), "format": result.target,
                               "adapters": list(result.adapters), "tensors": result.tensors,
                               "bytes": result.bytes, "seconds": round(elapsed, 4),
                               "notices": list(result.notices)}, indent=2))
        return
    for notice in result.notices:
        click.secho(f"note: {notice}", fg="yellow", err=True)
    click.echo(f"{result.target} checkpoint written to {result.destination}: adapters "
               f"{', '.join(result.adapters)}; {result.tensors} tensors, {result.bytes / 1e6:.1f} MB "
               f"in {elapsed:.2f} s")


def _format_targets(targets: Any) -> str:
    if targets is None:
        return "-"
    return targets if isinstance(targets, str) else ",".join(sorted(targets))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_format_errors
def inspect(path: Path, as_json: bool) -> None:
    """Show format, adapters, tuner types, ranks, targets, dtypes and sizes of a checkpoint."""
    summary = converters.inspect(path)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
        return
    click.echo(f"{summary.path}: {summary.format} checkpoint, {len(summary.adapters)} adapter(s)"
               + (", extra_states/" if summary.extra_states else ""))
    header = ("adapter", "type", "r", "alpha", "modules", "targets", "dtypes", "params", "size")
    rows = [header]
    for a in summary.adapters:
        rows.append((a.name, a.tuner_type + (" rs" if a.use_rslora else ""), str(a.r), str(a.lora_alpha),
                     str(a.modules), _format_targets(a.target_modules),
                     ",".join(f"{k}x{v}" for k, v in sorted(a.dtypes.items())),
                     f"{a.parameters:,}", f"{a.bytes / 1e6:.2f} MB"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--base-model", type=click.Path(path_type=Path),
              help="A base model folder (config.json + *.safetensors) the adapter must fit.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_format_errors
def validate(path: Path, base_model: Path | None, as_json: bool) -> None:
    """Check configs against tensors (and against a base model); exit 1 on any error."""
    report = converters.validate(path, base_model)
    if as_json:
        click.echo(json.dumps({"path": str(report.path), "format": report.format, "ok": report.ok,
                               "adapters": report.adapters,
                               "problems": [p.__dict__ for p in report.problems]}, indent=2))
    else:
        for problem in report.problems:
            click.secho(str(problem), fg="red" if problem.severity == "error" else "yellow")
        verdict = "valid" if report.ok else f"INVALID ({len(report.errors)} errors)"
        click.echo(f"{report.path}: {report.format}, adapters {', '.join(report.adapters)}: {verdict}")
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
