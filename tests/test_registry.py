"""The registry service on SQLite and PostgreSQL: revisions, refs, resolve, pull, gc, bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select, text

from converters import UnsafeFileError
from registry.db.models import DerivedRecord, RevisionRecord
from registry.errors import (
    AmbiguousRefError,
    IntegrityError,
    InvalidCheckpointError,
    InvalidIdError,
    NotFoundError,
    RefExistsError,
    RegistryError,
    UnsafePathError,
)
from registry.manifest import Manifest
from registry.service import Registry
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora


def _blob_count(reg: Registry) -> int:
    return len(list(reg.store.iter_digests()))


def test_push_records_a_numbered_revision_with_metadata(reg: Registry, tmp_path: Path) -> None:
    src = write_swift_lora(tmp_path / "a", seed=1, r=8, names=("default", "sql"))
    result = reg.push(src, "team/sql-lora", tag="v1", message="first")
    # 5 files, 4 blobs: the two adapters have identical configs, stored once.
    assert result.created and result.revision.number == 1 and result.blobs_written == 4
    info = reg.show("team/sql-lora@v1")
    assert info.digest == result.revision.digest and info.branches == ["main"] and info.tags == ["v1"]
    assert info.meta["format"] == "swift" and info.meta["tuner_type"] == "LORA" and info.meta["r"] == 8
    assert info.meta["lora_alpha"] == 16 and sorted(info.meta["target_modules"]) == ["q_proj", "v_proj"]
    assert info.meta["dtype"] == "F32" and info.meta["parameters"] == 2 * 2 * (2 * 8 * 32 + 8 * 32 + 8 * 16)
    assert [f["path"] for f in info.manifest["files"]] == [
        "configuration.json", "default/adapter_config.json", "default/adapter_model.safetensors",
        "sql/adapter_config.json", "sql/adapter_model.safetensors"]
    assert Manifest.from_json(info.manifest).digest == info.digest
    [listed] = reg.list("team")
    assert (listed.repo, listed.revisions, listed.main, listed.tuner_type) == ("team/sql-lora", 1, 1, "LORA")


def test_identical_content_makes_no_revision_and_writes_no_blob(reg: Registry, tmp_path: Path) -> None:
    src = write_peft_lora(tmp_path / "a", seed=2)
    first = reg.push(src, "team/x")
    blobs = _blob_count(reg)
    again = reg.push(src, "team/x", tag="stable")
    assert not again.created and again.blobs_written == 0 and again.revision.number == 1
    assert _blob_count(reg) == blobs
    assert reg.show("team/x@stable").digest == first.revision.digest
    assert [r.number for r in reg.log("team/x")] == [1]


def test_main_moves_and_tags_are_immutable_unless_forced(reg: Registry, tmp_path: Path) -> None:
    reg.push(write_peft_lora(tmp_path / "a", seed=1), "team/x", tag="v1")
    blobs = _blob_count(reg)
    with pytest.raises(RefExistsError, match="tag 'v1' of team/x already points to revision 1"):
        reg.push(write_peft_lora(tmp_path / "b", seed=2), "team/x", tag="v1")
    assert [r.number for r in reg.log("team/x")] == [1] and _blob_count(reg) == blobs  # refused before any write
    second = reg.push(tmp_path / "b", "team/x")
    assert second.revision.number == 2 and reg.show("team/x").number == 2 and reg.show("team/x@v1").number == 1
    reg.tag("team/x@2", "v1", force=True)
    assert reg.show("team/x@v1").number == 2
    reg.untag("team/x", "v1")
    with pytest.raises(NotFoundError, match="no tag or branch 'v1'"):
        reg.show("team/x@v1")
    with pytest.raises(RegistryError, match="without a default"):
        reg.remove_ref("team/x@main")
    with pytest.raises(RegistryError, match="is a branch, not a tag"):
        reg.untag("team/x", "main")
    with pytest.raises(InvalidIdError, match="reads as a revision number"):
        reg.tag("team/x@1", "42")


def test_resolve_by_tag_number_and_digest_and_convert_once(reg: Registry, tmp_path: Path) -> None:
    pushed = reg.push(write_swift_lora(tmp_path / "a", seed=3), "team/x", tag="v1").revision
    by_tag = reg.resolve("team/x@v1")
    assert by_tag == reg.resolve("team/x@1") == reg.resolve(f"team/x@{pushed.digest[:19]}")
    assert (by_tag / "default" / "adapter_model.safetensors").is_file()
    peft = reg.resolve("team/x@v1", format="peft")
    assert (peft / "adapter_config.json").is_file() and not (peft / "default").exists()
    assert reg.resolve(f"team/x@{pushed.digest}", format="peft") == peft
    with reg.db.read() as session:
        assert len(session.scalars(select(DerivedRecord)).all()) == 1
    # A second registry process (fresh memo) finds the recorded conversion and the cached snapshot.
    other = Registry(home=reg.home, database_url=reg.database_url)
    assert other.resolve("team/x@v1", format="peft") == peft
    other.close()


def test_pull_copies_a_verified_revision(reg: Registry, tmp_path: Path) -> None:
    reg.push(write_swift_lora(tmp_path / "a", seed=4), "team/x", tag="v1")
    out = reg.pull("team/x@v1", tmp_path / "out", format="peft")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert os.access(out / "adapter_model.safetensors", os.W_OK)
    with pytest.raises(RegistryError, match="already exists"):
        reg.pull("team/x@v1", tmp_path / "out")


def test_resolve_sees_moved_tags_and_new_pushes(reg: Registry, tmp_path: Path) -> None:
    reg.push(write_peft_lora(tmp_path / "a", seed=5), "team/x", tag="prod")
    first = reg.resolve("team/x@prod")
    assert reg.resolve("team/x") == first
    other = Registry(home=reg.home, database_url=reg.database_url)  # another process's view
    other.push(write_peft_lora(tmp_path / "b", seed=6), "team/x")
    other.tag("team/x@2", "prod", force=True)
    other.close()
    assert reg.resolve("team/x@prod") != first and "r2-" in reg.resolve("team/x@prod").name
    assert "r2-" in reg.resolve("team/x").name


def test_bin_weights_are_stored_as_safetensors_and_pickles_left_out(reg: Registry, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    src = write_swift_lora(tmp_path / "a", seed=7)
    weights = load_file(src / "default" / "adapter_model.safetensors")
    torch.save(weights, src / "default" / "adapter_model.bin")
    (src / "default" / "adapter_model.safetensors").unlink()
    (src / "training_args.bin").write_bytes(b"\x80\x04junk")
    (src / "optimizer.pt").write_bytes(b"\x80\x04junk")
    result = reg.push(src, "team/bin")
    paths = [f["path"] for f in result.revision.manifest["files"]]
    assert "default/adapter_model.safetensors" in paths
    assert not any(p.endswith((".bin", ".pt")) for p in paths)
    assert any("training_args.bin" in n for n in result.notices)
    stored = load_file(reg.resolve("team/bin") / "default" / "adapter_model.safetensors")
    assert all(torch.equal(stored[k], v) for k, v in weights.items())


def test_an_invalid_checkpoint_is_refused_with_the_reason_and_nothing_stored(reg: Registry, tmp_path: Path) -> None:
    src = write_peft_lora(tmp_path / "a", seed=8)
    config = json.loads((src / "adapter_config.json").read_text())
    config["r"] = 16
    (src / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidCheckpointError, match="has 4 rows but the rank for"):
        reg.push(src, "team/bad")
    assert _blob_count(reg) == 0 and reg.list() == []


def test_unsafe_paths_inside_a_checkpoint_are_refused(reg: Registry, tmp_path: Path) -> None:
    src = write_peft_lora(tmp_path / "a", seed=9)
    (src / "notes.txt").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeFileError, match="symbolic link"):  # the rule of converters/source_files.py
        reg.push(src, "team/evil")
    (src / "notes.txt").unlink()
    (src / "bad\\name.txt").write_text("x")
    with pytest.raises(UnsafePathError, match="not a portable relative path"):
        reg.push(src, "team/evil")
    assert _blob_count(reg) == 0
    for hostile in ("../../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "./a"):
        with pytest.raises(UnsafePathError):
            Manifest.from_json({"files": [{"path": hostile, "size": 1, "sha256": "sha256:" + "0" * 64}]})


@pytest.mark.parametrize("bad", ["", "team", "team/", "/x", "a/b/c", "../x", "team/..", "team/a..b", "te am/x",
                                 "team/x@", "team/x@sha256:abc", "team/x@sha256:" + "G" * 12, "team/x@0",
                                 "team/x@007", "team/x@a/b", "x" * 97 + "/y", "team/x@" + "v" * 200, "team/-x"])
def test_invalid_ids_are_refused_clearly(reg: Registry, bad: str) -> None:
    with pytest.raises(InvalidIdError):
        reg.show(bad)


def test_a_digest_prefix_matching_two_revisions_is_ambiguous(reg: Registry, tmp_path: Path) -> None:
    reg.push(write_peft_lora(tmp_path / "a", seed=10), "team/x")
    with reg.db.write() as session:  # two revisions whose digests share 14 hex digits (by construction)
        repo_id = session.execute(text("SELECT id FROM adapters")).scalar_one()
        for number, digest in ((2, "sha256:abcdef01234567" + "0" * 50), (3, "sha256:abcdef01234567" + "1" * 50)):
            session.add(RevisionRecord(adapter_id=repo_id, number=number, digest=digest, format="peft",
                                       manifest={"files": []}, meta={}, parents=[]))
    with pytest.raises(AmbiguousRefError, match="matches revisions 2, 3"):
        reg.show("team/x@sha256:abcdef012345")
    assert reg.show("team/x@sha256:abcdef01234567" + "1").number == 3


def test_a_corrupt_blob_is_detected_on_pull_and_never_served(reg: Registry, tmp_path: Path) -> None:
    pushed = reg.push(write_peft_lora(tmp_path / "a", seed=11), "team/x").revision
    weights = next(f for f in pushed.manifest["files"] if f["path"] == "adapter_model.safetensors")
    blob = reg.store.path(weights["sha256"])
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"adapter_model.safetensors: blob {weights['sha256']} is corrupt"):
        reg.pull("team/x", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in (reg.home / "snapshots" / "team" / "x").iterdir() if not p.name.startswith(".")] == []
    assert reg.verify("team/x") == [weights["sha256"]]


def test_revision_rows_are_immutable_in_the_database(reg: Registry, tmp_path: Path) -> None:
    reg.push(write_peft_lora(tmp_path / "a", seed=12), "team/x")
    with pytest.raises(Exception, match="revisions are immutable"):
        with reg.db.write() as session:
            session.execute(text("UPDATE revisions SET number = 9"))
    with pytest.raises(Exception, match="revisions are immutable"):
        with reg.db.write() as session:
            session.execute(text("DELETE FROM revisions"))
    assert reg.show("team/x@1").number == 1


def test_base_models_validate_the_adapters_pushed_against_them(reg: Registry, tmp_path: Path,
                                                                  llama_base: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    base = reg.push_base(llama_base, "meta/tiny-llama", tag="v1")
    assert base.created and base.revision.meta["architecture"] == "LlamaForCausalLM"
    ok = reg.push(write_peft_lora(tmp_path / "a", seed=13), "team/x", base_model="meta/tiny-llama@v1")
    assert ok.revision.base_model == "meta/tiny-llama@1"
    assert reg.list("team")[0].base_model == "meta/tiny-llama"
    wider = tmp_path / "wider"
    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(wider)
    reg.push_base(wider, "meta/wider")
    with pytest.raises(InvalidCheckpointError, match="model.layers.0.self_attn.q_proj: adapter expects a base weight"):
        reg.push(write_peft_lora(tmp_path / "b", seed=14), "team/y", base_model="meta/wider")
    with pytest.raises(NotFoundError, match="no base model meta/none"):
        reg.push(tmp_path / "b", "team/y", base_model="meta/none")


def test_gc_removes_only_unreferenced_blobs_past_the_grace(reg: Registry, tmp_path: Path) -> None:
    reg.push(write_peft_lora(tmp_path / "a", seed=15), "team/x")
    referenced = set(reg.store.iter_digests())
    orphan_file = tmp_path / "orphan.bin"
    orphan_file.write_bytes(os.urandom(1000))
    orphan = reg.store.put_file(orphan_file).digest
    assert reg.gc(grace_seconds=3600).blobs_removed == 0  # young: a push may still be about to use it
    result = reg.gc(grace_seconds=0)
    assert result.blobs_removed == 1 and result.bytes_removed == 1000
    assert set(reg.store.iter_digests()) == referenced and orphan not in referenced
    assert reg.pull("team/x", tmp_path / "out").is_dir()
