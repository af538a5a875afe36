"""The local snapshot cache `resolve` returns folders from, laid out to be read with `ls`:

    $SWIFTREG_HOME/snapshots/<namespace>/<name>/r<number>-<format>-<digest prefix>/adapter_config.json ...

A snapshot folder exists only once it is complete and verified: it is assembled in a temporary
folder beside it (every blob rehashed on the way) and renamed into place under a file lock, so two
processes resolving the same id at once do the work once and never see half a folder. Its folders
and (read-only) files get the modes the umask gives, so a server running as another user can read
them when the umask allows it (022), and nobody else can when it does not (077).
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import RegistryError

if TYPE_CHECKING:
    from .manifest import Manifest

# filelock, .atomic, .manifest and converters are imported where a folder is built: `stored_snapshot`, the first
# resolve of a fresh process, needs none of them (registry/__init__.py: _cached_on_disk)


class SnapshotCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, namespace: str, name: str, number: int, fmt: str, digest: str) -> Path:
        return self.root / namespace / name / f"r{number}-{fmt}-{digest.removeprefix('sha256:')[:16]}"

    def remember_stored(self, folder: Path, number: int) -> None:
        """Note that `folder` holds revision `number` in its stored format (a link `.r<number>-stored` beside it),
        so a fresh process resolves `ns/name@<number>` from this cache without opening the database
        (`stored_snapshot`). Best effort: without the link the next process asks the database, as before."""
        link = folder.parent / f".r{number}-stored"
        try:
            if os.readlink(link) == folder.name:
                return
        except OSError:
            pass
        tmp = folder.parent / f".r{number}-stored.{os.getpid()}.tmp"
        try:
            os.symlink(folder.name, tmp)
            os.replace(tmp, link)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def materialise(self, folder: Path, manifest: Callable[[], Manifest],
                    copy_blob: Callable[[str, Path, str], None]) -> Path:
        """Build `folder` from `manifest()` unless another process already has; return it."""
        from filelock import FileLock

        from .atomic import new_folder
        from .manifest import check_relpath

        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder.parent / f".{folder.name}.lock")):
            if folder.is_dir():
                return folder
            files = manifest()
            with new_folder(folder) as tmp:
                for entry in files.files:
                    dst = tmp / check_relpath(entry.path)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    copy_blob(entry.sha256, dst, entry.path)
                    # read-only, with the read bits the umask gave the new file (0o444 under 022, 0o400 under 077);
                    # a file linked to its (already read-only) blob is left alone: its mode is the blob's
                    mode = stat.S_IMODE(os.stat(dst).st_mode)
                    if mode & 0o222:
                        os.chmod(dst, mode & 0o444)
        return folder


def copy_snapshot(snapshot: Path, output: Path, *, overwrite: bool = False) -> Path:
    """`pull -o`: a writable copy of a snapshot at `output`, appearing whole or not at all.

    Each file is a copy-on-write clone of the snapshot's where the filesystem shares extents (FICLONE: btrfs,
    XFS; no byte is copied), else a copy made in the kernel (os.copy_file_range). Never a hard link: a link is
    the snapshot's own inode (for a local registry, the store's blob), so a `chmod u+w` and an edit in place,
    or any write by root, whom the read-only mode does not stop, would change the cache and the store."""
    dst = output.absolute()
    if dst.exists() and not overwrite:
        raise RegistryError(f"{dst} already exists; choose a new path or pass --overwrite")
    dst.parent.mkdir(parents=True, exist_ok=True)
    from converters.source_files import copy_folder

    from .atomic import new_folder

    with new_folder(dst) as tmp:
        copy_folder(snapshot, tmp)  # writable files and folders with the umask's modes, not the snapshot's
    return dst


# ----- what `swiftreg cache ls|prune` sees ----------------------------------------------------------------

@dataclass(frozen=True)
class CacheEntry:
    """One snapshot folder: which revision and form it holds, its bytes, how many of those are its own
    (files not shared with the blob store by a hard link: what removing it frees) and when it was last used."""

    path: Path
    repo: str
    number: int
    format: str
    bytes: int
    own_bytes: int
    used_at: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def cache_entries(cache: SnapshotCache) -> list[CacheEntry]:
    """Every complete snapshot folder under the cache, least recently used first."""
    found: list[CacheEntry] = []
    if not cache.root.is_dir():
        return found
    for folder in cache.root.glob("*/*/r*-*-*"):
        match = _FOLDER.fullmatch(folder.name)
        if match is None or not folder.is_dir() or folder.is_symlink():
            continue
        total = own = 0
        for dirpath, _, files in os.walk(folder):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                total += st.st_size
                own += st.st_size if st.st_nlink == 1 else 0
        found.append(CacheEntry(folder, f"{folder.parent.parent.name}/{folder.parent.name}", int(match["number"]),
                                match["format"], total, own, folder.stat().st_mtime))
    return sorted(found, key=lambda e: (e.used_at, str(e.path)))


def to_prune(entries: list[CacheEntry], *, older_than: float | None = None, max_bytes: int | None = None,
             now: float | None = None) -> list[CacheEntry]:
    """The entries a prune removes: those unused for `older_than` seconds, then the least recently used until
    the rest hold at most `max_bytes`; with neither limit, every entry (a cache is always rebuilt on demand)."""
    if older_than is None and max_bytes is None:
        return list(entries)
    now = time.time() if now is None else now
    chosen = [e for e in entries if older_than is not None and now - e.used_at >= older_than]
    if max_bytes is not None:
        rest = [e for e in entries if e not in chosen]
        total = sum(e.bytes for e in rest)
        for entry in rest:  # least recently used first
            if total <= max_bytes:
                break
            chosen.append(entry)
            total -= entry.bytes
    return chosen


def remove_entry(entry: CacheEntry) -> None:
    """Delete a snapshot folder. A process reading it keeps its open files; a resolve() memo re-checks that
    its folder exists, so it builds the snapshot again."""
    shutil.rmtree(entry.path, ignore_errors=True)


def stored_snapshot(root: str, namespace: str, name: str, number: int) -> str | None:
    """The snapshot folder of `namespace/name@number` in its stored format, if this cache holds it complete, from
    the link `remember_stored` left; None otherwise. Plain `os` calls only (no database, no imports), for the
    first `registry.resolve` of a fresh process. Safe because a revision number never names other bytes: a
    deleted revision's folders are removed with it (its link then dangles, and this answers None)."""
    parent = os.path.join(root, namespace, name)
    try:
        target = os.readlink(os.path.join(parent, f".r{number}-stored"))
    except OSError:
        return None
    if os.sep in target or not target.startswith(f"r{number}-"):
        return None
    folder = os.path.join(parent, target)
    return folder if os.path.isdir(folder) else None


def mark_used(folder: Path) -> None:
    """Record that a snapshot was just handed out (its folder's mtime), for least-recently-used pruning."""
    try:
        os.utime(folder)
    except OSError:
        pass  # a read-only cache: pruning by age is then approximate, nothing breaks


_FOLDER = re.compile(r"r(?P<number>[0-9]+)-(?P<format>[a-z]+)-(?P<digest>[0-9a-f]{16})")
