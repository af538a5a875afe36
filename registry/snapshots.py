"""The local snapshot cache `resolve` returns folders from, laid out to be read with `ls`:

    $SWIFTREG_HOME/snapshots/<namespace>/<name>/r<number>-<format>-<digest prefix>/adapter_config.json ...

A snapshot folder exists only once it is complete and verified: it is assembled in a temporary
folder beside it (every blob rehashed on the way) and renamed into place under a file lock, so two
processes resolving the same id at once do the work once and never see half a folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from filelock import FileLock

from .atomic import new_folder
from .errors import RegistryError
from .manifest import Manifest, check_relpath


class SnapshotCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, namespace: str, name: str, number: int, fmt: str, digest: str) -> Path:
        return self.root / namespace / name / f"r{number}-{fmt}-{digest.removeprefix('sha256:')[:16]}"

    def materialise(self, folder: Path, manifest: Callable[[], Manifest],
                    copy_blob: Callable[[str, Path, str], None]) -> Path:
        """Build `folder` from `manifest()` unless another process already has; return it."""
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
                    os.chmod(dst, 0o444)
        return folder


def copy_snapshot(snapshot: Path, output: Path, *, overwrite: bool = False) -> Path:
    """`pull -o`: a writable copy of a snapshot at `output`, appearing whole or not at all."""
    dst = output.absolute()
    if dst.exists() and not overwrite:
        raise RegistryError(f"{dst} already exists; choose a new path or pass --overwrite")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with new_folder(dst) as tmp:
        shutil.copytree(snapshot, tmp, dirs_exist_ok=True, copy_function=shutil.copyfile)
    return dst
