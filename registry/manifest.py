"""What a revision holds: the list of files (path, size, sha256) and the digest that names it.

Paths come from user folders and, later, from remote servers: every one is checked before it is
read or written, so nothing can climb out of a checkpoint or a snapshot with `..`, an absolute
path or a symbolic link.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from converters.layout import PICKLE_SUFFIXES

from .errors import UnsafePathError
from .store.digests import sha256_file

MAX_COMPONENT = 255
MAX_PATH = 1024
MAX_FILES = 10_000
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\:]")


@dataclass(frozen=True)
class FileEntry:
    path: str   # POSIX, relative
    size: int
    sha256: str  # "sha256:<hex>"


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {"files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files]}

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON: the same files give the same digest on every machine."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(canonical).hexdigest()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Manifest":
        files = data.get("files") if isinstance(data, Mapping) else None
        if not isinstance(files, list):
            raise UnsafePathError("manifest has no file list")
        entries = []
        for item in files:
            if not isinstance(item, Mapping):
                raise UnsafePathError("manifest entry is not an object")
            entries.append(FileEntry(check_relpath(str(item.get("path"))), int(item["size"]), str(item["sha256"])))
        return cls(tuple(sorted(entries, key=lambda f: f.path)))


def check_relpath(rel: str) -> str:
    """A portable relative POSIX path, or UnsafePathError naming it."""
    if not rel or len(rel) > MAX_PATH or rel.startswith("/") or _BAD_CHARS.search(rel):
        raise UnsafePathError(f"file name {rel[:200]!r} is not a portable relative path")
    for part in rel.split("/"):
        if part in ("", ".", "..") or len(part) > MAX_COMPONENT:
            raise UnsafePathError(f"file name {rel[:200]!r} has a '{part}' component: it could escape its folder")
    return rel


def collect_files(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(relative path, absolute path) of every file to store, and the pickles left out.

    Symbolic links are refused outright: a checkpoint is plain files, and a link could smuggle in
    anything on the machine.
    """
    kept: list[tuple[str, Path]] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                raise UnsafePathError(f"{base / name} is a symbolic link; push plain files only")
            if name.startswith("."):
                dirnames.remove(name)  # .git, .cache, ...: not part of a checkpoint
        for name in filenames:
            full = base / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                raise UnsafePathError(f"{full} is a symbolic link; push plain files only")
            if name.startswith("."):
                continue
            check_relpath(rel)
            if name.endswith(PICKLE_SUFFIXES) and name != "adapter_model.bin":
                skipped.append(rel)
                continue
            kept.append((rel, full))
    if len(kept) > MAX_FILES:
        raise UnsafePathError(f"{root} holds {len(kept)} files; a checkpoint has at most {MAX_FILES}")
    return sorted(kept), sorted(skipped)


def build_manifest(files: Iterable[tuple[str, Path]], progress: Callable[[int], None] | None = None) -> Manifest:
    entries = []
    for rel, path in files:
        digest = sha256_file(path)
        size = path.stat().st_size
        if progress is not None:
            progress(size)
        entries.append(FileEntry(rel, size, digest))
    return Manifest(tuple(sorted(entries, key=lambda f: f.path)))
