"""Transfers near their limit (issue 18 items 5 and 6): every byte of a local push read and hashed once, on the
way into the store; `pull -o` outputs that share nothing writable with the cache; `convert`'s start importing
only its own command.

Real files, a real store and real registries; the one thing set by hand is the store's copy run (COPY_RUN),
made small so that a few-KiB file is copied in several runs and a writer can be let in between two of them.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import registry.store.local as local_store
from registry import Registry
from registry.errors import InvalidCheckpointError, NotFoundError
from registry.store import BlobDigestMismatch, LocalBlobStore
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.filesystems import small_filesystem

pytestmark = pytest.mark.transfer

WEIGHTS = "adapter_model.safetensors"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_bytes(store: LocalBlobStore, digest: str) -> bytes:
    return store.path(digest).read_bytes()


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> int:
    """A copy run of 1 KiB: a few-KiB file goes into the store in several runs, with progress after each."""
    monkeypatch.setattr(local_store, "COPY_RUN", 1024)
    return 1024


def test_put_reader_names_a_blob_by_exactly_the_bytes_it_stored(tmp_path: Path, small_runs: int) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    source = tmp_path / "source.bin"
    original = os.urandom(5 * small_runs + 123)
    source.write_bytes(original)
    runs: list[int] = []

    def writer_between_runs(n: int) -> None:  # another program rewrites the file's tail after the first run
        runs.append(n)
        if len(runs) == 1:
            with open(source, "r+b") as f:
                f.seek(3 * small_runs)
                f.write(b"\xff" * 100)

    with open(source, "rb", buffering=0) as f:
        info = store.put_reader(f, writer_between_runs)

    stored = blob_bytes(store, info.digest)
    assert len(runs) == 6 and sum(runs) == len(original)  # several kernel runs, each reported once
    assert stored == source.read_bytes() != original  # the changed tail was copied...
    assert info.digest == digest_of(stored) != digest_of(original)  # ...and the name is of what is stored
    assert store.verify(info.digest) and store.stale_temp_files(0) == []


def test_put_reader_copies_by_hand_across_filesystems(tmp_path: Path) -> None:
    """A source on another filesystem (a tmpfs: copy_file_range refuses, EXDEV): read, hashed, written by hand."""
    store = LocalBlobStore(tmp_path / "blobs")
    with small_filesystem(tmp_path / "tmpfs", 16) as other:
        source = other / "source.bin"
        data = os.urandom(3 * (1 << 20) + 5)
        source.write_bytes(data)
        with open(source, "rb", buffering=0) as f:
            info = store.put_reader(f)
        with open(source, "rb", buffering=0) as f:
            again = store.put_reader(f)
    assert info.digest == digest_of(data) and info.created and blob_bytes(store, info.digest) == data
    assert again.digest == info.digest and not again.created  # already stored: not linked or fsynced again
    assert store.stale_temp_files(0) == []


def test_a_push_reads_each_file_once_and_a_repush_writes_nothing(tmp_path: Path) -> None:
    src = write_peft_lora(tmp_path / "adapter", seed=11)
    reg = Registry(home=tmp_path / "home")
    try:
        seen: list[int] = []
        first = reg.push(src, "team/once", progress=seen.append)
        files = {p.name: p.read_bytes() for p in src.iterdir()}
        assert sum(seen) == sum(len(b) for b in files.values())  # every byte counted once: one pass
        assert first.blobs_written == 3 and first.bytes_written == sum(len(b) for b in files.values())
        for entry in first.revision.manifest["files"]:
            assert blob_bytes(reg.store, entry["sha256"]) == files[entry["path"]]
        again = reg.push(src, "team/once")
        assert not again.created and again.blobs_written == 0 and again.bytes_written == 0
        assert reg.store.stale_temp_files(0) == [] and reg.verify("team/once") == []
    finally:
        reg.close()


def test_a_file_changed_while_it_is_stored_fails_the_push(tmp_path: Path, small_runs: int) -> None:
    src = write_peft_lora(tmp_path / "adapter", seed=12)
    weights = src / WEIGHTS
    assert weights.stat().st_size > 2 * small_runs
    reg = Registry(home=tmp_path / "home")
    try:
        calls: list[int] = []

        def writer_mid_copy(n: int) -> None:
            calls.append(n)
            if len(calls) == 3:  # after the weights' first run (sorted order: README.md, the config, the weights)
                with open(weights, "r+b") as f:
                    f.seek(weights.stat().st_size - 16)
                    f.write(b"\x00" * 16)

        with pytest.raises(InvalidCheckpointError, match=f"{WEIGHTS} changed while it was being stored"):
            reg.push(src, "team/moving", progress=writer_mid_copy)
        with pytest.raises(NotFoundError):
            reg.log("team/moving")
        assert all(reg.store.verify(d) for d in reg.store.iter_digests())  # nothing stored under a wrong name
        assert reg.store.stale_temp_files(0) == []
    finally:
        reg.close()


def test_put_file_with_an_expected_digest_still_refuses_other_bytes(tmp_path: Path) -> None:
    """The path a remote store and `adopt` keep: a source whose bytes changed since it was hashed is refused."""
    store = LocalBlobStore(tmp_path / "blobs")
    source = tmp_path / "source.bin"
    source.write_bytes(b"a" * 10_000)
    expected = digest_of(source.read_bytes())
    source.write_bytes(b"a" * 9_999 + b"b")
    with pytest.raises(BlobDigestMismatch):
        store.put_file(source, expected=expected)
    assert list(store.iter_digests()) == [] and store.stale_temp_files(0) == []


def test_editing_a_pulled_output_never_alters_the_cache_or_the_store(tmp_path: Path) -> None:
    src = write_peft_lora(tmp_path / "adapter", seed=13)
    reg = Registry(home=tmp_path / "home")
    try:
        reg.push(src, "team/pulled")
        out = reg.pull("team/pulled", tmp_path / "out")
        snapshot = reg.resolve("team/pulled")
        before = (snapshot / WEIGHTS).read_bytes()
        edited = out / WEIGHTS
        assert os.stat(edited).st_ino != os.stat(snapshot / WEIGHTS).st_ino  # never the cache's own inode
        with open(edited, "r+b") as f:  # as root, or after chmod: an edit in place, not a new file
            f.seek(100)
            f.write(b"\x00" * 64)
        assert (snapshot / WEIGHTS).read_bytes() == before
        assert reg.verify("team/pulled") == [] and all(reg.store.verify(d) for d in reg.store.iter_digests())
        assert reg.resolve("team/pulled") == snapshot
    finally:
        reg.close()


def test_the_lazy_command_table_names_every_command_of_each_module() -> None:
    import registry.cli as cli

    for module, names in cli.MODULES.items():
        commands = importlib.import_module(f"registry.cli.{module}").COMMANDS
        assert tuple(c.name for c in commands) == names, module


def test_convert_imports_neither_the_database_nor_other_commands(tmp_path: Path) -> None:
    src = write_peft_lora(tmp_path / "adapter", seed=14)
    probe = ("import sys, runpy\n"
             f"sys.argv = ['swiftreg', 'convert', {str(src)!r}, {str(tmp_path / 'out')!r}, '--to', 'swift']\n"
             "try:\n    runpy.run_module('registry.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "heavy = ('sqlalchemy', 'torch', 'numpy', 'httpx', 'registry.cli.repos', 'registry.cli.server',\n"
             "         'registry.cli.jobs', 'registry.service', 'importlib.resources', 'tempfile', 'secrets')\n"
             "print(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").is_dir()
    assert done.stdout.strip().splitlines()[-1] == "[]"
