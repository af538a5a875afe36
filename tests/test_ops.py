"""Merge, unmerge and combine through the registry: lineage recorded, equivalence checked, CLI exits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from registry import ops
from registry.cli import main
from registry.service import Registry
from tests.helpers.models import make_peft_checkpoint


@pytest.fixture
def world(tmp_path: Path, llama_base: Path):
    reg = Registry(home=tmp_path / "home")
    reg.push_base(llama_base, "meta/tiny", tag="v1")
    adapters = {}
    for i, (name, extra) in enumerate((("sql", {}), ("chat", {"use_rslora": True}))):
        folder = tmp_path / name
        make_peft_checkpoint(llama_base, folder, {"default": dict(r=4, lora_alpha=8, target_modules=[
            "q_proj", "v_proj", "down_proj"], **extra)}, seed=40 + i)
        reg.push(folder, f"team/{name}", tag="v1", base_model="meta/tiny@v1")
        adapters[name] = folder
    yield reg, adapters
    reg.close()


def _state(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def test_merge_pushes_a_base_revision_with_lineage_and_passing_checks(world) -> None:
    reg, _ = world
    result = ops.merge(reg, "team/sql@v1", "meta/tiny@v1", push="meta/tiny-sql", device="cpu")
    assert result.passed and len(result.comparisons) == 1  # plain LoRA: the per-tensor check (tensor_check.py)
    assert result.comparisons[0].rel_err <= 1.0  # worst error / rounding bound
    full = ops.merge(reg, "team/sql@v1", "meta/tiny@v1", push="meta/tiny-sql2", device="cpu", check_outputs="full")
    assert full.passed and len(full.comparisons) == 3  # + vs peft merge_and_unload, vs base+adapter
    assert all(c.rel_err < 1e-5 for c in full.comparisons[1:])
    info = reg.show("meta/tiny-sql")
    roles = {p["role"]: p for p in info.parents}
    assert roles["base"]["repo"] == "meta/tiny" and roles["adapter"]["repo"] == "team/sql"
    assert roles["operation"]["op"] == "merge" and "torch" in roles["operation"]["versions"]
    assert roles["operation"]["equivalence"][0]["passed"]


def test_unmerge_returns_the_original_base_bit_for_bit_by_lineage(world, tmp_path: Path) -> None:
    reg, _ = world
    ops.merge(reg, "team/sql@v1", "meta/tiny@v1", push="meta/tiny-sql", dtype="bf16", device="cpu")
    result = ops.unmerge(reg, "meta/tiny-sql", "team/sql@v1", output=tmp_path / "back", device="cpu")
    original = _state(reg.resolve("meta/tiny@v1"))
    back = _state(tmp_path / "back")
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in original.items())
    drift = result.figures["numerical_unmerge_drift"]
    assert drift["elements"] > 0 and drift["elements_differing"] > 0  # bf16: subtracting does not restore bits
    assert any("bit for bit" in n for n in result.notes)


def test_unmerge_without_lineage_is_numerical_and_checked_by_remerging(world, tmp_path: Path) -> None:
    reg, adapters = world
    ops.merge(reg, str(adapters["sql"]), "meta/tiny@v1", output=tmp_path / "merged", device="cpu")
    result = ops.unmerge(reg, str(tmp_path / "merged"), "team/sql@v1", output=tmp_path / "back", device="cpu")
    assert result.passed and result.comparisons[0].name == "merge(unmerge(M)) vs M"
    original = _state(reg.resolve("meta/tiny@v1"))
    back = _state(tmp_path / "back")
    assert max((back[k] - v).abs().max().item() for k, v in original.items()) < 1e-5


def test_combine_cat_is_exact_and_pushed_with_lineage(world) -> None:
    reg, _ = world
    result = ops.combine(reg, ["team/sql@v1", "team/chat@v1"], [0.6, 0.4], "cat", base_ref="meta/tiny@v1",
                         push="team/mix", device="cpu")
    assert result.passed, result.comparisons
    [check] = result.comparisons
    assert not check.informational and check.rel_err < 1e-5
    info = reg.show("team/mix")
    assert [p.get("repo") for p in info.parents if p["role"].startswith("source")] == ["team/sql", "team/chat"]
    assert info.base_model == f"meta/tiny@{reg.show('meta/tiny@v1').number}"  # checked on it: linked to it
    assert [p["repo"] for p in info.parents if p["role"] == "base"] == ["meta/tiny"]
    config = json.loads((reg.resolve("team/mix") / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] and not config.get("use_rslora")


def test_combine_peft_semantics_matches_peft_and_reports_the_difference(world) -> None:
    reg, _ = world
    result = ops.combine(reg, ["team/sql@v1", "team/chat@v1"], [0.6, 0.4], "linear", semantics="peft",
                         base_ref="meta/tiny@v1", output=None, device="cpu")
    names = [c.name for c in result.comparisons]
    assert "combined vs peft add_weighted_adapter" in names
    peft_check = result.comparisons[names.index("combined vs peft add_weighted_adapter")]
    assert peft_check.passed and peft_check.rel_err < 1e-5
    intended = result.comparisons[0]
    assert intended.informational and intended.rel_err > 1e-3  # PEFT's linear has cross terms
    assert result.notes


def test_cli_merge_prints_the_table_and_refuses_a_mismatched_base(world, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    reg, adapters = world
    monkeypatch.setenv("SWIFTREG_HOME", str(reg.home))
    monkeypatch.delenv("SWIFTREG_DATABASE_URL", raising=False)
    run = CliRunner().invoke(main, ["merge", "team/sql@v1", "--base", "meta/tiny@v1", "-o", str(tmp_path / "m"),
                                    "--device", "cpu"])
    assert run.exit_code == 0, run.output
    assert "merged vs base+adapter" in run.output and "ok" in run.output
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path / "wide")
    bad = CliRunner().invoke(main, ["merge", str(adapters["sql"]), "--base", str(tmp_path / "wide"), "-o",
                                    str(tmp_path / "m2"), "--device", "cpu"])
    assert bad.exit_code == 1 and "shape mismatch" in bad.stderr and "module model.layers." in bad.stderr
    assert "Traceback" not in bad.output
    assert not (tmp_path / "m2").exists()


def test_cli_combine_unmerge_and_check_equivalence(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg, _ = world
    monkeypatch.setenv("SWIFTREG_HOME", str(reg.home))
    monkeypatch.delenv("SWIFTREG_DATABASE_URL", raising=False)

    def run(*args: str, code: int = 0):
        result = CliRunner().invoke(main, list(args))
        assert result.exit_code == code, (args, result.output, result.stderr)
        return result

    combined = json.loads(run("combine", "team/sql@v1", "team/chat@v1", "--weights", "0.5,0.5", "--method", "svd",
                              "--rank", "8", "--base", "meta/tiny@v1", "--push", "team/mix", "--device", "cpu",
                              "--json").stdout)
    assert combined["passed"] and combined["pushed"]["repo"] == "team/mix"
    assert combined["comparisons"][0]["rel_err"] < 1e-5  # rank 8 = sum of ranks: lossless
    run("merge", "team/sql@v1", "--base", "meta/tiny@v1", "--push", "meta/tiny-sql", "--device", "cpu")
    checked = run("check-equivalence", "team/sql@v1", "--base", "meta/tiny@v1", "--merged", "meta/tiny-sql",
                  "--device", "cpu")
    assert "merged vs peft merge_and_unload" in checked.output
    back = json.loads(run("unmerge", "meta/tiny-sql", "--adapter", "team/sql@v1", "-o", str(tmp_path / "b"),
                          "--device", "cpu", "--json").stdout)
    assert back["passed"] and "numerical_unmerge_drift" in back["figures"]
    # A merged model checked against the wrong adapter fails the check: exit 1 with the table.
    wrong = run("check-equivalence", "team/chat@v1", "--base", "meta/tiny@v1", "--merged", "meta/tiny-sql",
                "--device", "cpu", code=1)
    assert "FAIL" in wrong.output
    # one adapter is a rank reduction (--method svd, tests/test_cli_everyday.py); any other method is refused
    run("combine", "team/sql@v1", "--weights", "1", "--method", "ties", "--push", "x/y", code=1)
    assert "use --method svd --rank R" in run("combine", "team/sql@v1", "--weights", "1", "--method", "cat", "-o",
                                              str(tmp_path / "z"), code=1).stderr


def test_a_job_cancelled_while_it_runs_pushes_nothing(world) -> None:
    """The runner asks, right before pushing, whether the job is still this worker's."""
    from registry.errors import NotFoundError
    from registry.jobs import JobQueue
    from registry.jobs.worker import Worker

    reg, _ = world
    queue = JobQueue(reg.db.engine)
    job = reg.submit_job("merge", {"adapter": "team/sql@v1", "base": "meta/tiny@v1", "push": "meta/cancelled",
                                   "device": "cpu"})
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == job.id
    assert queue.cancel(job.id).status == "cancelled"  # as `swiftreg jobs cancel` would, while w1 runs it
    worker = Worker(reg, queue, worker_id="w1", heartbeat=60)
    assert worker.run_one(claimed) is False and worker.stats.lost == 1
    with pytest.raises(NotFoundError):
        reg.show("meta/cancelled")
    assert queue.get(job.id).status == "cancelled"
