"""Tuner types through the real ms-swift (its own environment): peft types written by `Swift.prepare_model`, and
ms-swift's own Adapter, Prompt and LLaMA-Pro tuners validated by ms-swift itself.

ms-swift runs in three subprocesses in all: one makes every checkpoint, one runs validate-all's ms-swift checks
over every revision, one validates a wrong-shaped checkpoint folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import converters
from registry.interop import swift_checks
from registry.interop.swift_env import run_jobs
from registry.jobs.revision_checks import validate_revisions
from registry.service import Registry
from tests.helpers.models import PROBE, build_base, forward, load_base

pytestmark = [pytest.mark.oracle, pytest.mark.tuners]

T = ["q_proj", "v_proj"]
PEFT_TYPES = {
    "ADALORA": {"class": "AdaLoraConfig", "config": dict(target_modules=T, total_step=10, init_r=4, target_r=2)},
    "VERA": {"class": "VeraConfig", "config": dict(target_modules=T, r=8)},
    "BOFT": {"class": "BOFTConfig", "config": dict(target_modules=T, boft_block_size=4)},
    "LOHA": {"class": "LoHaConfig", "config": dict(target_modules=T, r=4)},
}
SWIFT_TUNERS = {
    "ADAPTER": {"class": "AdapterConfig", "config": dict(dim=32, target_modules=r"^model\.layers\.\d+\.mlp$",
                                                         hidden_pos=0, adapter_length=8)},
    "PROMPT": {"class": "PromptConfig", "config": dict(dim=32, target_modules=r"^model\.layers\.\d+$", embedding_pos=0,
                                                       attention_mask_pos="attention_mask", prompt_length=4)},
    "LLAMAPRO": {"class": "LLaMAProConfig", "config": dict(model_type="llama", num_new_blocks=2)},
}


def repo(kind: str) -> str:
    return f"swift-made/{kind.lower()}"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, swift_python: str):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("swift-tuners")
    base = build_base("llama", root / "base")
    jobs = [{"id": kind, "op": "make", "base": str(base), "out": str(root / kind), "seed": 5,
             "adapters": [{"name": "default", **spec}], "probe": None if kind in SWIFT_TUNERS else PROBE,
             "outputs": str(root / f"{kind}.outputs.safetensors")}
            for kind, spec in {**PEFT_TYPES, **SWIFT_TUNERS}.items()]
    results = {r["id"]: r for r in run_jobs(jobs, python=swift_python)}
    assert all(r["ok"] for r in results.values()), {k: r.get("error") for k, r in results.items()}
    reg = Registry(home=root / "home")
    reg.push_base(base, "meta/tiny")
    for kind in (*PEFT_TYPES, *SWIFT_TUNERS):
        reg.push(root / kind, repo(kind), base_model="meta/tiny")
    yield reg, base, root, swift_python
    reg.close()


@pytest.mark.parametrize("kind", list(PEFT_TYPES))
def test_peft_types_written_by_ms_swift_push_pull_and_load_exactly(made, kind: str) -> None:
    from peft import PeftModel, get_peft_model_state_dict

    reg, base, root, _ = made
    assert converters.detect(root / kind).format == "peft"
    assert reg.show(repo(kind)).meta["tuner_type"] == kind
    pulled = reg.resolve(repo(kind), "peft")
    assert converters.validate(pulled, base).ok
    stored = (pulled / "adapter_model.safetensors").read_bytes()
    assert stored == (root / kind / "adapter_model.safetensors").read_bytes()
    model = PeftModel.from_pretrained(load_base(base), pulled).eval()

    saved, state = load_file(str(pulled / "adapter_model.safetensors")), get_peft_model_state_dict(model)
    assert sorted(saved) == sorted(state) and all(torch.equal(saved[k], state[k].cpu()) for k in saved)
    ours = forward(model)
    theirs = load_file(str(root / f"{kind}.outputs.safetensors"))["default"]
    # The newest peft computes what ms-swift (peft 0.18) did; BOFT's butterfly product is formed in another order
    # by peft 0.21 (float32 rounding: 6e-8 on these logits), every other type to the bit.
    assert (ours - theirs).abs().max().item() <= (1e-6 if kind == "BOFT" else 0.0)


def test_ms_swift_tuners_validate_through_ms_swift_and_a_wrong_shape_is_caught(made, tmp_path: Path) -> None:
    reg, base, root, python = made
    bad = tmp_path / "adapter-bad"
    shutil.copytree(root / "ADAPTER", bad)
    tensors = load_file(str(bad / "default" / "adapter_model.safetensors"))
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros([*tensors[key].shape[:-1], tensors[key].shape[-1] + 3])
    save_file(tensors, str(bad / "default" / "adapter_model.safetensors"), metadata={"format": "pt"})
    reg.push(bad, "swift-made/adapter-bad", base_model="meta/tiny")  # push alone cannot see it: no grammar
    refs = [f"{repo(k)}@1" for k in (*PEFT_TYPES, *SWIFT_TUNERS)] + ["swift-made/adapter-bad@1"]
    outcomes = validate_revisions(reg, refs, swift=True)
    failed = {(o.revision, o.check): o.reason for o in outcomes if not o.passed}
    assert set(failed) == {("swift-made/adapter-bad@1", "swift_load")}, [(k, v[:3000]) for k, v in failed.items()]
    assert key in failed["swift-made/adapter-bad@1", "swift_load"] and "shape" in failed[
        "swift-made/adapter-bad@1", "swift_load"]
    swift_rows = {o.revision: o for o in outcomes if o.check == "swift_load"}
    for kind in SWIFT_TUNERS:
        row = swift_rows[f"{repo(kind)}@1"]
        assert any("checked by ms-swift" in n for n in row.metrics["notes"])
        if kind == "PROMPT":  # ms-swift 4.6's Prompt tuner cannot run a Llama forward here (attention mask sizes)
            assert any("its own forward fails" in n for n in row.metrics["notes"])
        else:
            assert row.metrics["comparisons"]["default"]["reference"]["l2"] > 0  # ms-swift's outputs recorded
    problems = swift_checks.check(bad, base, python=python)
    assert [p.where for p in problems] == [key] and "shape" in problems[0].message
