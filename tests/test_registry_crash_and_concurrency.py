"""Concurrent pushes get gap-free numbers; pushes killed anywhere leave nothing half-written."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.errors import NotFoundError
from registry.service import Registry
from tests.helpers.checkpoints import write_peft_lora

PUSHER = """
import sys
from registry.service import Registry
home, url, repo = sys.argv[1:4]
registry = Registry(home=home, database_url=url)
for folder in sys.argv[4:]:
    registry.push(folder, repo)
"""


def _pusher(home: Path, url: str, repo: str, folders: list[Path], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUSHER, str(home), url, repo, *map(str, folders)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_eight_processes_pushing_ten_revisions_each_get_numbers_1_to_80(database_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry(home=home, database_url=database_url).close()  # schema in place before the race
    folders = [[write_peft_lora(tmp_path / f"p{p}-{i}", seed=1000 * p + i) for i in range(10)] for p in range(8)]
    procs = [_pusher(home, database_url, "team/busy", batch) for batch in folders]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    reg = Registry(home=home, database_url=database_url)
    try:
        log = reg.log("team/busy")
        assert sorted(r.number for r in log) == list(range(1, 81))
        expected = {_digest(f) for batch in folders for f in batch}
        assert {r.digest for r in log} == expected and len(expected) == 80
        last = max(log, key=lambda r: r.created_at)
        assert reg.show("team/busy").number == 80 == last.number
        assert reg.list("team")[0].revisions == 80
    finally:
        reg.close()


def _digest(folder: Path) -> str:
    from registry.manifest import build_manifest, collect_files

    return build_manifest(collect_files(folder)[0]).digest


def _assert_store_sound(reg: Registry) -> None:
    for digest in reg.store.iter_digests():
        assert reg.store.verify(digest), f"corrupt blob {digest}"
    try:
        revisions = reg.log("team/crash")
    except NotFoundError:
        return
    for rev in revisions:
        assert reg.store.missing(f["sha256"] for f in rev.manifest["files"]) == []


@pytest.mark.parametrize("point", ["push:blob-write", "push:after-blobs", "push:before-commit"])
def test_a_push_killed_at_each_stage_leaves_no_revision_and_no_corrupt_blob(database_url: str, tmp_path: Path,
                                                                            point: str) -> None:
    home = tmp_path / "home"
    Registry(home=home, database_url=database_url).close()
    src = write_peft_lora(tmp_path / "a", seed=77, layers=8)
    proc = _pusher(home, database_url, "team/crash", [src], SWIFTREG_FAILPOINTS=point)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    reg = Registry(home=home, database_url=database_url)
    try:
        with pytest.raises(NotFoundError):
            reg.log("team/crash")
        _assert_store_sound(reg)
        leftovers = len(list(reg.store.iter_digests())) + len(reg.store.stale_temp_files(0))
        assert leftovers > 0, "the kill should have left something for gc to reclaim"
        result = reg.gc(grace_seconds=0)
        assert result.blobs_removed + result.temp_files_removed == leftovers
        assert list(reg.store.iter_digests()) == [] and reg.store.stale_temp_files(0) == []
        pushed = reg.push(src, "team/crash")
        assert pushed.created and pushed.revision.number == 1
        assert reg.verify("team/crash") == []
    finally:
        reg.close()


def test_pushes_killed_at_random_moments_never_leave_a_partial_revision(database_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry(home=home, database_url=database_url).close()
    rng = random.Random(1234)
    sources = [write_peft_lora(tmp_path / f"s{i}", seed=500 + i, layers=64, r=16) for i in range(6)]
    for src in sources:
        proc = _pusher(home, database_url, "team/crash", [src])
        time.sleep(rng.uniform(0.3, 2.5))  # imports take ~1 s: kills land before, during and after the push
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        reg = Registry(home=home, database_url=database_url)
        try:
            _assert_store_sound(reg)
        finally:
            reg.close()
    reg = Registry(home=home, database_url=database_url)
    try:
        for src in sources:
            reg.push(src, "team/crash")
        numbers = sorted(r.number for r in reg.log("team/crash"))
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) == len(sources)
        reg.gc(grace_seconds=0)
        _assert_store_sound(reg)
        assert all(reg.verify(f"team/crash@{n}") == [] for n in numbers)
    finally:
        reg.close()


RESOLVER = """
import sys
from registry.service import Registry
registry = Registry(home=sys.argv[1], database_url=sys.argv[2])
print(registry.resolve(sys.argv[3], format=sys.argv[4]))
"""


def test_processes_resolving_the_same_id_at_once_build_one_complete_snapshot(database_url: str,
                                                                               tmp_path: Path) -> None:
    home = tmp_path / "home"
    reg = Registry(home=home, database_url=database_url)
    reg.push(write_peft_lora(tmp_path / "a", seed=99, layers=32, r=32), "team/hot", tag="v1")
    reg.close()
    procs = [subprocess.Popen([sys.executable, "-c", RESOLVER, str(home), database_url, "team/hot@v1", fmt],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for fmt in ("swift", "swift", "swift", "swift", "peft", "peft")]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out.strip())
    assert len(set(outputs[:4])) == 1 and len(set(outputs[4:])) == 1
    swift = Path(outputs[0])
    assert (swift / "default" / "adapter_model.safetensors").is_file()
    siblings = [p.name for p in swift.parent.iterdir() if not p.name.startswith(".")]
    assert sorted(siblings) == sorted({Path(o).name for o in outputs})  # no partial or duplicate folders
    assert not [p for p in swift.parent.iterdir() if p.name.endswith(".partial")]
    reg = Registry(home=home, database_url=database_url)
    try:
        with reg.db.read() as session:
            from sqlalchemy import func, select

            from registry.db.models import DerivedRecord
            assert session.scalar(select(func.count()).select_from(DerivedRecord)) == 1
    finally:
        reg.close()
