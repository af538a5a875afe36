"""Files and folders that appear whole or not at all: the registry's one room for atomic writes.

    write_all(fd, data)        os.write until every byte is out (a short write is not an error)
    fsync(path)                flush a file's data, or a folder's entries, to disk
    write_file(path, data)     replace a small file whole: a fresh temp file beside it, then os.replace
    new_folder(dst)            build a folder in a temp folder beside `dst`; renamed into place when the
                               block ends, removed when it raises
    publish_folder(tmp, dst)   rename a finished temp folder to `dst`, replacing an existing one

Everything is written beside its destination (same filesystem, so the rename is atomic), under a
dot-name that readers and listings skip. `converters/` stands alone and cannot import the registry,
so it keeps `write_all` and `publish_folder` for its own conversions; the registry takes them from here.
The blob store's content-addressed publish (store/local.py) and the resumable download (client/downloads.py)
have protocols of their own and use these primitives.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from converters.conversion import publish_folder
from converters.safetensors_io import write_all

__all__ = ["fsync", "new_folder", "publish_folder", "write_all", "write_file"]


def fsync(path: str | os.PathLike[str]) -> None:
    """Flush a file's data, or a folder's entries (a create, rename or unlink in it), to disk.

    A rename survives a crash only once its folder is flushed, even when the file's bytes were.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` at once: readers see the old file or the new one, never a part.

    The temp file is new each time, so the result is a new inode (the refs stamp relies on it).
    Not flushed to disk: for records a crash may lose, never corrupt.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def new_folder(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp folder beside `dst` to build it in; published as `dst` (replacing an existing one) when the
    block ends, removed with its contents when the block raises, so `dst` is never half-written."""
    dst = Path(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        yield tmp
        publish_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
