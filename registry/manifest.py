"""What a revision holds: the list of files (path, size, sha256) and the digest that names it.

Paths come from user folders and, later, from remote servers: every one is checked before it is
read or written, so nothing can climb out of a checkpoint or a snapshot with `..`, an absolute
path or a symbolic link (the link rule is converters/source_files.py's, shared with `convert`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from converters import source_files
from converters.layout import is_pickle_file

from .errors import UnsafePathError
from .params import NAME_MAX, file_name
from .store.digests import CHUNK_SIZE, format_digest, new_hasher

MAX_COMPONENT = NAME_MAX  # bytes of UTF-8 in one path component
MAX_PATH = 1024           # bytes of UTF-8 in a whole relative path
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
    """A portable relative POSIX path, or UnsafePathError naming it.

    Every component is valid UTF-8 of at most NAME_MAX bytes (params.file_name): what any file system
    takes, and what every writer of the registry can write back out, temporary names included. A local
    push (collect_files) and a commit (Manifest.from_json) both check here, so they refuse alike.
    """
    if not isinstance(rel, str) or not rel or rel.startswith("/") or _BAD_CHARS.search(rel):
        raise UnsafePathError(f"file name {str(rel)[:200]!r} is not a portable relative path")
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(f"file name {rel[:200]!r} has a '{part}' component: it could escape its folder")
        file_name(part, rel)
    if len(rel.encode()) > MAX_PATH:
        raise UnsafePathError(f"file name {rel[:200]!r}... is {len(rel.encode())} bytes in UTF-8; at most {MAX_PATH}")
    return rel


def collect_files(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(relative path, file to read) of every file to store, and the pickles left out.

    Symbolic links follow the one rule of converters/source_files.py, shared with `convert`: a link
    whose target stays inside the folder or inside a Hugging Face / ModelScope cache (a `snapshot_download`
    folder) is stored as the file it points to, read by its resolved path; any other link, dangling link,
    link to a folder or special file is refused (UnsafeFileError, naming it and what to do). Names
    starting with '.' (.git, .cache, ...) are not part of a checkpoint and are not read.
    """
    kept: list[tuple[str, Path]] = []
    skipped: list[str] = []
    for found in source_files.walk(root):
        check_relpath(found.rel)
        if is_pickle_file(found.rel, weights_allowed=True):
            skipped.append(found.rel)
            continue
        kept.append((found.rel, found.target))
        if len(kept) > MAX_FILES:
            raise UnsafePathError(f"{root} holds more than {MAX_FILES} files; a checkpoint has at most {MAX_FILES}")
    return sorted(kept), sorted(skipped)


def _hash_regular_file(path: Path) -> tuple[str, int]:
    """(digest, size) of the regular file at `path`, opened without following a link (O_NOFOLLOW)."""
    hasher = new_hasher()
    with os.fdopen(source_files.open_checked(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while chunk := f.read(CHUNK_SIZE):
            hasher.update(chunk)
    return format_digest(hasher.hexdigest()), size


#: Reads one file (its resolved path) and returns (digest, size): `_hash_regular_file`, or a store that keeps the
#: bytes it hashes (registry/service/blobs.py: StoringHasher), so a local push reads and hashes each byte once.
HashFile = Callable[[Path], "tuple[str, int]"]


def build_manifest(files: Iterable[tuple[str, Path]], progress: Callable[[int], None] | None = None,
                   hash_file: HashFile | None = None) -> Manifest:
    """The manifest of `files`. `hash_file` replaces the plain hash pass (it reports its own progress then)."""
    entries = []
    for rel, path in files:
        if hash_file is not None:
            digest, size = hash_file(path)
        else:
            digest, size = _hash_regular_file(path)
            if progress is not None:
                progress(size)
        entries.append(FileEntry(rel, size, digest))
    return Manifest(tuple(sorted(entries, key=lambda f: f.path)))
