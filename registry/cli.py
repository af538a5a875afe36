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
    """Turn every refusal into one clear line and exit 1: no traceback for a user mistake."""
    import functools

    from .errors import RegistryError

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (converters.FormatError, RegistryError) as exc:
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
    if isinstance(targets, str):
        return targets
    if isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        return ",".join(sorted(targets))
    return repr(targets)


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
@click.argument("path", type=click.Path(path_type=Path), metavar="PATH|NS/NAME[@REF]")
@click.option("--base-model", type=click.Path(path_type=Path),
              help="A base model folder (config.json + *.safetensors) the adapter must fit; with --target vllm "
                   "also a registry base model NS/NAME[@REF]: the model vLLM serves.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--target", type=click.Choice(["vllm"]),
              help="Check what this engine can serve: vLLM's load-time limits (DoRA, rank, bias, ...) and the base.")
@click.option("--max-lora-rank", type=click.IntRange(min=1), default=16, show_default=True,
              help="The --max-lora-rank vLLM is started with (with --target vllm).")
@_format_errors
def validate(path: Path, base_model: Path | None, as_json: bool, target: str | None = None,
             max_lora_rank: int = 16) -> None:
    """Check configs against tensors (and against a base model); exit 1 on any error.

    PATH is a checkpoint folder, or a registry id (resolved in PEFT form) when no such folder exists.
    """
    if target == "vllm":
        _validate_for_vllm(path, base_model, max_lora_rank, as_json)
        return
    if not path.exists():
        path = _registry().resolve(str(path), "peft")
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


def _push_check(reg: Any, revision: Any, base_model: str | None, max_lora_rank: int) -> dict[str, Any]:
    """`push --check vllm`: the serving verdict of the pushed revision, computed and recorded by the registry."""
    return reg.check_serving(f"{revision.repo}@{revision.number}", "vllm", max_lora_rank=max_lora_rank,
                             served_model=base_model)


def _validate_for_vllm(path: Path, base_model: Path | None, max_lora_rank: int, as_json: bool) -> None:
    """`validate --target vllm`: the serving checks of registry/vllm_checks.py on a folder or a registry id."""
    from .vllm_checks import Reason, Verdict, check_revision, check_vllm, served_base

    if path.exists():
        subject = str(path)
        verdict = check_vllm(path, max_lora_rank=max_lora_rank)
        if base_model is not None:  # a folder has no recorded base: check that the adapter fits this one
            report = converters.validate(path, base_model)
            extra = tuple(Reason("base_model", f"{p.adapter}: {p.where}", p.message, f"serve it on the model it was "
                                 f"trained on, not {base_model}") for p in report.errors)
            verdict = Verdict(verdict.path, verdict.max_lora_rank, verdict.reasons + extra, verdict.notes)
    else:
        reg = _registry()
        served = served_base(reg, str(base_model)) if base_model is not None else None
        info, _folder, verdict = check_revision(reg, str(path), max_lora_rank=max_lora_rank, served=served)
        subject = f"{info.repo}@{info.number} {info.digest[:19]}"
        if served is not None and not info.base_model:
            verdict = Verdict(verdict.path, verdict.max_lora_rank, verdict.reasons, verdict.notes + (
                f"{info.repo}@{info.number} records no base model (push --base-model): {base_model} was not "
                "compared",))
    if as_json:
        _echo_json({"subject": subject, **verdict.to_dict()})
    else:
        for reason in verdict.reasons:
            click.secho(f"[vllm:{reason.limit}] {reason}", fg="red")
        for note in verdict.notes:
            click.secho(f"note: {note}", fg="yellow")
        click.echo(f"{subject}: " + (f"servable by vLLM (--max-lora-rank {max_lora_rank})" if verdict.ok
                                     else f"NOT servable by vLLM ({len(verdict.reasons)} reasons)"))
    if not verdict.ok:
        sys.exit(1)


# ----- registry commands ------------------------------------------------------------------------

def _registry():  # type: ignore[no-untyped-def]
    """The registry every command works on: the server SWIFTREG_URL names, else the embedded one.

    Commands that act on a registry's own database (schema upgrades, tokens) run where the server
    runs, never over HTTP: with SWIFTREG_URL set they refuse and say so.
    """
    from . import constants

    url = constants.url()
    if url is None:
        from .service import Registry

        return Registry()
    ctx = click.get_current_context(silent=True)
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    command = " ".join(reversed(names))
    if command in ("db upgrade", "token create", "token revoke", "token ls"):
        from .errors import RegistryError

        raise RegistryError(f"`swiftreg {command}` works on a registry's own database and is not available over "
                            f"HTTP (SWIFTREG_URL={url}); run it on the server's machine without SWIFTREG_URL, "
                            "with the server's SWIFTREG_HOME / SWIFTREG_DATABASE_URL")
    from .client import RemoteRegistry

    return RemoteRegistry(url, constants.token())


def _progress(total: int, what: str):  # type: ignore[no-untyped-def]
    """A byte progress bar on stderr for anything over a few MB, silent when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=what, leave=False,
                disable=None if total > 4 << 20 else True, file=sys.stderr)


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else 0


def _revision_line(info: Any) -> str:
    refs = ", ".join(info.branches + [f"tag:{t}" for t in info.tags])
    when = info.created_at.strftime("%Y-%m-%d %H:%M")
    return (f"{info.number:>4}  {info.digest[:19]}  {info.format:<6} {when}  "
            f"{'(' + refs + ')' if refs else '':<20} {info.message or ''}").rstrip()


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@click.option("--tag", help="Also tag the revision (tags are immutable unless --force).")
@click.option("--force", is_flag=True, help="Move the tag if it already points elsewhere.")
@click.option("-m", "--message", help="A note kept with the revision.")
@click.option("--base-model", metavar="NS/NAME[@REF]", help="Validate against this registered base model.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--check", "check_target", type=click.Choice(["vllm"]),
              help="Also check what vLLM can serve and record the verdict on the revision (validation_runs).")
@click.option("--max-lora-rank", type=click.IntRange(min=1), default=16, show_default=True,
              help="The --max-lora-rank vLLM runs with (with --check vllm).")
@_format_errors
def push(path: Path, repo_id: str, tag: str | None, force: bool, message: str | None, base_model: str | None,
         as_json: bool, check_target: str | None = None, max_lora_rank: int = 16) -> None:
    """Store the adapter checkpoint at PATH as a new revision of NAMESPACE/NAME."""
    reg = _registry()
    with _progress(_folder_size(path), "push") as bar:
        result = reg.push(path, repo_id, tag=tag, force=force, message=message, base_model=base_model,
                          progress=bar.update)
    check = _push_check(reg, result.revision, base_model, max_lora_rank) if check_target == "vllm" else None
    if as_json:
        _echo_json({"created": result.created, "blobs_written": result.blobs_written,
                    "bytes_written": result.bytes_written, "notices": result.notices,
                    "revision": result.revision.to_dict(), **({"check": check} if check else {})})
        return
    if check is not None:
        for line in check["reasons"]:
            click.secho(f"vllm: {line['where']}: {line['message']}; {line['advice']}", fg="yellow", err=True)
        click.secho("vllm: " + ("servable" if check["ok"] else "NOT servable") + f" (--max-lora-rank {max_lora_rank})"
                    + ("; verdict recorded" if check.get("recorded") else ""), fg="green" if check["ok"] else "yellow",
                    err=True)
    for notice in result.notices:
        click.secho(f"note: {notice}", fg="yellow", err=True)
    rev = result.revision
    verb = "pushed" if result.created else "unchanged: already"
    click.echo(f"{verb} {rev.repo}@{rev.number} {rev.digest} ({rev.format}, {result.blobs_written} new blobs, "
               f"{result.bytes_written / 1e6:.2f} MB written){' tags: ' + ', '.join(rev.tags) if rev.tags else ''}")


@main.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME[@REF]")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Copy the revision here (default: print "
              "the path of the verified cache snapshot).")
@click.option("--format", "fmt", type=click.Choice(["swift", "peft"]), help="Convert if stored otherwise.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@_format_errors
def pull(repo_id: str, output: Path | None, fmt: str | None, overwrite: bool) -> None:
    """Materialise a revision (converted once, then cached), verified blob by blob."""
    click.echo(str(_registry().pull(repo_id, output, fmt, overwrite=overwrite)))


@main.command(name="ls")
@click.argument("namespace", required=False)
@click.option("--json", "as_json", is_flag=True)
@_format_errors
def list_repos(namespace: str | None, as_json: bool) -> None:
    """List adapters and base models (optionally of one NAMESPACE)."""
    repos = _registry().list(namespace)
    if as_json:
        _echo_json([r.to_dict() for r in repos])
        return
    for r in repos:
        kind = "base" if r.kind == "base" else (r.tuner_type or "adapter")
        click.echo(f"{r.repo:<40} {kind:<8} {r.revisions:>4} revisions  main=@{r.main}"
                   + (f"  base={r.base_model}" if r.base_model else ""))


@main.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@click.option("--json", "as_json", is_flag=True)
@_format_errors
def log(repo_id: str, as_json: bool) -> None:
    """Revisions, newest first: number, digest, format, date, refs, message."""
    revisions = _registry().log(repo_id)
    if as_json:
        _echo_json([{k: v for k, v in r.to_dict().items() if k != "manifest"} for r in revisions])
        return
    for info in revisions:
        click.echo(_revision_line(info))


@main.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME[@REF]")
@click.option("--json", "as_json", is_flag=True)
@_format_errors
def show(repo_id: str, as_json: bool) -> None:
    """One revision: refs, metadata and files."""
    info = _registry().show(repo_id)
    if as_json:
        _echo_json(info.to_dict())
        return
    click.echo(f"{info.repo}@{info.number}  {info.digest}")
    click.echo(f"  format {info.format}; refs {', '.join(info.branches + info.tags) or '-'}; "
               f"created {info.created_at:%Y-%m-%d %H:%M}" + (f"; base {info.base_model}" if info.base_model else ""))
    meta = info.meta
    if info.kind == "adapter":
        click.echo(f"  {meta.get('tuner_type')} r={meta.get('r')} alpha={meta.get('lora_alpha')} "
                   f"targets={_format_targets(meta.get('target_modules'))} dtype={meta.get('dtype')} "
                   f"params={meta.get('parameters', 0):,}")
    else:
        click.echo(f"  {meta.get('architecture')} dtype={meta.get('dtype')} params={meta.get('parameters', 0):,}")
    if info.message:
        click.echo(f"  {info.message}")
    for p in info.provenance:
        click.echo(f"  imported from {p['hub']}://{p['repo']}" + (f"/{p['subfolder']}" if p["subfolder"] else "")
                   + f" at {p['requested_revision'] or 'default branch'} (commit {p['commit']}, {p['endpoint']}, "
                   f"{p['imported_at']})")
    for f in info.manifest["files"]:
        click.echo(f"  {f['size']:>12,}  {f['sha256'][:19]}  {f['path']}")


@main.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME[@REF]")
@click.argument("tag_name", metavar="TAG")
@click.option("--force", is_flag=True, help="Move TAG if it already points elsewhere.")
@_format_errors
def tag(repo_id: str, tag_name: str, force: bool) -> None:
    """Point TAG at the revision REF names (main by default)."""
    info = _registry().tag(repo_id, tag_name, force=force)
    click.echo(f"{info.repo}@{tag_name} -> revision {info.number} {info.digest[:19]}")


@main.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME@TAG")
@_format_errors
def untag(repo_id: str) -> None:
    """Remove a tag (the revision stays)."""
    from .ids import parse_id

    rid = parse_id(repo_id)
    if not rid.explicit_ref:
        raise click.UsageError("name the tag: NAMESPACE/NAME@TAG")
    _registry().untag(rid.repo, rid.ref.value)
    click.echo(f"removed tag {repo_id}")


@main.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME@REF")
@click.option("--force", is_flag=True, help="Allow removing the main branch.")
@_format_errors
def rm(repo_id: str, force: bool) -> None:
    """Remove a tag or branch. Revisions are immutable and stay; gc reclaims unreferenced blobs."""
    _registry().remove_ref(repo_id, force=force)
    click.echo(f"removed {repo_id}")


@main.command()
@click.option("--grace", type=float, default=3600.0, show_default=True,
              help="Keep unreferenced blobs younger than this many seconds (protects pushes in flight).")
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@_format_errors
def gc(grace: float, dry_run: bool, as_json: bool) -> None:
    """Delete blobs no revision references (and leftovers of killed writes)."""
    result = _registry().gc(grace_seconds=grace, dry_run=dry_run)
    if as_json:
        _echo_json(result.__dict__)
        return
    click.echo(f"{'would remove' if dry_run else 'removed'} {result.blobs_removed} blobs "
               f"({result.bytes_removed / 1e6:.2f} MB) and {result.temp_files_removed} temp files; "
               f"{result.blobs_kept} blobs kept")


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@_format_errors
def upgrade() -> None:
    """Create or upgrade the schema to the newest migration."""
    from .db import engine as dbe

    registry = _registry()
    dbe.upgrade(registry.engine)
    click.echo(f"{registry.engine.url.render_as_string(hide_password=True)}: schema at {dbe.current_revision(registry.engine)}")


@main.group()
def base() -> None:
    """Base models (transformers folders) adapters are validated against."""


@base.command(name="push")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@click.option("--tag")
@click.option("--force", is_flag=True)
@click.option("-m", "--message")
@click.option("--json", "as_json", is_flag=True)
@_format_errors
def base_push(path: Path, repo_id: str, tag: str | None, force: bool, message: str | None, as_json: bool) -> None:
    """Store a transformers model folder (config.json + *.safetensors) as a base model revision."""
    with _progress(_folder_size(path), "push") as bar:
        result = _registry().push_base(path, repo_id, tag=tag, force=force, message=message, progress=bar.update)
    if as_json:
        _echo_json({"created": result.created, "revision": result.revision.to_dict()})
        return
    rev = result.revision
    click.echo(f"{'pushed' if result.created else 'unchanged: already'} base {rev.repo}@{rev.number} {rev.digest} "
               f"({rev.meta.get('architecture')}, {rev.meta.get('parameters', 0):,} parameters)")


# ----- worker commands -----------------------------------------------------------------------------

def _report(result: Any, as_json: bool) -> None:
    """Print the equivalence table (or JSON) and exit 1 when a tolerance was exceeded."""
    from .tensors.equivalence import format_table

    if as_json:
        _echo_json({"operation": result.operation, "passed": result.passed, "notes": result.notes,
                    "figures": result.figures, "comparisons": [c.to_dict() for c in result.comparisons],
                    "output": str(result.output) if result.output else None,
                    "pushed": result.pushed.to_dict() if result.pushed else None})
    else:
        for note in result.notes:
            click.secho(f"note: {note}", fg="yellow", err=True)
        if result.comparisons:
            click.echo(format_table(result.comparisons))
        if result.pushed is not None:
            click.echo(f"pushed {result.pushed.repo}@{result.pushed.number} {result.pushed.digest}")
        if result.output is not None:
            click.echo(f"written to {result.output}")
    if not result.passed:
        sys.exit(1)


_device_option = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
                              show_default=True, help="auto: CUDA when available.")
_output_options = [
    click.option("--push", metavar="NS/NAME", help="Push the result as a new revision (with lineage)."),
    click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the result to this folder."),
    click.option("--tag", help="Tag the pushed revision."),
    click.option("--json", "as_json", is_flag=True),
]


def _with(options: list[Any]) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


@main.command()
@click.argument("adapter_ref", metavar="ADAPTER_REF")
@click.option("--base", "base_ref", required=True, metavar="BASE_REF", help="Base model: registry id or folder.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), help="Storage dtype of the result.")
@click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--safe", is_flag=True, help="Refuse to write if any merged tensor has NaN or Inf.")
@click.option("--no-check", is_flag=True, help="Skip the equivalence check (not recommended).")
@_device_option
@_with(_output_options)
@_format_errors
def merge(adapter_ref: str, base_ref: str, dtype: str | None, precision: str, safe: bool, no_check: bool, device: str,
          push: str | None, output: Path | None, tag: str | None, as_json: bool) -> None:
    """Merge an adapter into a base model, check the result on the model, push or write it."""
    from . import ops

    if not push and not output:
        raise click.UsageError("give --push NS/NAME or -o DIR")
    from tqdm import tqdm

    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="merge", leave=False, disable=None,
              file=sys.stderr) as bar:
        result = ops.merge(_registry(), adapter_ref, base_ref, push=push, output=output, dtype=dtype, device=device,
                           precision=precision, safe=safe, check=not no_check, tag=tag, progress=bar.update)
    _report(result, as_json)


@main.command()
@click.argument("merged_ref", metavar="MERGED_REF")
@click.option("--adapter", "adapter_ref", required=True, metavar="ADAPTER_REF")
@click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@_device_option
@_with(_output_options)
@_format_errors
def unmerge(merged_ref: str, adapter_ref: str, precision: str, device: str, push: str | None, output: Path | None,
            tag: str | None, as_json: bool) -> None:
    """Take an adapter back out of a merged model (bit for bit when the registry knows the original)."""
    from . import ops

    if not push and not output:
        raise click.UsageError("give --push NS/NAME or -o DIR")
    _report(ops.unmerge(_registry(), merged_ref, adapter_ref, push=push, output=output, device=device,
                        precision=precision, tag=tag), as_json)


@main.command()
@click.argument("refs", nargs=-1, required=True, metavar="REF REF ...")
@click.option("--weights", required=True, help="Comma-separated, one per adapter: 0.6,0.4")
@click.option("--method", default="svd", show_default=True,
              type=click.Choice(["cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
                                 "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"]))
@click.option("--semantics", type=click.Choice(["exact", "peft"]), default="exact", show_default=True,
              help="exact: the intended sum of w_i * s_i * B_i A_i. peft: what PEFT's add_weighted_adapter returns, "
                   "including its cross terms and scaling quirks.")
@click.option("--rank", type=int, help="Rank of the result (svd family; PEFT's svd_rank).")
@click.option("--svd-clamp", type=float)
@click.option("--density", type=float, help="Fraction kept by ties / dare / magnitude_prune.")
@click.option("--majority-sign-method", type=click.Choice(["total", "frequency"]), default="total", show_default=True)
@click.option("--seed", type=int, help="Seed for DARE's random masks.")
@click.option("--base", "base_ref", metavar="BASE_REF", help="Run the result on this base model and compare.")
@_device_option
@_with(_output_options)
@_format_errors
def combine(refs: tuple[str, ...], weights: str, method: str, semantics: str, rank: int | None,
            svd_clamp: float | None, density: float | None, majority_sign_method: str, seed: int | None,
            base_ref: str | None, device: str, push: str | None, output: Path | None, tag: str | None,
            as_json: bool) -> None:
    """Combine two or more adapters with weights into one adapter."""
    from . import ops

    try:
        parsed = [float(w) for w in weights.split(",")]
    except ValueError:
        raise click.UsageError(f"--weights must be numbers separated by commas, got {weights!r}") from None
    if not push and not output:
        raise click.UsageError("give --push NS/NAME or -o DIR")
    _report(ops.combine(_registry(), list(refs), parsed, method, semantics=semantics, rank=rank, svd_clamp=svd_clamp,
                        density=density, majority_sign_method=majority_sign_method, seed=seed, base_ref=base_ref,
                        push=push, output=output, device=device, tag=tag), as_json)


@main.command(name="check-equivalence")
@click.argument("adapter_ref", metavar="ADAPTER_REF")
@click.option("--base", "base_ref", required=True, metavar="BASE_REF")
@click.option("--merged", "merged_ref", metavar="MERGED_REF", help="A merged model to check (default: merge now).")
@_device_option
@click.option("--json", "as_json", is_flag=True)
@_format_errors
def check_equivalence(adapter_ref: str, base_ref: str, merged_ref: str | None, device: str, as_json: bool) -> None:
    """Run base + adapter, the merged model and PEFT's merge on one probe batch and compare."""
    from . import ops

    _report(ops.check(_registry(), adapter_ref, base_ref, merged_ref, device=device), as_json)


# ----- server and tokens ----------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--home", type=click.Path(path_type=Path), help="Registry home (default: SWIFTREG_HOME).")
@click.option("--database-url", help="Any SQLAlchemy URL (default: SWIFTREG_DATABASE_URL, else SQLite in the home).")
@click.option("--store", type=click.Path(path_type=Path), help="Blob store folder (default: HOME/blobs).")
@click.option("--anonymous-read", is_flag=True, help="Allow reads without a token.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--log-format", default="json", show_default=True, type=click.Choice(["json", "text"]),
              help="json: one object per line (access log: request_id, status, bytes, duration_ms, token_id, ...).")
@click.option("--ssl-certfile", type=click.Path(path_type=Path))
@click.option("--ssl-keyfile", type=click.Path(path_type=Path))
@_format_errors
def serve(host: str, port: int, home: Path | None, database_url: str | None, store: Path | None,
          anonymous_read: bool, log_level: str, log_format: str, ssl_certfile: Path | None,
          ssl_keyfile: Path | None) -> None:
    """Serve the registry over HTTP: swiftreg's API v1 and the Hugging Face download protocol."""
    import logging

    import uvicorn

    from .server.app import ServerSettings, create_app
    from .service import Registry
    from .store import LocalBlobStore

    from .server.access_log import JsonLogFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
    registry = Registry(home=home, database_url=database_url, store=LocalBlobStore(store) if store else None)
    registry._ready()  # migrate before the first request, not during it
    app = create_app(registry, ServerSettings(anonymous_read=anonymous_read))
    # log_config=None: uvicorn's own loggers go through the handler above; its text access log is
    # replaced by the JSON one of server/access_log.py (logged when a response ends, with its bytes).
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30, log_config=None,
                access_log=False,
                ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)


@main.group()
def token() -> None:
    """Bearer tokens for `swiftreg serve` (stored only as hashes)."""


@token.command(name="create")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), required=True)
@click.option("--namespace", "namespaces", multiple=True, help="Limit the token to this namespace (repeatable).")
@click.option("--owner", default=lambda: __import__("getpass").getuser(), show_default="current user")
@click.option("--json", "as_json", is_flag=True)
@_format_errors
def token_create(scope: str, namespaces: tuple[str, ...], owner: str, as_json: bool) -> None:
    """Create a token; its secret is printed once and never stored."""
    from . import tokens

    secret, info = tokens.create(_registry(), scope, owner, list(namespaces) or None)
    if as_json:
        _echo_json({"id": info.id, "token": secret, "scope": info.scope, "namespaces": info.namespaces})
    else:
        click.echo(secret)
        click.secho(f"token {info.id} ({scope}{', namespaces ' + ','.join(namespaces) if namespaces else ''}): "
                    "keep it now, it cannot be shown again", err=True, fg="yellow")


@token.command(name="revoke")
@click.argument("token_id", type=int)
@_format_errors
def token_revoke(token_id: int) -> None:
    """Revoke a token by id."""
    from . import tokens

    tokens.revoke(_registry(), token_id)
    click.echo(f"revoked token {token_id}")


@token.command(name="ls")
@click.option("--json", "as_json", is_flag=True)
@_format_errors
def token_list(as_json: bool) -> None:
    """List tokens (never their secrets)."""
    from . import tokens

    rows = tokens.list_tokens(_registry())
    if as_json:
        _echo_json([{**r.__dict__, "created_at": r.created_at.isoformat()} for r in rows])
        return
    for r in rows:
        click.echo(f"{r.id:>4}  {r.scope:<6} {r.owner:<16} {','.join(r.namespaces or ['*']):<20} "
                   f"{'revoked' if r.revoked else 'active'}")


@main.command(name="import")
@click.argument("source", metavar="hf://OWNER/NAME[@REV] | ms://OWNER/NAME[@REV]")
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@click.option("--tag", help="Also tag the imported revision.")
@click.option("--base-model", metavar="NS/NAME[@REF]", help="Validate against this registered base model.")
@click.option("--subfolder", metavar="DIR", help="The folder of the hub repo that holds the adapter.")
@click.option("-m", "--message", help="A note kept with the revision (default: where it came from).")
@click.option("--json", "as_json", is_flag=True)
@_format_errors
def import_(source: str, repo_id: str, tag: str | None, base_model: str | None, subfolder: str | None,
            message: str | None, as_json: bool) -> None:
    """Import an adapter from the Hugging Face Hub (hf://) or ModelScope (ms://) with its provenance.

    Downloaded with the hub's own client (HF_ENDPOINT, HF_TOKEN, MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN
    apply), validated like push; pickles are left out. Importing the same hub commit again is a no-op.
    Against a server (SWIFTREG_URL) the import runs there as a job, downloaded by its workers.
    """
    from . import constants

    registry = _registry()
    remote: dict[str, object] = {}
    if constants.url():  # the server's workers import: say which job, then wait for it
        remote["on_queued"] = lambda job: click.echo(
            f"queued as import job {job.id} on {constants.url()}: a `swiftreg worker` beside that server "
            "runs it; waiting (Ctrl-C stops waiting, not the job)", err=True)
    with _progress(0, "import") as bar:
        result = registry.import_from(source, repo_id, tag=tag, base_model=base_model, subfolder=subfolder,
                                      message=message, progress=bar.update, **remote)
    if as_json:
        _echo_json({"created": result.created, "already_imported": result.already_imported,
                    "commit": result.commit, "files": result.files, "notices": result.notices,
                    "revision": result.revision.to_dict()})
        return
    for notice in result.notices:
        click.secho(f"note: {notice}", fg="yellow", err=True)
    rev = result.revision
    verb = ("already imported:" if result.already_imported else "imported" if result.created
            else "unchanged: same files as")
    click.echo(f"{verb} {rev.repo}@{rev.number} {rev.digest} ({rev.format}) from {result.source.hub}://"
               f"{result.source.repo} commit {result.commit}{' tags: ' + ', '.join(rev.tags) if rev.tags else ''}")



# ----- jobs, workers and nightly validation (registry/cli_jobs.py) -------------------------------------

if __name__ == "__main__":
    # `python -m registry.cli`: run the one `registry.cli` module instance, the one cli_jobs imports
    # and registers its commands on (registering them on this __main__ copy would import cli twice).
    from registry.cli import main as _main

    _main()
else:
    from .cli_jobs import register as _register_job_commands  # noqa: E402 - needs the helpers above

    _register_job_commands(main)
