"""Files and folders that appear whole or not at all: the registry's one room for atomic writes.

    write_all(fd, data)        os.write until every byte is out (a short write is not an error)
    fsync(path)                flush a file's data, or a folder's entries, to disk
    write_file(path, data)     replace a small file whole: a fresh temp file beside it, then os.replace
    new_folder(dst)            build a folder in a temp folder beside `dst`; renamed into place when the
                               block ends, removed when it raises
    publish_folder(tmp, dst)   rename a finished temp folder to `dst`, replacing an existing one
    secret_key(path)           a 32-byte key kept in a 0600 file, created on first use (the first writer wins)

Everything is written beside its destination (same filesystem, so the rename is atomic), under a
dot-name that readers and listings skip, cut to fit NAME_MAX whatever the destination's name
(params.temp_name), so any name a manifest may hold can be written. `converters/` stands alone and
cannot import the registry, so it keeps `write_all` and `publish_folder` for its own conversions;
the registry takes them from here.
The blob store's content-addressed publish (store/local.py) and the resumable download (client/downloads.py)
have protocols of their own and use these primitives. What is written here gets the modes the umask gives
(0o777 / 0o666 less it), never mkdtemp's 0o700, so another user's server can read a published folder when
the umask lets it.
"""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from converters.conversion import publish_folder
from converters.safetensors_io import write_all

from .params import temp_name

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
    tmp = path.with_name(temp_name(path.name, f"tmp-{secrets.token_hex(8)}"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides who may read it
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
    tmp = dst.with_name(temp_name(dst.name, f"{secrets.token_hex(8)}.partial"))
    tmp.mkdir()  # 0o777 less the umask, as mkdir(1) makes it: `dst` is as readable as any new folder
    try:
        yield tmp
        publish_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def secret_key(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte key kept (hex, mode 0600) at `path`, created on first use. Two processes starting at once
    agree: each writes its candidate to a temp file and hard-links it into place, so the first link wins
    and the loser reads the winner's key (signatures one server makes, another sharing the home accepts)."""
    path = Path(path)
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())
