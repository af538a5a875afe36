"""Disk that can be reclaimed (issue 16, item 5), on each configured database:

- snapshots share storage with the blobs (hard links of the read-only blobs);
- `cache ls|prune` and `rm --revision` + `gc` give back the bytes, measured under SWIFTREG_HOME;
- a revision is deleted on the record, never while a tag, branch, lineage link or active job needs it;
- retention rules (`retention set --keep-last N --keep-tagged`) are applied by gc;
- gc sweeps the working folders of killed pushes and says what it kept inside the grace period.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from registry.cli import main
from registry.db.models import RevisionDeletionRecord
from registry.errors import NotFoundError, RevisionInUseError
from registry.service import Registry
from tests.helpers.checkpoints import write_big_peft_lora, write_peft_lora
from tests.helpers.cli import cli_on


def home_bytes(home: Path) -> int:
    """Bytes of the files under `home`, each inode counted once (as `du` does for hard links)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, files in os.walk(home):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run = cli_on(tmp_path / "home", database_url, monkeypatch)
    run.home = tmp_path / "home"  # type: ignore[attr-defined]
    return run


def test_snapshots_share_blob_storage_and_prune_rm_revision_gc_give_the_bytes_back(cli, tmp_path: Path) -> None:
    home = cli.home
    first = write_big_peft_lora(tmp_path / "a", seed=1)
    cli("push", first, "team/big")
    cli("push", write_big_peft_lora(tmp_path / "b", seed=2), "team/big")
    stored = home_bytes(home)
    snapshot = Path(cli("pull", "team/big@1").stdout.strip())
    weights = snapshot / "adapter_model.safetensors"
    assert weights.stat().st_nlink == 2 and oct(weights.stat().st_mode & 0o777) == "0o444"  # the blob itself
    assert home_bytes(home) - stored < 1 << 20  # a snapshot costs no second copy
    cli("pull", "team/big@1", "--format", "swift")  # a derived form: new blobs and its snapshot
    cli("pull", "team/big@1", "-o", tmp_path / "out")  # outside the home: not counted
    full = home_bytes(home)
    assert full > stored + (7 << 20)  # the Swift form's weights are new bytes

    listed = json.loads(cli("cache", "ls", "--json").output)
    assert sorted((e["repo"], e["number"], e["format"]) for e in listed) == [
        ("team/big", 1, "peft"), ("team/big", 1, "swift")]
    assert all(e["own_bytes"] == 0 for e in listed)  # every file shares a blob's storage
    pruned = json.loads(cli("cache", "prune", "--derived", "--json").output)
    assert len(pruned["removed"]) == 2 and pruned["derived_forgotten"] == 1
    assert not snapshot.exists() and json.loads(cli("cache", "ls", "--json").output) == []
    cli("gc", "--grace", "0")  # the derived form's blobs: nothing names them any more
    assert home_bytes(home) < stored + (1 << 20)

    cli("branch", "team/big@2", "main")  # main is on 2 already; revision 1 has no ref left
    removed = json.loads(cli("rm", "team/big@1", "--revision", "--json").output)
    assert removed["revision"]["number"] == 1
    gc = json.loads(cli("gc", "--grace", "0", "--json").output)
    assert gc["blobs_removed"] >= 1 and gc["bytes_removed"] > 7 << 20
    assert home_bytes(home) < stored - (7 << 20)  # revision 1's weights are gone from the disk
    gone = cli("show", "team/big@1", ok=False)
    assert "team/big@1 was deleted on" in gone.stderr and "(rm --revision)" in gone.stderr
    again = json.loads(cli("push", first, "team/big", "--json").output)  # the same files again: a new number
    assert again["created"] and again["revision"]["number"] == 3


def test_a_revision_is_deleted_only_when_nothing_needs_it(reg: Registry, tmp_path: Path) -> None:
    one = reg.push(write_peft_lora(tmp_path / "a", seed=1), "team/x", tag="v1").revision
    reg.push(write_peft_lora(tmp_path / "b", seed=2), "team/x")
    parents = [{"role": "adapter", "repo": "team/x", "kind": "adapter", "number": 1, "digest": one.digest}]
    reg.push(write_peft_lora(tmp_path / "c", seed=3), "team/merged", parents=parents)
    job = reg.submit_job("validate", {"revisions": ["team/x@1"]}, backend="worker")  # queued: it will read @1

    with pytest.raises(RevisionInUseError) as refused:
        reg.delete_revision("team/x@1")
    assert refused.value.needed_by == ["tag v1", "revision team/merged@1 (lineage)", f"job {job.id} (validate, queued)"]
    with pytest.raises(RevisionInUseError, match="branch main"):
        reg.delete_revision("team/x@2")
    reg.untag("team/x", "v1")
    reg.cancel_job(job.id)
    with pytest.raises(RevisionInUseError, match=r"^team/x@1 is still needed by revision team/merged@1 \(lineage\)"):
        reg.delete_revision("team/x@1")
    reg.branch("team/merged@1", "keep")  # lineage stays whatever refs do; only deleting the child frees it
    reg.remove_ref("team/merged@keep")
    reg.remove_ref("team/merged@main", force=True)
    reg.delete_revision("team/merged@1")
    deleted = reg.delete_revision("team/x@1")
    assert deleted.number == 1 and [r.number for r in reg.log("team/x")] == [2]
    with reg.db.read() as session:
        rows = session.scalars(select(RevisionDeletionRecord).order_by(RevisionDeletionRecord.id)).all()
        assert [(r.repo, r.number, r.digest) for r in rows] == [("team/merged", 1, rows[0].digest),
                                                                ("team/x", 1, one.digest)]
    with pytest.raises(NotFoundError, match=r"team/x@1 was deleted on .* \(rm --revision\)"):
        reg.show("team/x@1")
    # The database still refuses a delete that is not on the record, and every update.
    with pytest.raises(Exception, match="revisions are immutable"), reg.db.write() as session:
        session.execute(text("DELETE FROM revisions WHERE number = 2"))
    with pytest.raises(Exception, match="revisions are immutable"), reg.db.write() as session:
        session.execute(text("UPDATE revisions SET message = 'x'"))


def test_retention_rules_are_applied_by_gc_and_keep_what_is_needed(reg: Registry, tmp_path: Path) -> None:
    for seed in range(1, 7):
        reg.push(write_peft_lora(tmp_path / f"r{seed}", seed=seed), "team/nightly",
                 tag="golden" if seed == 1 else None)
    reg.branch("team/nightly@3", "canary")
    policy = reg.set_retention("team/nightly", 2, keep_tagged=True)
    assert policy is not None and (policy.keep_last, policy.keep_tagged) == (2, True)
    assert reg.retention("team/nightly") == policy
    dry = reg.apply_retention(dry_run=True)
    assert dry.deleted == ["team/nightly@4", "team/nightly@2"]
    assert dry.kept == ["team/nightly@3: needed by branch canary"]
    assert [r.number for r in reg.log("team/nightly")] == [6, 5, 4, 3, 2, 1]  # a dry run deletes nothing
    result = reg.gc(grace_seconds=0)
    assert result.revisions_deleted == 2 and result.blobs_removed >= 2
    assert [r.number for r in reg.log("team/nightly")] == [6, 5, 3, 1]  # last two, the branch, the tag
    assert reg.set_retention("team/nightly", None) is None and reg.retention("team/nightly") is None


def test_gc_sweeps_killed_pushes_and_says_what_the_grace_kept(reg: Registry, tmp_path: Path) -> None:
    reg.push(write_peft_lora(tmp_path / "a", seed=1), "team/x")
    killed = reg.home / "swiftreg-push-killed"
    (killed / "checkpoint").mkdir(parents=True)
    (killed / "checkpoint" / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    old = time.time() - 7200
    for p in (killed / "checkpoint" / "adapter_model.safetensors", killed / "checkpoint", killed):
        os.utime(p, (old, old))
    live = reg.home / "swiftreg-push-live"
    live.mkdir()
    (live / "part").write_bytes(b"\0" * 100)
    stray = reg.store.put_stream([b"an uploaded blob no revision names yet"])
    result = reg.gc(grace_seconds=3600)
    assert (result.staging_removed, result.staging_bytes_removed) == (1, 4096)
    assert not killed.exists() and live.exists()
    assert (result.kept_in_grace, result.kept_in_grace_bytes) == (1, stray.size)
    out = CliRunner().invoke(main, ["gc"], env={"SWIFTREG_HOME": str(reg.home), "SWIFTREG_DATABASE_URL":
                                                str(reg.db.engine.url.render_as_string(hide_password=False))})
    assert "kept 1 unreferenced blobs" in out.output and "younger than the grace period" in out.output, out.output
