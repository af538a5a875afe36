"""Which files of a source folder are read, links included, by one rule that `convert` and `push` share.

The one symlink rule of swiftreg, shared by `convert` (converters/) and `push` / `base push`
(registry/manifest.py), so a file one of them refuses the other refuses too:

- a plain file is read;
- a symbolic link is resolved once (every link on the way, `..` included) and read as the file it
  points to when that file lies inside the folder itself, or inside a Hugging Face or ModelScope
  cache: the snapshot's own repository folder (`models--ns--name/`, where `snapshots/<rev>/f ->
  ../../blobs/<hash>` lands), or a cache root named by the environment (`cache_roots`);
- anything else is refused with UnsafeFileError naming the link and what to do: a link leading
  elsewhere (`/etc/passwd`, `../../secret`), a dangling link, a loop, a link to a folder (links to
  folders are never followed), a fifo, socket or device.

Nothing outside a source folder is ever read through a link except from those caches. There is no
option to follow other links: copying the file into the folder is one command and shows the choice
in the folder itself. A file is opened by its resolved path, one component at a time with O_NOFOLLOW,
and checked to be the very regular file that was resolved (device and inode), so a link or folder
swapped in between the check and the read is refused, not followed.
"""
from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import UnsafeFileError

#: Hugging Face cache repository folders: models--ns--name, datasets--..., spaces--...
_HF_REPO_FOLDER = re.compile(r"^(models|datasets|spaces)--.+")


@dataclass(frozen=True)
class SourceFile:
    """A file of a source folder that may be read: where it sits, and what is opened to read it."""

    rel: str        # POSIX path relative to the folder
    path: Path      # the entry in the folder as the user sees it (a link or a plain file)
    target: Path    # what is opened: the file itself, or the link's resolved target
    device: int
    inode: int

    @property
    def is_link(self) -> bool:
        return self.path != self.target

    def open(self) -> BinaryIO:
        """The file opened for reading, after checking it is still the regular file that was resolved."""
        fd = open_checked(self.target, (self.device, self.inode), self.path)
        return os.fdopen(fd, "rb")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def cache_roots() -> tuple[Path, ...]:
    """The Hugging Face and ModelScope cache folders a link may lead into, resolved, those that exist.

    HF_HUB_CACHE (and its old name HUGGINGFACE_HUB_CACHE), HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub,
    ~/.cache/huggingface/hub; MODELSCOPE_CACHE, ~/.cache/modelscope. A root that resolves to `/` or to the
    home folder itself is ignored: that would let a link read anything.
    """
    home = Path.home()
    candidates = [_env_path("HF_HUB_CACHE"), _env_path("HUGGINGFACE_HUB_CACHE")]
    hf_home, xdg = _env_path("HF_HOME"), _env_path("XDG_CACHE_HOME")
    candidates += [hf_home / "hub" if hf_home else None, xdg / "huggingface" / "hub" if xdg else None,
                   home / ".cache" / "huggingface" / "hub", _env_path("MODELSCOPE_CACHE"),
                   xdg / "modelscope" if xdg else None, home / ".cache" / "modelscope"]
    roots: list[Path] = []
    forbidden = {Path("/"), Path(os.path.realpath(home))}
    for candidate in candidates:
        if candidate is None or not candidate.is_dir():
            continue
        root = Path(os.path.realpath(candidate))
        if root not in forbidden and root not in roots:
            roots.append(root)
    return tuple(roots)


def allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where links in `folder` may lead: the folder itself (resolved), the Hugging Face cache repository
    folder it is a snapshot of (`models--ns--name/`), and the cache roots."""
    real = Path(os.path.realpath(folder))
    roots = [real]
    for node in (real, *real.parents):
        repo = node.parent.parent
        if (node.parent.name == "snapshots" and _HF_REPO_FOLDER.match(repo.name)
                and (repo / "blobs").is_dir()):
            roots.append(repo)
            break
    return tuple(roots) + tuple(r for r in cache_roots() if r not in roots)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _what_to_do(path: Path, target: Path) -> str:
    return f"copy the file into the folder in its place (cp --remove-destination '{target}' '{path}') or remove it"


def check(folder: Path, path: Path, *, roots: tuple[Path, ...] | None = None,
          rel: str | None = None) -> SourceFile | None:
    """`path` (an entry of `folder`) as a SourceFile to read; None for a real folder (walk into it);
    UnsafeFileError for anything the rule refuses. `roots`: allowed_roots(folder), computed once per walk."""
    if roots is None:
        roots = allowed_roots(folder)
    if rel is None:
        rel = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else path.name
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UnsafeFileError(f"cannot be read: {exc.strerror or exc}", path) from None
    if stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISREG(st.st_mode):  # read by its resolved path: the folder itself may be reached through a link
        return SourceFile(rel, path, Path(os.path.realpath(path)), st.st_dev, st.st_ino)
    if not stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError("is not a regular file (a fifo, socket or device); a checkpoint holds plain files "
                              "only: remove it", path)
    try:
        written = os.readlink(path)
        target = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        raise UnsafeFileError(f"is a symbolic link to {written!r}, which does not exist (a dangling link); "
                              "remove it, or copy the file it should name into the folder", path) from None
    except OSError as exc:
        raise UnsafeFileError(f"is a symbolic link that cannot be resolved ({exc.strerror or exc}: a loop?); "
                              "remove it", path) from None
    try:
        tst = os.lstat(target)
    except OSError as exc:
        raise UnsafeFileError(f"its link target {target} cannot be read: {exc.strerror or exc}", path) from None
    if stat.S_ISDIR(tst.st_mode):
        raise UnsafeFileError(f"is a symbolic link to a folder ({target}); links to folders are never followed: "
                              "put the folder's files in the folder itself, or remove the link", path)
    if not _inside(target, roots):
        raise UnsafeFileError(
            f"is a symbolic link to {target}, outside the folder and outside the Hugging Face and ModelScope "
            f"caches; nothing outside a folder is read through a link: {_what_to_do(path, target)}", path)
    if not stat.S_ISREG(tst.st_mode):
        raise UnsafeFileError(f"is a symbolic link to {target}, which is not a regular file; remove it", path)
    return SourceFile(rel, path, target, tst.st_dev, tst.st_ino)


def walk(folder: Path, *, hidden: bool = False, roots: tuple[Path, ...] | None = None,
         top: Path | None = None) -> Iterator[SourceFile]:
    """Every file under `folder` that may be read, recursively, in sorted order; UnsafeFileError at the
    first entry the rule refuses. `hidden`: also names starting with '.' (skipped, unread, by default).
    `top`: the source folder `folder` is part of (links may lead anywhere inside it; `rel` is relative to it).
    """
    top = top or folder
    roots = roots if roots is not None else allowed_roots(top)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath)
        names = sorted(dirnames + filenames)
        dirnames.clear()
        for name in names:
            if name.startswith(".") and not hidden:
                continue
            entry = base / name
            found = check(top, entry, roots=roots, rel=entry.relative_to(top).as_posix())
            if found is None:
                dirnames.append(name)  # a real folder: os.walk goes into it next
            else:
                yield found


def _open_without_links(path: Path) -> int:
    """open(2) of the absolute `path` one component at a time, each with O_NOFOLLOW: no link anywhere on
    the way is followed (a folder swapped for a link after the path was resolved fails with ELOOP/ENOTDIR)."""
    parts = Path(os.path.abspath(path)).parts
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(parts[0], os.O_RDONLY | os.O_DIRECTORY | nofollow)
    try:
        for part in parts[1:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.open(parts[-1], os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0), dir_fd=fd)
    finally:
        os.close(fd)


def open_checked(path: Path, identity: tuple[int, int] | None = None, shown: Path | None = None) -> int:
    """A read-only descriptor of the regular file at `path`, a resolved path, opened without following
    any link on the way (each component with O_NOFOLLOW), so what is read lies where the rule checked.

    `identity`: the (device, inode) the file had when it was resolved; a different file now is refused.
    `shown`: the name to put in a refusal.
    """
    try:
        fd = _open_without_links(path)
    except OSError as exc:
        raise UnsafeFileError(f"cannot be opened without following a link: {exc.strerror or exc}",
                              shown or path) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (identity is not None and (st.st_dev, st.st_ino) != identity):
        os.close(fd)
        raise UnsafeFileError("changed while being read (another file or a link took its place); read it again",
                              shown or path)
    return fd


def copy_file(source: SourceFile, dst: Path) -> int:
    """Copy `source` to a new file `dst` (mode 0o666 less the umask), through the checked descriptor;
    the number of bytes copied."""
    from .safetensors_io import copy_range

    with source.open() as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        if not reflink(fin.fileno(), fout.fileno()):
            copy_range(fin.fileno(), fout.fileno(), 0, size)
    return size


#: The Linux ioctl that makes one file share another's extents (copy on write): FICLONE, _IOW(0x94, 9, int).
#: Python 3.12's fcntl names it; 3.11 does not.
_FICLONE = 0x40049409


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Make the empty file `dst_fd` a copy-on-write clone of `src_fd` (btrfs, XFS, bcachefs, OCFS2): no byte
    is copied, and a later write to either file changes only that file, so a user's edit of a pulled or
    converted output can never reach the cache or store it came from. False where the filesystem (or OS)
    cannot: the caller copies (os.copy_file_range, in the kernel)."""
    if not sys.platform.startswith("linux"):
        return False
    import fcntl

    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
    except OSError:
        return False
    return True


def copy_folder(folder: Path, dst: Path) -> int:
    """Copy every file of `folder` (hidden ones included, under the rule) into the existing folder `dst`;
    new folders and files get the umask's modes (0o777 / 0o666 less the umask), not the source's. Bytes copied."""
    total = 0
    for found in walk(folder, hidden=True):
        out = dst / found.rel
        out.parent.mkdir(parents=True, exist_ok=True)
        total += copy_file(found, out)
    return total
