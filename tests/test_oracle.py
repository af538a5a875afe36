"""The converters against the real ms-swift (its own environment) and the real newest peft (here).

Checkpoints are made by ms-swift's `Swift.prepare_model(...).save_pretrained` and by peft's own
`save_pretrained`, converted by swiftreg, then loaded by the other library; outputs must be equal
to the bit. All ms-swift work happens in two batched subprocesses: one that makes checkpoints,
one that loads what we converted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import converters
from converters.keys import PEFT_PREFIX
from converters.methods import GRAMMAR
from converters.safetensors_io import read_header
from registry.interop.swift_env import run_jobs
from tests.helpers.models import PROBE, build_base, forward, load_base, make_peft_checkpoint, peft_forward, read_tensors

pytestmark = pytest.mark.oracle

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class SwiftCase:
    base: str
    adapters: list[dict]
    safe_serialization: bool = True
    lora: bool = True
    embedding: bool = False  # ms-swift cannot reload embedding LoRA from Swift format


SWIFT_CASES: dict[str, SwiftCase] = {
    "llama_lora": SwiftCase("llama", [{"name": "default", "config": dict(
        r=8, lora_alpha=16, target_modules=LLAMA_ALL, lorap_lr_ratio=8.0, lorap_emb_lr=2e-6, lora_dtype="float32")}]),
    "llama_multi": SwiftCase("llama", [
        {"name": "default", "config": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           modules_to_save=["lm_head"])},
        {"name": "default2", "config": dict(r=2, lora_alpha=4, target_modules=["k_proj"], modules_to_save=["lm_head"])},
        {"name": "second", "config": dict(r=6, lora_alpha=3, target_modules=["o_proj", "down_proj"],
                                          modules_to_save=["lm_head"])},  # ms-swift fails on mixed modules_to_save
    ]),
    "llama_dora": SwiftCase("llama", [{"name": "default", "config": dict(
        r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])}]),
    "llama_rslora_patterns": SwiftCase("llama", [{"name": "default", "config": dict(
        r=8, lora_alpha=16, use_rslora=True, target_modules=LLAMA_ALL,
        rank_pattern={"q_proj": 4, r"layers\.1\.self_attn\.v_proj": 2}, alpha_pattern={"o_proj": 32})}]),
    "llama_modules_to_save_bin": SwiftCase("llama", [{"name": "default", "config": dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])}],
        safe_serialization=False),
    "llama_embedding": SwiftCase("llama", [{"name": "default", "config": dict(
        r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])}], embedding=True),
    "gpt2_conv1d_bias": SwiftCase("gpt2", [{"name": "default", "config": dict(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, bias="all")}]),
    "swift_adapter": SwiftCase("llama", [{"name": "default", "type": "ADAPTER", "config": dict(
        dim=32, target_modules=r"^model\.layers\.\d+\.mlp$", hidden_pos=0, adapter_length=8)}], lora=False),
    "swift_prompt": SwiftCase("llama", [{"name": "default", "type": "PROMPT", "config": dict(
        dim=32, target_modules=r"^model\.layers\.\d+$", embedding_pos=0, attention_mask_pos="attention_mask",
        prompt_length=4)}], lora=False),
    "swift_side": SwiftCase("llama", [{"name": "default", "type": "SIDE", "config": dict(
        dim=32, target_modules=r"^model$", side_module_name="mlp", source_hidden_pos=0,
        target_hidden_pos="last_hidden_state")}], lora=False),
}
LORA_SWIFT = [name for name, case in SWIFT_CASES.items() if case.lora]
NON_LORA_SWIFT = {"swift_adapter": "ADAPTER", "swift_prompt": "PROMPT", "swift_side": "SIDE"}


@dataclass
class PeftCase:
    base: str
    adapters: dict[str, dict]  # name -> LoraConfig kwargs
    embedding: bool = False


PEFT_CASES: dict[str, PeftCase] = {
    "peft_multi": PeftCase("llama", {
        "default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
        "second": dict(r=2, lora_alpha=6, target_modules=["k_proj", "o_proj", "gate_proj"]),
    }),
    "peft_dora": PeftCase("llama", {"default": dict(r=4, lora_alpha=8, use_dora=True, target_modules=LLAMA_ALL)}),
    "peft_rslora_patterns": PeftCase("llama", {"default": dict(
        r=8, lora_alpha=16, use_rslora=True, target_modules=LLAMA_ALL,
        rank_pattern={"k_proj": 2, r"layers\.0\.mlp\.up_proj": 3}, alpha_pattern={"down_proj": 5})}),
    "peft_gpt2": PeftCase("gpt2", {"default": dict(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)}),
    "peft_embedding": PeftCase("llama", {"default": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "v_proj"])},
                               embedding=True),
}


@dataclass
class World:
    root: Path
    bases: dict[str, Path]
    swift: dict[str, Path] = field(default_factory=dict)          # case -> Swift checkpoint
    swift_ref: dict[str, dict] = field(default_factory=dict)      # case -> {adapter: logits, __base__: logits}
    swift_peer: dict[str, dict] = field(default_factory=dict)     # case -> make-job result
    s2p: dict[str, Path] = field(default_factory=dict)            # Swift -> PEFT (ours)
    s2p2s: dict[str, Path] = field(default_factory=dict)          # Swift -> PEFT -> Swift
    s2p_notices: dict[str, tuple] = field(default_factory=dict)
    peft: dict[str, Path] = field(default_factory=dict)           # PEFT checkpoints made by peft
    peft_ref: dict[str, dict] = field(default_factory=dict)
    p2s: dict[str, Path] = field(default_factory=dict)            # PEFT -> Swift (ours)
    p2s_notices: dict[str, tuple] = field(default_factory=dict)
    p2s2p: dict[str, Path] = field(default_factory=dict)
    swift_loaded: dict[str, dict] = field(default_factory=dict)   # ms-swift's logits for our Swift outputs
    load_results: dict[str, dict] = field(default_factory=dict)


def _make_peft(case: PeftCase, base: Path, out: Path, seed: int) -> dict[str, torch.Tensor]:
    names = make_peft_checkpoint(base, out, case.adapters, seed)
    return {name: peft_forward(base, out if name == "default" else out / name, name) for name in names}


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, swift_python: str) -> World:
    root = tmp_path_factory.mktemp("oracle")
    w = World(root, {kind: build_base(kind, root / f"base_{kind}") for kind in ("llama", "gpt2")})
    # 1. ms-swift makes its checkpoints (one process).
    jobs = []
    for i, (name, case) in enumerate(SWIFT_CASES.items()):
        w.swift[name] = root / "swift" / name
        jobs.append({"op": "make", "id": name, "base": str(w.bases[case.base]), "adapters": case.adapters,
                     "seed": 100 + i, "out": str(w.swift[name]), "safe_serialization": case.safe_serialization,
                     "probe": PROBE if case.lora else None, "outputs": str(root / "swift" / f"{name}.out.safetensors"),
                     "save_to_peft": str(root / "swift_peer" / name) if case.lora else None})
    for result in run_jobs(jobs):
        assert result["ok"], f"ms-swift could not make {result['id']}: {result.get('traceback')}"
        w.swift_peer[result["id"]] = result
        if SWIFT_CASES[result["id"]].lora:
            w.swift_ref[result["id"]] = read_tensors(root / "swift" / f"{result['id']}.out.safetensors")
    # 2. Our conversions, and PEFT's own checkpoints.
    for name in LORA_SWIFT:
        done = converters.convert(w.swift[name], root / "s2p" / name, "peft")
        w.s2p[name], w.s2p_notices[name] = done.destination, done.notices
        w.s2p2s[name] = converters.convert(w.s2p[name], root / "s2p2s" / name, "swift").destination
    for i, (name, case) in enumerate(PEFT_CASES.items()):
        w.peft[name] = root / "peft" / name
        w.peft_ref[name] = _make_peft(case, w.bases[case.base], w.peft[name], seed=200 + 10 * i)
        done = converters.convert(w.peft[name], root / "p2s" / name, "swift")
        w.p2s[name], w.p2s_notices[name] = done.destination, done.notices
        w.p2s2p[name] = converters.convert(w.p2s[name], root / "p2s2p" / name, "peft").destination
    # 3. ms-swift loads what we wrote in Swift format (one process).
    load_jobs = []
    for kind, cases, outputs in (("s2p2s", SWIFT_CASES, w.s2p2s), ("p2s", PEFT_CASES, w.p2s)):
        for name, folder in outputs.items():
            load_jobs.append({"op": "load", "id": f"{kind}:{name}", "base": str(w.bases[cases[name].base]),
                              "checkpoint": str(folder), "probe": PROBE,
                              "outputs": str(root / "loaded" / f"{kind}-{name}.safetensors")})
    (root / "loaded").mkdir()
    for result in run_jobs(load_jobs):
        assert result["ok"], f"ms-swift could not load {result['id']}: {result.get('traceback')}"
        w.load_results[result["id"]] = result
        kind, name = result["id"].split(":")
        w.swift_loaded[result["id"]] = read_tensors(root / "loaded" / f"{kind}-{name}.safetensors")
    return w


def _adapter_names(case: SwiftCase) -> list[str]:
    return [a["name"] for a in case.adapters]


def _peft_folder(root: Path, name: str) -> Path:
    return root if name == "default" else root / name


def _swift_tensor_file(folder: Path) -> Path:
    return next(p for p in (folder / "adapter_model.safetensors", folder / "adapter_model.bin") if p.exists())


def _load_any(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".bin":
        return torch.load(path, map_location="cpu", weights_only=True)
    return read_tensors(path)


def _raw_bytes(path: Path) -> dict[str, tuple[str, tuple, bytes]]:
    """key -> (dtype, shape, raw bytes): the strictest notion of 'the same tensor'."""
    header = read_header(path)
    data = path.read_bytes()
    return {t.name: (t.dtype, t.shape, data[header.data_start + t.begin: header.data_start + t.end])
            for t in header.tensors}


def _configs_equivalent(a: dict, b: dict) -> bool:
    def norm(c: dict) -> dict:
        c = dict(c)
        if isinstance(c.get("target_modules"), list):
            c["target_modules"] = sorted(c["target_modules"])
        return c
    return norm(a) == norm(b)


# --- Swift -> PEFT ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", LORA_SWIFT)
def test_swift_to_peft_gives_identical_logits_in_newest_peft(world: World, case: str) -> None:
    ref = world.swift_ref[case]
    for name in _adapter_names(SWIFT_CASES[case]):
        assert (ref[name] - ref["__base__"]).abs().max() > 1e-3, "the adapter must change the output"
        ours = peft_forward(world.bases[SWIFT_CASES[case].base], _peft_folder(world.s2p[case], name), name)
        assert torch.equal(ours, ref[name]), f"{case}/{name}: max abs diff {(ours - ref[name]).abs().max()}"


@pytest.mark.parametrize("case", LORA_SWIFT)
def test_swift_to_peft_keys_are_what_peft_itself_saves(world: World, case: str) -> None:
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    base = world.bases[SWIFT_CASES[case].base]
    for name in _adapter_names(SWIFT_CASES[case]):
        folder = _peft_folder(world.s2p[case], name)
        model = PeftModel.from_pretrained(load_base(base), folder, adapter_name=name)
        expected = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
        ours = read_tensors(folder / "adapter_model.safetensors")
        assert sorted(ours) == sorted(expected)
        for key, value in expected.items():
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def _canonical_peer_key(key: str, adapter: str) -> str | None:
    """ms-swift's save_to_peft_format keys under the canonical names (its defects undone)."""
    parts = key.split(".")
    if parts[-2:-1] and parts[-2] in ("lora_embedding_A", "lora_embedding_B") and parts[-1] == adapter:
        return ".".join(parts[:-1])  # it never strips the name from embedding keys
    if key.endswith(".lora_magnitude_vector.weight"):
        return key[: -len(".weight")]
    tail = GRAMMAR.parse_swift(key[len(PEFT_PREFIX):])
    if tail.adapter is not None and tail.adapter != adapter:
        return None  # a key leaked from another adapter
    return key


@pytest.mark.parametrize("case", LORA_SWIFT)
def test_swift_to_peft_matches_ms_swift_save_to_peft_format(world: World, case: str) -> None:
    peer_status = world.swift_peer[case]["save_to_peft"]
    names = _adapter_names(SWIFT_CASES[case])
    if not SWIFT_CASES[case].safe_serialization:
        # ms-swift refuses its own .bin checkpoints; compare with the .bin's tensors instead.
        assert "NotImplementedError" in peer_status, peer_status
        for name in names:
            source = _load_any(world.swift[case] / name / "adapter_model.bin")
            ours = read_tensors(_peft_folder(world.s2p[case], name) / "adapter_model.safetensors")
            assert len(ours) == len(source)
            for key, value in ours.items():
                match = [v for k, v in source.items() if k.replace(f".{name}.", ".").endswith(
                    key[len(PEFT_PREFIX):].replace(".lora_magnitude_vector", ".lora_magnitude_vector.weight"))]
                assert len(match) == 1 and torch.equal(match[0], value), key
        return
    assert peer_status == "ok", peer_status
    peer_root = world.root / "swift_peer" / case
    for name in names:
        peer = read_tensors(_peft_folder(peer_root, name) / "adapter_model.safetensors")
        peer = {ck: v for k, v in peer.items() if (ck := _canonical_peer_key(k, name)) is not None}
        ours = read_tensors(_peft_folder(world.s2p[case], name) / "adapter_model.safetensors")
        assert sorted(ours) == sorted(peer)
        for key in ours:
            assert ours[key].dtype == peer[key].dtype and torch.equal(ours[key], peer[key]), key


def test_swift_to_peft_keeps_the_default_adapters_lora_plus_settings(world: World) -> None:
    sidecar = json.loads((world.s2p["llama_lora"] / "additional_config.json").read_text())
    assert sidecar["lorap_lr_ratio"] == 8.0 and sidecar["lorap_emb_lr"] == 2e-6 and sidecar["lora_dtype"] == "float32"
    config = json.loads((world.s2p["llama_lora"] / "adapter_config.json").read_text())
    assert "swift_type" not in config and "lorap_lr_ratio" not in config and config["peft_type"] == "LORA"


def test_swift_to_peft_leaves_out_keys_leaked_from_prefix_named_adapters(world: World) -> None:
    source_keys = read_tensors(world.swift["llama_multi"] / "default" / "adapter_model.safetensors")
    assert any(".default2." in k for k in source_keys), "ms-swift 4.6 leaks default2's keys into default/"
    ours = read_tensors(world.s2p["llama_multi"] / "adapter_model.safetensors")
    assert not any("default2" in k or "modules_to_save" in k for k in ours)
    assert any("left out" in n for n in world.s2p_notices["llama_multi"])


# --- Round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", LORA_SWIFT)
def test_swift_peft_swift_round_trip_is_bit_identical(world: World, case: str) -> None:
    for name in _adapter_names(SWIFT_CASES[case]):
        source_file = _swift_tensor_file(world.swift[case] / name)
        back_file = world.s2p2s[case] / name / "adapter_model.safetensors"
        if source_file.suffix == ".bin":
            source = _load_any(source_file)
            back = read_tensors(back_file)
            assert sorted(back) == sorted(source)
            assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in source.items())
        else:
            source_raw = {k: v for k, v in _raw_bytes(source_file).items()
                          if GRAMMAR.parse_swift(k).adapter in (None, name)}
            assert _raw_bytes(back_file) == source_raw
        original = json.loads((world.swift[case] / name / "adapter_config.json").read_text())
        back_config = json.loads((world.s2p2s[case] / name / "adapter_config.json").read_text())
        assert _configs_equivalent(original, back_config)


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_swift_peft_round_trip_is_bit_identical(world: World, case: str) -> None:
    for name in PEFT_CASES[case].adapters:
        original = _peft_folder(world.peft[case], name)
        back = _peft_folder(world.p2s2p[case], name)
        assert _raw_bytes(back / "adapter_model.safetensors") == _raw_bytes(original / "adapter_model.safetensors")
        assert _configs_equivalent(json.loads((original / "adapter_config.json").read_text()),
                                   json.loads((back / "adapter_config.json").read_text()))


# --- ms-swift loads what we write --------------------------------------------------------------

@pytest.mark.parametrize("case", LORA_SWIFT)
def test_swift_round_trip_loads_in_ms_swift_with_identical_logits(world: World, case: str) -> None:
    loaded = world.swift_loaded[f"s2p2s:{case}"]
    assert world.load_results[f"s2p2s:{case}"]["kind"] == ["SwiftModel"], "must load through the Swift path"
    for name in _adapter_names(SWIFT_CASES[case]):
        if SWIFT_CASES[case].embedding:
            # ms-swift cannot reload embedding LoRA from Swift format at all (FORMATS.md); ours says so.
            assert any("embedding LoRA" in n for n in converters.plan(
                converters.detect(world.s2p[case]), "swift").notices)
            continue
        assert torch.equal(loaded[name], world.swift_ref[case][name]), \
            f"{case}/{name}: max abs diff {(loaded[name] - world.swift_ref[case][name]).abs().max()}"


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_to_swift_loads_in_ms_swift_with_identical_logits(world: World, case: str) -> None:
    assert world.load_results[f"p2s:{case}"]["kind"] == ["SwiftModel"], "must load through the Swift path"
    loaded = world.swift_loaded[f"p2s:{case}"]
    base_logits = forward(load_base(world.bases[PEFT_CASES[case].base]))
    for name in PEFT_CASES[case].adapters:
        assert (world.peft_ref[case][name] - base_logits).abs().max() > 1e-3, "the adapter must change the output"
        if PEFT_CASES[case].embedding:
            assert any("embedding LoRA" in n for n in world.p2s_notices[case])
            continue
        ref = world.peft_ref[case][name]
        assert torch.equal(loaded[name], ref), f"{case}/{name}: max abs diff {(loaded[name] - ref).abs().max()}"


def test_peft_to_swift_writes_every_adapter_in_its_own_folder(world: World) -> None:
    out = world.p2s["peft_multi"]
    assert not (out / "adapter_config.json").exists(), "a root config would make ms-swift take the PEFT path"
    assert (out / "configuration.json").read_text() == "{}"
    for name in ("default", "second"):
        config = json.loads((out / name / "adapter_config.json").read_text())
        assert config["swift_type"] == "LORA" and config["peft_type"] == "LORA"
        keys = read_tensors(out / name / "adapter_model.safetensors")
        assert all(not k.startswith(PEFT_PREFIX) for k in keys)
        assert all(f".{name}" in k for k in keys if "lora_" in k)


# --- Refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(NON_LORA_SWIFT))
def test_non_lora_swift_tuners_are_refused_with_their_type(world: World, case: str, tmp_path: Path) -> None:
    assert converters.detect(world.swift[case]).adapters[0].tuner_type == NON_LORA_SWIFT[case]
    with pytest.raises(converters.UnsupportedTunerError, match=f"Swift {NON_LORA_SWIFT[case]} tuner"):
        converters.convert(world.swift[case], tmp_path / "out", "peft")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []
