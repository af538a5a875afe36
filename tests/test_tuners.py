"""Every tuner type the installed peft can build for a causal LM: store, validate, serve, merge, combine, check.

Each type is built once per module by the real newest peft on a tiny Llama (tests/helpers/tuners.py), its
trainable parameters perturbed so the adapter changes the outputs, and pushed with its registered base.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import converters
from converters import peft_native
from converters.methods import tuners as table
from registry import ops
from registry.errors import InvalidCheckpointError, RegistryError
from registry.service import Registry
from registry.vllm_checks import check_vllm
from tests.helpers import tuners
from tests.helpers.models import build_base, load_base

pytestmark = pytest.mark.tuners

BUILT = tuners.buildable()
MERGEABLE = [t for t in BUILT if table.BY_NAME[t].mergeable]
UNMERGEABLE = [t for t in BUILT if not table.BY_NAME[t].mergeable]


def repo(peft_type: str) -> str:
    return f"tuners/{peft_type.lower().replace('_', '-')}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("tuners")
    base = build_base("llama", root / "base")
    reg = Registry(home=root / "home")
    reg.push_base(base, "meta/tiny", tag="v1")
    folders: dict[str, Path] = {}
    logits: dict[str, torch.Tensor] = {}
    for peft_type in BUILT:
        folders[peft_type] = root / peft_type
        logits[peft_type] = tuners.build(peft_type, base, folders[peft_type])
        reg.push(folders[peft_type], repo(peft_type), base_model="meta/tiny@v1")
    yield reg, base, folders, logits, root
    reg.close()


def test_the_table_holds_every_type_of_the_installed_peft_and_its_key_stems() -> None:
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    version, types = peft_native.installed()
    assert set(types) == set(table.BY_NAME), f"peft {version}: tuners.py must list exactly its types"
    for peft_type, prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        row = table.BY_NAME[str(peft_type.value)]
        if row.family != "prompt":  # prompt learning saves fixed names (prompt_embeddings)
            assert any(prefix.startswith(stem) for stem in row.stems), (row.name, prefix, row.stems)


def test_a_type_peft_does_not_know_is_refused_with_its_name_and_the_peft_version(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "HYPERLORA", "r": 4}))
    save_file({"base_model.model.x.hyper_A": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))
    report = converters.validate(folder)
    [error] = report.errors
    assert "'HYPERLORA'" in error.message and f"peft {peft_native.installed()[0]}" in error.message


@pytest.mark.parametrize("peft_type", BUILT)
def test_push_pull_and_the_real_peft_gives_the_original_logits(world, peft_type: str) -> None:
    reg, base, folders, logits, _ = world
    info = reg.show(repo(peft_type))
    assert info.meta["tuner_type"] == peft_type and info.base_model
    summary = info.meta["adapters"][0]
    assert summary["tensors"] > 0 and (summary["modules"] > 0) == (table.BY_NAME[peft_type].family != "prompt"
                                                                   and peft_type != "UNILORA")
    pulled = reg.resolve(repo(peft_type), "peft")
    got = tuners.peft_logits(peft_type, base, pulled)
    if peft_type == "CPT":  # peft's own reload of CPT differs from its in-memory model by float32 noise
        assert torch.equal(got, tuners.peft_logits(peft_type, base, folders[peft_type]))
        assert (got - logits[peft_type]).abs().max().item() < 1e-6
    else:
        assert (got - logits[peft_type]).abs().max().item() == 0.0
    with pytest.raises(converters.FormatError, match=r"PEFT form|PEFT format"):
        reg.resolve(repo(peft_type), "swift")
    assert converters.validate(pulled, base).ok


def _wrong_shape(folder: Path, out: Path) -> str:
    shutil.copytree(folder, out)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    key = sorted(tensors)[-1]
    shape = list(tensors[key].shape) or [1]
    shape[-1] += 1
    tensors[key] = torch.zeros(shape, dtype=tensors[key].dtype)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return key


@pytest.mark.parametrize("peft_type", BUILT)
def test_a_tensor_of_the_wrong_shape_is_refused_by_validate_and_push_naming_it(world, peft_type: str,
                                                                                tmp_path: Path) -> None:
    reg, base, folders, _, _ = world
    key = _wrong_shape(folders[peft_type], tmp_path / "bad")
    report = converters.validate(tmp_path / "bad", base)
    assert not report.ok and any(p.where == key and "shape" in p.message for p in report.errors), report.errors
    with pytest.raises(InvalidCheckpointError, match=key.replace(".", r"\.")):
        reg.push(tmp_path / "bad", repo(peft_type) + "-bad", base_model="meta/tiny@v1")


@pytest.mark.parametrize("peft_type", MERGEABLE)
def test_mergeable_types_merge_and_unmerge_by_lineage_bit_for_bit(world, peft_type: str, tmp_path: Path) -> None:
    reg, base, _, logits, _ = world
    merged = f"meta/tiny-{peft_type.lower().replace('_', '-')}"
    result = ops.merge(reg, repo(peft_type), "meta/tiny@v1", push=merged, device="cpu")
    assert result.passed and result.comparisons, result.comparisons
    model = load_base(reg.resolve(merged))
    ours = tuners.logits(model, peft_type)
    reference = logits[peft_type]
    assert ((ours - reference).norm() / reference.norm()).item() < 1e-5  # float32 tolerance (equivalence.py)
    back = ops.unmerge(reg, merged, repo(peft_type), output=tmp_path / "back", device="cpu")
    assert back.passed and any("bit for bit" in n for n in back.notes)
    original = load_file(str(reg.resolve("meta/tiny@v1") / "model.safetensors"))
    restored = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(original) == sorted(restored) and all(torch.equal(original[k], restored[k]) for k in original)


@pytest.mark.parametrize("peft_type", UNMERGEABLE)
def test_unmergeable_types_are_refused_in_one_line_naming_the_type(world, peft_type: str) -> None:
    reg = world[0]
    with pytest.raises(RegistryError) as caught:
        ops.merge(reg, repo(peft_type), "meta/tiny@v1", device="cpu")
    message = str(caught.value)
    assert peft_type in message and "cannot be merged" in message and "\n" not in message


def test_combining_types_other_than_lora_and_shira_is_refused_with_the_reason(world) -> None:
    reg = world[0]
    with pytest.raises(RegistryError, match=r"LOHA adapter: swiftreg combines LoRA-family"):
        ops.combine(reg, [repo("LOHA"), repo("LOHA")], [0.5, 0.5], "linear")


def test_vllm_refuses_every_non_lora_type_naming_it_and_saying_what_to_do(world) -> None:
    _, _, folders, _, _ = world
    loha = check_vllm(folders["LOHA"])
    assert not loha.ok and "'LOHA'" in str(loha.reasons[0]) and "serve the merged model" in loha.reasons[0].advice
    prompt = check_vllm(folders["PROMPT_TUNING"])
    assert not prompt.ok and "cannot be merged either" in prompt.reasons[0].advice


def test_validate_all_on_every_type_is_clean_and_names_a_flipped_tensor(world) -> None:
    from registry.jobs.revision_checks import validate_revisions

    reg = world[0]
    refs = [f"{repo(t)}@1" for t in BUILT]
    outcomes = validate_revisions(reg, refs, swift=False)
    failed = [(o.revision, o.check, o.reason) for o in outcomes if not o.passed]
    assert not failed, failed
    checks = {(o.revision, o.check) for o in outcomes}
    assert all((f"{repo(t)}@1", "peft_load") in checks for t in BUILT)
    merged_checks = [o for o in outcomes if o.check == "outputs" and o.metrics["comparisons"]]
    assert {o.revision for o in merged_checks} == {f"{repo(t)}@1" for t in MERGEABLE}
    digest = next(f["sha256"] for f in reg.show(repo("LOKR")).manifest["files"]
                  if f["path"] == "adapter_model.safetensors")
    blob = reg.store.path(digest)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-2] ^= 0x40  # float32 little-endian: the top mantissa bit of the last element; the header untouched
    blob.write_bytes(bytes(data))
    again = validate_revisions(reg, [f"{repo('LOKR')}@1", f"{repo('IA3')}@1"], swift=False)
    bad = [o for o in again if not o.passed]
    assert {o.revision for o in bad} == {f"{repo('LOKR')}@1"}
    assert any(o.check == "integrity" and "adapter_model.safetensors" in o.reason for o in bad)


def test_without_a_base_the_file_alone_is_checked_and_a_module_missing_a_tensor_is_named(world,
                                                                                         tmp_path: Path) -> None:
    _, _, folders, _, _ = world
    shutil.copytree(folders["LOHA"], tmp_path / "loha")
    tensors = load_file(str(tmp_path / "loha" / "adapter_model.safetensors"))
    dropped = next(k for k in sorted(tensors) if k.endswith("layers.1.self_attn.q_proj.hada_w2_b"))
    del tensors[dropped]
    save_file(tensors, str(tmp_path / "loha" / "adapter_model.safetensors"), metadata={"format": "pt"})
    report = converters.validate(tmp_path / "loha")
    [error] = report.errors
    assert error.where == "model.layers.1.self_attn.q_proj" and "hada_w2_b" in error.message
    clean = converters.validate(folders["LOHA"])
    assert clean.ok and any("shape check needs the base model" in p.message for p in clean.problems)


def _shira(base: Path, out: Path, seed: int) -> None:
    from peft import ShiraConfig, get_peft_model

    model = get_peft_model(load_base(base), ShiraConfig(r=2, target_modules=tuners.TARGETS, random_seed=seed))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(out)


def _dense_deltas(folder: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, values in tensors.items():
        if key.endswith(".shira_weight"):
            module = key[len("base_model.model."):-len(".shira_weight")]
            idx = tensors[key[:-len("weight")] + "indices"].long()
            dense = torch.zeros(shapes[module], dtype=torch.float64)
            dense.index_put_((idx[0], idx[1]), values.double(), accumulate=True)
            out[module] = dense
    return out


@pytest.mark.parametrize("with_base", [True, False])
def test_shira_fusion_is_a_shira_adapter_over_the_union_of_the_masks(world, tmp_path: Path, with_base: bool) -> None:
    from peft import PeftModel

    reg, base, _, _, root = world
    for i, seed in enumerate((11, 12)):
        if not (root / f"shira{i}").exists():
            _shira(base, root / f"shira{i}", seed)
            reg.push(root / f"shira{i}", f"tuners/shira-{i}", base_model="meta/tiny@v1")
    masks = [load_file(str(root / f"shira{i}" / "adapter_model.safetensors")) for i in range(2)]
    key = "base_model.model.model.layers.0.self_attn.q_proj.shira_indices"
    first, second = ({tuple(p) for p in m[key].T.tolist()} for m in masks)
    assert first & second and first != second  # overlapping masks, not the same one
    out = tmp_path / "fused"
    result = ops.combine(reg, ["tuners/shira-0", "tuners/shira-1"], [0.6, 0.4], "linear",
                         base_ref="meta/tiny@v1" if with_base else None, output=out, device="cpu")
    assert result.passed and any("union of the masks" in n for n in result.notes)
    fused = load_file(str(out / "adapter_model.safetensors"))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "SHIRA" and fused[key].dtype == torch.int32
    assert fused[key].shape[1] == config["r"] * (32 + 32)
    positions = [tuple(p) for p in fused[key].T.tolist()]
    assert (len(set(positions)) == len(positions)) == with_base  # free positions only when the shapes are known
    model = load_base(base)
    shapes = {name[:-len(".weight")]: tuple(p.shape) for name, p in model.named_parameters()}
    deltas = [_dense_deltas(root / f"shira{i}", shapes) for i in range(2)]
    params = dict(model.named_parameters())
    with torch.no_grad():
        for w, delta in zip((0.6, 0.4), deltas):
            for module, d in delta.items():
                params[f"{module}.weight"].add_((w * d).float())
    reference = tuners.logits(model, "SHIRA")
    ours = tuners.logits(PeftModel.from_pretrained(load_base(base), out).eval(), "SHIRA")
    assert ((ours - reference).norm() / reference.norm()).item() < 1e-5


def test_combining_shira_with_peft_semantics_or_another_method_is_refused(world) -> None:
    reg = world[0]
    with pytest.raises(RegistryError, match="no weighted combination for SHiRA"):
        ops.combine(reg, [repo("SHIRA"), repo("SHIRA")], [0.5, 0.5], "linear", semantics="peft")
    with pytest.raises(RegistryError, match="svd.*no meaning for a sparse delta"):
        ops.combine(reg, [repo("SHIRA"), repo("SHIRA")], [0.5, 0.5], "svd")


def test_ia3_adapters_combine_by_peft_s_own_weighted_sum(world, tmp_path: Path) -> None:
    reg, base, folders, _, root = world
    if not (root / "ia3-b").exists():
        tuners.build("IA3", base, root / "ia3-b", seed=7)
        reg.push(root / "ia3-b", "tuners/ia3-b", base_model="meta/tiny@v1")
    result = ops.combine(reg, [repo("IA3"), "tuners/ia3-b"], [0.7, 0.3], "linear", base_ref="meta/tiny@v1",
                         output=tmp_path / "ia3", device="cpu")
    assert result.passed and result.comparisons[0].max_abs == 0.0
    combined = load_file(str(tmp_path / "ia3" / "adapter_model.safetensors"))
    first = load_file(str(folders["IA3"] / "adapter_model.safetensors"))
    second = load_file(str(root / "ia3-b" / "adapter_model.safetensors"))
    assert sorted(combined) == sorted(first)
    assert all(torch.allclose(combined[k], 0.7 * first[k] + 0.3 * second[k]) for k in first)
    with pytest.raises(RegistryError, match="linear only"):
        ops.combine(reg, [repo("IA3"), "tuners/ia3-b"], [0.7, 0.3], "svd", base_ref="meta/tiny@v1")


def test_an_adapter_for_another_base_is_refused_by_validate_and_push(world, tmp_path: Path) -> None:
    reg, _, folders, _, _ = world
    gpt2 = build_base("gpt2", tmp_path / "gpt2")
    report = converters.validate(folders["LOHA"], gpt2)
    assert not report.ok and "another base model" in report.errors[0].message
    reg.push_base(gpt2, "openai/tiny-gpt2")
    with pytest.raises(InvalidCheckpointError, match="another base model"):
        reg.push(folders["LOHA"], "tuners/loha-on-gpt2", base_model="openai/tiny-gpt2")


def test_unmerge_by_lineage_returns_the_base_even_where_no_numerical_unmerge_exists(world, tmp_path: Path) -> None:
    from tests.helpers.models import make_peft_checkpoint

    reg, base, _, _, _ = world
    make_peft_checkpoint(base, tmp_path / "dora", {"default": dict(r=4, lora_alpha=8, use_dora=True,
                                                                   target_modules=tuners.TARGETS)}, seed=3)
    reg.push(tmp_path / "dora", "tuners/dora", base_model="meta/tiny@v1")
    ops.merge(reg, "tuners/dora", "meta/tiny@v1", push="meta/tiny-dora", device="cpu")
    back = ops.unmerge(reg, "meta/tiny-dora", "tuners/dora", output=tmp_path / "back", device="cpu")
    assert back.passed and any("DoRA cannot be unmerged" in n for n in back.notes)
    original = load_file(str(reg.resolve("meta/tiny@v1") / "model.safetensors"))
    restored = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert all(torch.equal(original[k], restored[k]) for k in original)
