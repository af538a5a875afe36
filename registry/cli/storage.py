"""Commands that give disk back: `cache ls|prune` (snapshot folders, derived forms) and `retention set|show|
clear|apply` (which revisions a repository keeps). `rm --revision` (repos.py) deletes one revision; `gc`
then reclaims the blobs nothing names any more. `store copy` moves the blobs to another store (object storage).
"""
from __future__ import annotations

import re
import time
from typing import Any

import click

from .common import echo_json, json_option, local_registry, open_registry

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Size(click.ParamType):
    """A size in bytes: `500M`, `10GB`, `1.5g` (powers of 1024) or a plain number of bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value), re.ASCII)
        if match is None or match[2].lower() not in _UNITS:
            self.fail(f"{value!r} is not a size (examples: 500M, 10GB, 1073741824)", param, ctx)
        return int(float(match[1]) * _UNITS[match[2].lower()])


class Duration(click.ParamType):
    """A duration in seconds: `7d`, `12h`, `30m`, `2w` or a plain number of seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", str(value), re.ASCII)
        if match is None:
            self.fail(f"{value!r} is not a duration (examples: 7d, 12h, 30m, 3600)", param, ctx)
        return float(match[1]) * _SECONDS.get(match[2], 1)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@click.group()
def cache() -> None:
    """The local snapshot cache (folders `resolve` and `pull` hand out) and derived forms."""


@cache.command(name="ls")
@json_option()
def cache_ls(as_json: bool) -> None:
    """Every cached snapshot, least recently used first: revision, form, size, what removing it frees."""
    from ..snapshots import cache_entries

    entries = cache_entries(open_registry().snapshots)
    if as_json:
        echo_json([e.to_dict() for e in entries])
        return
    now = time.time()
    for e in entries:
        click.echo(f"{e.repo + '@' + str(e.number):<40} {e.format:<12} {_mb(e.bytes):>12}  frees {_mb(e.own_bytes):>12}"
                   f"  used {(now - e.used_at) / 86400:5.1f} days ago  {e.path}")
    click.echo(f"{len(entries)} snapshots, {_mb(sum(e.bytes for e in entries))} "
               f"({_mb(sum(e.own_bytes for e in entries))} not shared with the blob store)", err=True)


@cache.command(name="prune")
@click.option("--older-than", type=Duration(), help="Remove snapshots not used for this long (7d, 12h, 3600).")
@click.option("--max-size", type=Size(), help="Then remove the least recently used until the rest fit (10GB).")
@click.option("--derived", is_flag=True, help="Also forget derived forms (conversions) older than --older-than "
              "(all without it) on the embedded registry: gc reclaims their blobs, a later read converts again.")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@json_option()
def cache_prune(older_than: float | None, max_size: int | None, derived: bool, dry_run: bool, as_json: bool) -> None:
    """Remove cached snapshots (every one without a limit); they are rebuilt, verified, when next asked for."""
    from ..snapshots import cache_entries, remove_entry, to_prune

    chosen = to_prune(cache_entries(open_registry().snapshots), older_than=older_than, max_bytes=max_size)
    if not dry_run:
        for entry in chosen:
            remove_entry(entry)
    forgotten = local_registry("cache prune --derived").forget_derived(older_than, dry_run=dry_run) if derived else 0
    freed = sum(e.own_bytes for e in chosen)
    if as_json:
        echo_json({"removed": [e.to_dict() for e in chosen], "bytes_freed": freed, "derived_forgotten": forgotten,
                   "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(chosen)} snapshots ({_mb(sum(e.bytes for e in chosen))}, {_mb(freed)} freed now; "
               "the rest is shared with blobs that gc reclaims once nothing names them)"
               + (f"; {'would forget' if dry_run else 'forgot'} {forgotten} derived forms (run gc)" if derived else ""))


@click.group()
def retention() -> None:
    """Which revisions a repository keeps; gc deletes the others that nothing needs, then their blobs."""


@retention.command(name="set")
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@click.option("--keep-last", type=click.IntRange(1, 1_000_000), required=True, help="Keep the newest N revisions.")
@click.option("--keep-tagged/--no-keep-tagged", default=True, show_default=True,
              help="Also keep every tagged revision.")
@json_option()
def retention_set(repo_id: str, keep_last: int, keep_tagged: bool, as_json: bool) -> None:
    """Set NAMESPACE/NAME's rule. Branches, lineage links and active jobs always keep what they need."""
    policy = open_registry().set_retention(repo_id, keep_last, keep_tagged=keep_tagged)
    assert policy is not None
    if as_json:
        echo_json(policy.to_dict())
    else:
        click.echo(f"{policy.repo}: keep the last {policy.keep_last}" + (" and every tagged revision"
                   if policy.keep_tagged else "") + " (applied by gc, or now with `swiftreg retention apply`)")


@retention.command(name="show")
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@json_option()
def retention_show(repo_id: str, as_json: bool) -> None:
    """NAMESPACE/NAME's rule, if it has one."""
    policy = open_registry().retention(repo_id)
    if as_json:
        echo_json(policy.to_dict() if policy else None)
    elif policy is None:
        click.echo(f"{repo_id}: no retention rule (every revision is kept)")
    else:
        click.echo(f"{policy.repo}: keep the last {policy.keep_last}" + (" and every tagged revision"
                   if policy.keep_tagged else ""))


@retention.command(name="clear")
@click.argument("repo_id", metavar="NAMESPACE/NAME")
def retention_clear(repo_id: str) -> None:
    """Remove NAMESPACE/NAME's rule: every revision is kept again."""
    open_registry().set_retention(repo_id, None)
    click.echo(f"{repo_id}: no retention rule")


@retention.command(name="apply")
@click.argument("repo_id", metavar="NAMESPACE/NAME", required=False)
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@json_option()
def retention_apply(repo_id: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete now the revisions the rules do not keep and nothing needs: those of NAMESPACE/NAME, or of every
    repository with a rule when it is left out."""
    report = open_registry().apply_retention(repo_id, dry_run=dry_run)
    if as_json:
        echo_json(report.to_dict())
        return
    for name in report.deleted:
        click.echo(f"{'would delete' if dry_run else 'deleted'} {name}")
    for line in report.kept:
        click.echo(f"kept {line}")
    click.echo(f"{len(report.deleted)} revisions {'would be ' if dry_run else ''}deleted, {len(report.kept)} kept "
               "because something needs them" + ("" if dry_run else "; run gc to reclaim their blobs"), err=True)


@click.group()
def store() -> None:
    """The blob store: move it (a local store to object storage)."""


@store.command(name="copy")
@click.option("--to", "target", required=True, metavar="URL",
              help="The store to copy into: s3://BUCKET/PREFIX (AWS_* variables reach it), file:///PATH or a folder.")
@click.option("--from", "source", metavar="URL", help="The store to copy from (default: this registry's own).")
@click.option("--verify-existing", is_flag=True, help="Rehash the blobs the target holds already instead of "
              "trusting an earlier copy.")
@json_option()
def store_copy(target: str, source: str | None, verify_existing: bool, as_json: bool) -> None:
    """Copy every blob into another store, each one hashed on the way (resumable: blobs the target holds are
    skipped, so run it again after an interruption). Then point SWIFTREG_STORE_URL (or serve --store) at it."""
    from .. import constants
    from ..errors import RegistryError
    from ..store.factory import open_store
    from ..store.migrate import copy_store

    home = constants.home()
    src = open_store(source, home)
    dst = open_store(target, home)
    if repr(src) == repr(dst):
        raise RegistryError(f"--to names the store the blobs come from ({target}): nothing to copy")
    report = copy_store(src, dst, verify_existing=verify_existing,
                        on_blob=None if as_json else lambda d, how: click.echo(f"{d} {how}", err=True))
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(f"{report.copied} blobs copied ({_mb(report.copied_bytes)}), {report.present} already there"
                   + (f", {len(report.corrupt)} corrupt in the source and not copied" if report.corrupt else "")
                   + f"; now set SWIFTREG_STORE_URL={target}", err=True)
    if report.corrupt:
        raise SystemExit(1)


COMMANDS = (cache, retention, store)
