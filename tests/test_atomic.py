"""registry/atomic.py: a file or folder appears whole or not at all, and a failure leaves no temp name."""
from __future__ import annotations

from pathlib import Path

import pytest

from registry.atomic import new_folder, write_file


def test_write_file_replaces_the_file_with_a_new_inode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "refs.stamp"
    write_file(path, b"1")
    first = path.stat().st_ino
    write_file(path, b"2")
    assert path.read_bytes() == b"2" and path.stat().st_ino != first  # readers notice the change by inode
    assert [p.name for p in tmp_path.iterdir()] == ["refs.stamp"]


def test_new_folder_publishes_on_success_and_replaces_an_existing_folder(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    with new_folder(dst) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.") and not (dst / "new.txt").exists()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in dst.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_new_folder_leaves_nothing_when_the_block_fails(tmp_path: Path) -> None:
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError, match="half way"):
        with new_folder(dst) as tmp:
            (tmp / "part.bin").write_bytes(b"x")
            raise RuntimeError("half way")
    assert list(tmp_path.iterdir()) == []
