"""Commands on checkpoint folders (no registry needed): convert, inspect, validate.

`validate` also takes a registry id, and with `--target vllm` runs the vLLM serving checks.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

import converters
from converters.config import known_peft_versions

from ..errors import InvalidIdError, NotFoundError, RegistryError
from ..ids import parse_id
from .common import base_model_option, doing, echo_json, folder_size, format_targets, open_registry, stages


@click.command()
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
def convert(src: Path, dst: Path, target: str, adapters: tuple[str, ...], renames: tuple[str, ...],
            peft_version: str | None, overwrite: bool, durable: bool, as_json: bool) -> None:
    """Convert the checkpoint SRC to TARGET format at DST, without decoding a tensor."""
    doing(writing=f"the converted checkpoint at {dst}",
          interrupted=f"nothing was written at {dst} (a conversion is built beside it and renamed into place whole)")
    started = time.perf_counter()
    if folder_size(src) >= 32 << 20:  # a large adapter: say what is happening (a line off a terminal)
        stages("convert")(f"converting {src} to {target} at {dst}")
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


@click.command()
@click.argument("path", metavar="PATH|NS/NAME[@REF]")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def inspect(path: str, as_json: bool) -> None:
    """Show format, adapters, tuner types, ranks, targets, dtypes and sizes of the checkpoint at PATH.

    PATH is a checkpoint folder, or a registry id (its revision as stored) when no such folder exists.
    """
    summary = converters.inspect(_folder_or_revision(path, None))
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
        return
    click.echo(f"{summary.path}: {summary.format} checkpoint, {len(summary.adapters)} adapter(s)"
               + (", extra_states/" if summary.extra_states else ""))
    header = ("adapter", "type", "r", "alpha", "modules", "targets", "dtypes", "params", "size")
    rows = [header]
    for a in summary.adapters:
        rows.append((a.name, a.tuner_type + (" rs" if a.use_rslora else ""), str(a.r), str(a.lora_alpha),
                     str(a.modules), format_targets(a.target_modules),
                     ",".join(f"{k}x{v}" for k, v in sorted(a.dtypes.items())),
                     f"{a.parameters:,}", f"{a.bytes / 1e6:.2f} MB"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@click.command()
@click.argument("path", metavar="PATH|NS/NAME[@REF]")
@base_model_option("The base model the adapter must fit (with --target vllm: the model vLLM serves).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--target", type=click.Choice(["vllm"]),
              help="Check what this engine can serve: vLLM's load-time limits (DoRA, rank, bias, ...) and the base.")
@click.option("--max-lora-rank", type=click.IntRange(min=1), default=16, show_default=True,
              help="The --max-lora-rank vLLM is started with (with --target vllm).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Report tensors holding NaN or Inf as a warning, not an error (for deliberate values).")
def validate(path: str, base_model: str | None, as_json: bool, target: str | None = None,
             max_lora_rank: int = 16, allow_nonfinite: bool = False) -> None:
    """Check configs against tensors (and against a base model); exit 1 on any error.

    PATH is a checkpoint folder, or a registry id (resolved in PEFT form) when no such folder exists.
    NaN or Inf in a config number or a tensor is an error (tensors: a warning with --allow-nonfinite).
    """
    if target == "vllm":
        _validate_for_vllm(path, base_model, max_lora_rank, as_json)
        return
    folder = _folder_or_revision(path, "peft")
    from ..rules import base_model_folder

    base = None if base_model is None else (base_model_folder(base_model) or open_registry().resolve(base_model))
    report = converters.validate(folder, base, allow_nonfinite=allow_nonfinite)
    from ..interop import swift_checks  # ms-swift's own tuners: checked by ms-swift, in its environment

    report.problems.extend(swift_checks.check(folder, base))
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


def _folder_or_revision(text: str, fmt: str | None) -> Path:
    """PATH|NS/NAME[@REF]: the folder when it exists, else the registry revision's verified snapshot in `fmt`
    (its stored format with None); neither is one line naming both."""
    folder = Path(text)
    if folder.exists():
        return folder
    try:
        return open_registry().resolve(text, fmt)
    except (InvalidIdError, NotFoundError) as exc:
        raise _neither(text, exc) from None


def _neither(text: str, exc: RegistryError) -> RegistryError:
    """PATH named neither a folder nor a registry revision: one line that says both, so a mistyped folder
    is not answered with a registry lookup alone (nor a mistyped id with a missing folder alone)."""
    folder = f"no folder {text} (looked in {Path.cwd()})"
    if isinstance(exc, InvalidIdError):
        return RegistryError(f"{folder}, and {text} is not a registry id either (namespace/name[@ref])")
    try:
        open_registry().log(parse_id(text).repo)
    except (InvalidIdError, NotFoundError):
        return NotFoundError(f"{folder}, and no repository {parse_id(text).repo} in the registry; check the spelling")
    return NotFoundError(f"{folder}, and in the registry: {exc}")


def _validate_for_vllm(text: str, base_model: str | None, max_lora_rank: int, as_json: bool) -> None:
    """`validate --target vllm`: the serving checks of registry/vllm_checks.py on a folder or a registry id."""
    from ..vllm_checks import Reason, Verdict, check_revision, check_vllm, served_base

    path = Path(text)
    if path.exists():
        subject = str(path)
        verdict = check_vllm(path, max_lora_rank=max_lora_rank)
        if base_model is not None:  # a folder has no recorded base: check that the adapter fits this one
            from ..rules import base_model_folder

            base = base_model_folder(base_model) or open_registry().resolve(base_model)
            report = converters.validate(path, base)
            extra = tuple(Reason("base_model", f"{p.adapter}: {p.where}", p.message, f"serve it on the model it was "
                                 f"trained on, not {base_model}") for p in report.errors)
            verdict = Verdict(verdict.path, verdict.max_lora_rank, verdict.reasons + extra, verdict.notes)
    else:
        reg = open_registry()
        served = served_base(reg, str(base_model)) if base_model is not None else None
        try:
            info, _folder, verdict = check_revision(reg, text, max_lora_rank=max_lora_rank, served=served)
        except (InvalidIdError, NotFoundError) as exc:
            raise _neither(text, exc) from None
        subject = f"{info.repo}@{info.number} {info.digest[:19]}"
        if served is not None and not info.base_model:
            verdict = Verdict(verdict.path, verdict.max_lora_rank, verdict.reasons, verdict.notes + (
                f"{info.repo}@{info.number} records no base model (push --base-model): {base_model} was not "
                "compared",))
    if as_json:
        echo_json({"subject": subject, **verdict.to_dict()})
    else:
        for reason in verdict.reasons:
            click.secho(f"[vllm:{reason.limit}] {reason}", fg="red")
        for note in verdict.notes:
            click.secho(f"note: {note}", fg="yellow")
        click.echo(f"{subject}: " + (f"servable by vLLM (--max-lora-rank {max_lora_rank})" if verdict.ok
                                     else f"NOT servable by vLLM ({len(verdict.reasons)} reasons)"))
    if not verdict.ok:
        sys.exit(1)



COMMANDS = (convert, inspect, validate)
