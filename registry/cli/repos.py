"""Commands on a registry's repositories and revisions: push, pull, ls, log, show, tag, branch, untag, rm, gc,
`db upgrade` and `base push`. They work on the embedded registry or, with SWIFTREG_URL, over HTTP.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from ..params import MAX_PAGE
from .common import (
    F,
    base_model_option,
    doing,
    echo_json,
    folder_size,
    format_targets,
    json_option,
    local_registry,
    open_registry,
    progress_bar,
    shows,
    slow_stage,
    stages,
)

if TYPE_CHECKING:
    from ..api import RegistryAPI, RepoInfo, RevisionInfo


def _push_check(reg: RegistryAPI, revision: RevisionInfo, base_model: str | None, max_lora_rank: int) -> dict[str, Any]:
    """`push --check vllm`: the serving verdict of the pushed revision, computed and recorded by the registry."""
    return reg.check_serving(f"{revision.repo}@{revision.number}", "vllm", max_lora_rank=max_lora_rank,
                             served_model=base_model)


def _pushing(reg: RegistryAPI) -> None:
    """What a push writes, and what a Ctrl-C during it leaves behind, for the CLI's one error handler."""
    remote = getattr(reg, "url", None)
    doing(writing=f"blobs into {reg.home}/blobs" if not remote else f"staging files under {reg.home}",
          interrupted="nothing was committed; blobs already " + ("uploaded stay on the server" if remote
                                                                 else "stored are kept")
          + " for the next push, which skips them (`swiftreg gc` reclaims them if none comes)")


#: Bytes from which push and base push say their stage (a line on stderr off a terminal, beside the bar on one).
LARGE = 32 << 20


def _where(reg: RegistryAPI) -> str:
    """Which registry a command works on, for its stage lines: the server's URL, or the embedded home."""
    url = getattr(reg, "url", None)
    return str(url) if url else f"the registry in {getattr(reg, 'home', '')}"


def _revision_line(info: RevisionInfo) -> str:
    """One line of `swiftreg log`: number, digest, format, date, refs, message."""
    refs = ", ".join(info.branches + [f"tag:{t}" for t in info.tags])
    when = info.created_at.strftime("%Y-%m-%d %H:%M")
    return (f"{info.number:>4}  {info.digest[:19]}  {info.format:<6} {when}  "
            f"{'(' + refs + ')' if refs else '':<20} {info.message or ''}").rstrip()


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@click.option("--tag", help="Also tag the revision (tags are immutable unless --force).")
@click.option("--force", is_flag=True, help="Move the tag if it already points elsewhere.")
@click.option("-m", "--message", help="A note kept with the revision.")
@base_model_option("The base model the adapter must fit; a registered one is also recorded as its base.")
@json_option()
@click.option("--check", "check_target", type=click.Choice(["vllm"]),
              help="Also check what vLLM can serve and record the verdict on the revision (validation_runs).")
@click.option("--max-lora-rank", type=click.IntRange(min=1), default=16, show_default=True,
              help="The --max-lora-rank vLLM runs with (with --check vllm).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Store tensors holding NaN or Inf (refused by default: usually a diverged training run).")
def push(path: Path, repo_id: str, tag: str | None, force: bool, message: str | None, base_model: str | None,
         as_json: bool, check_target: str | None = None, max_lora_rank: int = 16,
         allow_nonfinite: bool = False) -> None:
    """Store the adapter checkpoint at PATH as a new revision of NAMESPACE/NAME."""
    reg = open_registry()
    _pushing(reg)
    size = folder_size(path)
    if size >= LARGE:
        stages("push")(f"checking and hashing {path} ({size / 1e6:,.1f} MB), then storing what {_where(reg)} lacks")
    with progress_bar(size, "push") as bar:
        from ..rules import base_model_folder

        folder = base_model_folder(base_model)
        result = reg.push(path, repo_id, tag=tag, force=force, message=message,
                          base_model=None if folder else base_model, base_folder=folder,
                          progress=bar.update, allow_nonfinite=allow_nonfinite)
    doing(interrupted=f"{result.revision.repo}@{result.revision.number} was committed; only the vLLM check was cut "
                      "short (`swiftreg validate ID --target vllm` runs it)")
    check = _push_check(reg, result.revision, base_model, max_lora_rank) if check_target == "vllm" else None
    if as_json:
        echo_json({"created": result.created, "blobs_written": result.blobs_written,
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


@click.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME[@REF]")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Copy the revision here (default: print "
              "the path of the verified cache snapshot).")
@click.option("--format", "fmt", type=click.Choice(["swift", "peft"]), help="Convert if stored otherwise.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@json_option("Print the path and the revision pulled as JSON.")
def pull(repo_id: str, output: Path | None, fmt: str | None, overwrite: bool, as_json: bool) -> None:
    """Materialise the revision NAMESPACE/NAME[@REF] (converted once, then cached), verified blob by blob."""
    reg = open_registry()
    doing(writing=f"{output} (or the snapshot under {reg.home}/snapshots)" if output else
          f"the snapshot under {reg.home}/snapshots",
          interrupted="nothing partial is visible: snapshots and -o copies appear whole or not at all")
    what = f"materialising {repo_id}{' as ' + fmt if fmt else ''} from {_where(reg)}, every blob verified"
    if not as_json:
        with slow_stage("pull", what):
            path = reg.pull(repo_id, output, fmt, overwrite=overwrite)
        click.echo(str(path))
        return
    info = reg.show(repo_id)  # pinned: the number read here is the revision pulled, even if a branch moves meanwhile
    with slow_stage("pull", what):
        path = reg.pull(f"{info.repo}@{info.number}", output, fmt, overwrite=overwrite)
    echo_json({"path": str(path), "repo": info.repo, "number": info.number, "digest": info.digest,
               "format": fmt or info.format})


def _print_repos(repos: list[RepoInfo]) -> None:
    for r in repos:
        kind = "base" if r.kind == "base" else (r.tuner_type or "adapter")
        main = f"main=@{r.main}" if r.main is not None else "no revision yet"  # a hub client's create_repo
        click.echo(f"{r.repo:<40} {kind:<8} {r.revisions:>4} revisions  {main}"
                   + (f"  base={r.base_model}" if r.base_model else ""))


def _limit_option(what: str) -> Callable[[F], F]:
    return click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=None,
                        help=f"Show at most this many {what} (one page; the next page's command is printed to "
                             "stderr).")


def _next_page(shown: int, limit: int | None, command: str) -> None:
    """On a full page, the command that shows the next one, on stderr (stdout stays the listing itself)."""
    if limit is not None and shown == limit:
        click.echo(f"more: {command}", err=True)


@click.command(name="ls")
@click.argument("namespace", required=False)
@_limit_option("repositories")
@click.option("--after", metavar="CURSOR", default=None,
              help="Start after this repository (`ns/name`, or `base:ns/name` for a base model): the cursor the "
                   "previous page printed.")
@shows(lambda repos: [r.to_dict() for r in repos], _print_repos)
def list_repos(namespace: str | None, limit: int | None, after: str | None) -> list[RepoInfo]:
    """List adapters and base models (optionally of one NAMESPACE), adapters first, by name."""
    repos = open_registry().list(namespace, limit=limit, after=after)
    if repos:
        _next_page(len(repos), limit, f"swiftreg ls {namespace + ' ' if namespace else ''}--limit {limit} "
                   f"--after {repos[-1].cursor}")
    return repos


def _print_log(revisions: list[RevisionInfo]) -> None:
    for info in revisions:
        click.echo(_revision_line(info))


@click.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@_limit_option("revisions")
@click.option("--after", type=click.IntRange(1), metavar="NUMBER", default=None,
              help="Only revisions numbered below NUMBER (the last one the previous page showed).")
@shows(lambda revisions: [{k: v for k, v in r.to_dict().items() if k != "manifest"} for r in revisions], _print_log)
def log(repo_id: str, limit: int | None, after: int | None) -> list[RevisionInfo]:
    """Revisions of NAMESPACE/NAME, newest first: number, digest, format, date, refs, message."""
    revisions = open_registry().log(repo_id, limit=limit, after=after)
    if revisions:
        _next_page(len(revisions), limit, f"swiftreg log {repo_id} --limit {limit} --after {revisions[-1].number}")
    return revisions


@click.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME[@REF]")
@shows(lambda info: info.to_dict(), lambda info: _print_revision(info))
def show(repo_id: str) -> RevisionInfo:
    """One revision, NAMESPACE/NAME[@REF]: refs, metadata and files."""
    return open_registry().show(repo_id)


def _print_revision(info: RevisionInfo) -> None:
    click.echo(f"{info.repo}@{info.number}  {info.digest}")
    click.echo(f"  format {info.format}; refs {', '.join(info.branches + info.tags) or '-'}; "
               f"created {info.created_at:%Y-%m-%d %H:%M}" + (f"; base {info.base_model}" if info.base_model else ""))
    meta = info.meta
    if info.kind == "adapter":
        click.echo(f"  {meta.get('tuner_type')} r={meta.get('r')} alpha={meta.get('lora_alpha')} "
                   f"targets={format_targets(meta.get('target_modules'))} dtype={meta.get('dtype')} "
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


@click.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME[@REF]")
@click.argument("tag_name", metavar="TAG")
@click.option("--force", is_flag=True, help="Move TAG if it already points elsewhere.")
@json_option("Print the revision the tag now points at as JSON.")
def tag(repo_id: str, tag_name: str, force: bool, as_json: bool) -> None:
    """Point TAG at the revision NAMESPACE/NAME[@REF] names (main by default). Branches move with `branch`."""
    info = open_registry().tag(repo_id, tag_name, force=force)
    _ref_moved(info, tag_name, "tag", as_json)


@click.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME@REF")
@click.argument("branch_name", metavar="BRANCH")
@json_option("Print the revision the branch now points at as JSON.")
def branch(repo_id: str, branch_name: str, as_json: bool) -> None:
    """Point BRANCH at the revision NAMESPACE/NAME@REF names, creating or moving it.

    `swiftreg branch team/x@1 main` rolls `main` back to revision 1: what `registry.resolve("team/x")`, the hub
    protocols and vLLM serve by default. The revisions themselves never change.
    """
    from ..ids import parse_id

    if not parse_id(repo_id).explicit_ref:
        raise click.UsageError("name the revision the branch will point at: NAMESPACE/NAME@REF (e.g. team/x@1)")
    info = open_registry().branch(repo_id, branch_name)
    _ref_moved(info, branch_name, "branch", as_json)


def _ref_moved(info: RevisionInfo, name: str, kind: str, as_json: bool) -> None:
    if as_json:
        echo_json({"repo": info.repo, kind: name, "number": info.number, "digest": info.digest})
    else:
        click.echo(f"{info.repo}@{name} -> revision {info.number} {info.digest[:19]}")


@click.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME@TAG")
@json_option("Print what was removed as JSON.")
def untag(repo_id: str, as_json: bool) -> None:
    """Remove the tag NAMESPACE/NAME@TAG (the revision stays)."""
    from ..ids import parse_id

    rid = parse_id(repo_id)
    if not rid.explicit_ref:
        raise click.UsageError("name the tag: NAMESPACE/NAME@TAG")
    open_registry().untag(rid.repo, rid.ref.value)
    if as_json:
        echo_json({"removed": repo_id, "repo": rid.repo, "tag": rid.ref.value})
    else:
        click.echo(f"removed tag {repo_id}")


@click.command()
@click.argument("repo_id", metavar="NAMESPACE/NAME@REF")
@click.option("--force", is_flag=True, help="Allow removing the main branch.")
@click.option("--revision", "whole_revision", is_flag=True,
              help="Delete the revision NAMESPACE/NAME@NUMBER itself (on the record), not a ref; refused while a "
              "tag, branch, lineage link or active job needs it. gc then reclaims its blobs.")
@json_option("Print what was removed as JSON.")
def rm(repo_id: str, force: bool, whole_revision: bool, as_json: bool) -> None:
    """Remove the tag or branch NAMESPACE/NAME@REF (revisions stay), or with --revision the revision itself."""
    if whole_revision:
        info = open_registry().delete_revision(repo_id)
        if as_json:
            echo_json({"removed": repo_id, "revision": {k: v for k, v in info.to_dict().items() if k != "manifest"}})
        else:
            click.echo(f"deleted revision {info.repo}@{info.number} {info.digest[:19]} (run gc to reclaim its blobs)")
        return
    open_registry().remove_ref(repo_id, force=force)
    if as_json:
        echo_json({"removed": repo_id})
    else:
        click.echo(f"removed {repo_id}")


@click.command()
@click.option("--grace", type=float, default=3600.0, show_default=True,
              help="Keep unreferenced blobs younger than this many seconds (protects pushes in flight).")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@json_option()
def gc(grace: float, dry_run: bool, as_json: bool) -> None:
    """Delete blobs no revision references (and leftovers of killed writes)."""
    result = open_registry().gc(grace_seconds=grace, dry_run=dry_run)
    if as_json:
        echo_json(result.__dict__)
        return
    verb = "would remove" if dry_run else "removed"
    if result.revisions_deleted:
        click.echo(f"retention rules: {'would delete' if dry_run else 'deleted'} {result.revisions_deleted} revisions")
    click.echo(f"{verb} {result.blobs_removed} blobs ({result.bytes_removed / 1e6:.2f} MB), "
               f"{result.temp_files_removed} temp files, {result.partial_uploads_removed} abandoned partial uploads "
               f"and {result.staging_removed} working folders of killed pushes "
               f"({result.staging_bytes_removed / 1e6:.2f} MB); {result.blobs_kept} blobs kept")
    if result.xet_removed:
        click.echo(f"{verb} {result.xet_removed} Xet xorbs and shards no revision needs "
                   f"({result.xet_bytes_removed / 1e6:.2f} MB)")
    if result.kept_in_grace:
        click.echo(f"kept {result.kept_in_grace} unreferenced blobs ({result.kept_in_grace_bytes / 1e6:.2f} MB) "
                   f"younger than the grace period ({grace:g} s: pushes in flight may need them); --grace 0 removes "
                   "them too")


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
def upgrade() -> None:
    """Create or upgrade the schema to the newest migration."""
    from ..db import engine as dbe

    registry = local_registry("db upgrade")
    dbe.upgrade(registry.db.engine)
    url = registry.db.engine.url.render_as_string(hide_password=True)
    click.echo(f"{url}: schema at {dbe.current_revision(registry.db.engine)}")


@click.group()
def base() -> None:
    """Base models (transformers folders) adapters are validated against."""


@base.command(name="push")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@click.option("--tag", help="Also tag the revision (tags are immutable unless --force).")
@click.option("--force", is_flag=True, help="Move the tag if it already points elsewhere.")
@click.option("-m", "--message", help="A note kept with the revision.")
@json_option()
def base_push(path: Path, repo_id: str, tag: str | None, force: bool, message: str | None, as_json: bool) -> None:
    """Store the transformers model folder PATH (config.json + *.safetensors) as a base model revision of
    NAMESPACE/NAME."""
    reg = open_registry()
    _pushing(reg)
    with progress_bar(folder_size(path), "push") as bar:
        if folder_size(path) >= LARGE:
            stages("base push")(f"checking and hashing {path}, then storing what {_where(reg)} lacks")
        result = reg.push_base(path, repo_id, tag=tag, force=force, message=message, progress=bar.update)
    if as_json:
        echo_json({"created": result.created, "revision": result.revision.to_dict()})
        return
    rev = result.revision
    click.echo(f"{'pushed' if result.created else 'unchanged: already'} base {rev.repo}@{rev.number} {rev.digest} "
               f"({rev.meta.get('architecture')}, {rev.meta.get('parameters', 0):,} parameters)")


COMMANDS = (push, pull, list_repos, log, show, tag, branch, untag, rm, gc, db, base)
