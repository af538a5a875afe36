"""Weighted combination (registry/tensors/combine.py) against the real peft and float64 references.

Sources are made by the real peft on a tiny seeded Llama (tests/models.py) and randomised.

Tolerances (relative Frobenius error of B @ A products unless said otherwise):
- peft semantics vs peft's own add_weighted_adapter: the same float32 ops in the same order on the
  same kernels (tests run single-threaded), so factors are compared for equality (cat, linear,
  ties, dare_*, magnitude_prune) and products to 1e-6 for the SVD family (its factors are only
  defined up to sign).
- exact semantics, float32, vs a float64 reference: 1e-5 when nothing is truncated (observed
  <= 8e-7: float32 rounding of the QR/SVD route and the products); 1e-4 against a float64
  truncated SVD (observed <= 7e-6: rounding amplified by the inverse spectral gap at the cut,
  largest for the full-rank pruned deltas); precision="float64" on float64 sources: 1e-12
  (observed <= 2e-15).
- logits of a reloaded result vs base + intended delta: 1e-5 absolute (float32 forward).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from registry.tensors.adapter_io import adapter_state_dict, save_adapter
from registry.tensors.adapter_tensors import AdapterTensors, load_adapter, module_scaling
from registry.tensors.combine import METHODS, SVD_METHODS, combine, lowrank_svd, module_seed, quantile
from registry.tensors.errors import AdapterError, CombineError
from tests.helpers.models import build_base, forward, load_base, make_peft_checkpoint

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"]
WEIGHTS = [0.7, -0.4]
DENSITY = 0.5
SEED = 11


def kwargs_for(method: str) -> dict:
    kw: dict = {}
    if method not in ("cat", "linear", "svd"):
        kw["density"] = DENSITY
    if "dare" in method:
        kw["seed"] = SEED
    return kw


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory, llama_base: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("combine")
    made = {}

    def make(name: str, adapters: dict, seed: int = 0, base: Path = llama_base) -> None:
        make_peft_checkpoint(base, root / name, adapters, seed=seed)
        made[name] = root / name

    # b leaves out o_proj and down_proj: those modules have one source only
    make("pair", {"default": dict(r=4, lora_alpha=8, target_modules=ALL),
                  "b": dict(r=4, lora_alpha=12, target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj",
                                                                "embed_tokens"])})
    make("rs", {"default": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=ALL[:7],
                                rank_pattern={"q_proj": 8}, alpha_pattern={"v_proj": 3}),
                "b": dict(r=6, lora_alpha=6, target_modules=ALL[:7], rank_pattern={"down_proj": 2})}, seed=5)
    # equal largest ranks (8) but different per-module ranks: v_proj 4 vs 8
    make("pattern", {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                     rank_pattern={"q_proj": 8}),
                     "b": dict(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])}, seed=7)
    make("unequal", {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                     "b": dict(r=6, lora_alpha=8, target_modules=["q_proj", "v_proj"])}, seed=9)
    make("bias", {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_bias=True),
                  "b": dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_bias=True)}, seed=13)
    make("dora", {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True),
                  "b": dict(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)}, seed=15)
    gpt2 = build_base("gpt2", root / "gpt2_base")
    make("gpt2", {"default": dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
                  "b": dict(r=4, lora_alpha=16, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)},
         seed=17, base=gpt2)
    made["gpt2_base"] = gpt2
    made["llama_base"] = llama_base
    return made


def sources(folder: Path) -> list[AdapterTensors]:
    return [load_adapter(folder), load_adapter(folder / "b")]


def peft_combined(base: Path, folder: Path, weights: list[float], method: str, seed: int | None = None,
                  **kw):
    """The real PeftModel.add_weighted_adapter, adapter "c"; DARE masks seeded per module as documented."""
    from peft import PeftModel
    from peft.tuners.lora.model import LoraModel

    model = PeftModel.from_pretrained(load_base(base), folder)
    model.load_adapter(folder / "b", adapter_name="b")
    names = {id(m): n for n, m in model.base_model.model.named_modules()}
    factor, svd = (LoraModel._generalized_task_arithmetic_weighted_adapter,
                   LoraModel._svd_generalized_task_arithmetic_weighted_adapter)

    def seeded_factor(self, ctype, adapters, ws, target, *a, **k):
        torch.manual_seed(module_seed(seed, names[id(target)]))
        return factor(self, ctype, adapters, ws, target, *a, **k)

    def seeded_svd(self, ctype, adapters, ws, new_rank, target, *a, **k):
        torch.manual_seed(module_seed(seed, names[id(target)]))
        return svd(self, ctype, adapters, ws, new_rank, target, *a, **k)

    mp = pytest.MonkeyPatch()
    if seed is not None:
        mp.setattr(LoraModel, "_generalized_task_arithmetic_weighted_adapter", seeded_factor)
        mp.setattr(LoraModel, "_svd_generalized_task_arithmetic_weighted_adapter", seeded_svd)
    try:
        model.add_weighted_adapter(["default", "b"], weights, "c", combination_type=method, **kw)
    finally:
        mp.undo()
    return model


def peft_factors(model, module: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    layer = model.base_model.model.get_submodule(module)
    if "c" in layer.lora_A:
        return layer.lora_B["c"].weight.detach(), layer.lora_A["c"].weight.detach(), layer.scaling["c"]
    return layer.lora_embedding_B["c"].detach(), layer.lora_embedding_A["c"].detach(), layer.scaling["c"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


def intended(srcs: list[AdapterTensors], weights: list[float], *, squared_scaling: bool = False) -> dict:
    """float64 sum_i w_i s_i B_i A_i per module (B @ A layout)."""
    out: dict[str, torch.Tensor] = {}
    for w, src in zip(weights, srcs):
        for m, e in src.modules.items():
            s = e.scaling ** 2 if squared_scaling else e.scaling
            d = w * s * (e.B.double() @ e.A.double())
            out[m] = out[m] + d if m in out else d
    return out


def total_rel(products: dict, reference: dict) -> float:
    diff = sum(float((products[m] - reference[m]).norm() ** 2) for m in reference)
    return math.sqrt(diff / sum(float(r.norm() ** 2) for r in reference.values()))


def effective(result) -> dict[str, torch.Tensor]:
    return {m: e.scaling * (e.B.double() @ e.A.double()) for m, e in result.adapter.modules.items()}


# ------------------------------------------------------------------------------ peft semantics


@pytest.mark.parametrize("method", METHODS)
def test_peft_semantics_equals_add_weighted_adapter(ckpts, method):
    srcs = sources(ckpts["pair"])
    kw = kwargs_for(method)
    ours = combine(srcs, WEIGHTS, method, semantics="peft", device="cpu", **kw)
    seed = kw.pop("seed", None)
    model = peft_combined(ckpts["llama_base"], ckpts["pair"], WEIGHTS, method, seed=seed, **kw)
    assert ours.rank == model.peft_config["c"].r
    for module, entry in ours.adapter.modules.items():
        B, A, scaling = peft_factors(model, module)
        assert entry.scaling == scaling
        if method in SVD_METHODS:  # factors are defined up to sign: compare products
            assert rel(entry.B @ entry.A, B @ A) < 1e-6, module
        else:
            assert torch.equal(entry.A, A) and torch.equal(entry.B, B), module
    # the note's figure is the relative error of what PEFT applies vs the intended delta
    reference = intended(srcs, WEIGHTS)
    x = total_rel(effective(ours), reference)
    assert ours.relative_error == pytest.approx(x, rel=1e-6, abs=1e-7)
    assert any(f"relative error {ours.relative_error:.3g}" in n for n in ours.notes)
    if method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):
        assert any("cross terms B_i A_j" in n for n in ours.notes)
    if method == "linear":
        assert x > 0.5  # cross terms: far from the intended delta
    if method == "cat":
        assert x < 1e-6


@pytest.mark.parametrize("method", ["svd", "dare_ties_svd", "linear", "ties"])
def test_peft_semantics_fan_in_fan_out(ckpts, method):
    """GPT-2 Conv1D layers: PEFT prunes in the transposed (in, out) layout; masks must match there."""
    srcs = sources(ckpts["gpt2"])
    assert all(e.fan_in_fan_out for s in srcs for e in s.modules.values())
    kw = kwargs_for(method)
    ours = combine(srcs, WEIGHTS, method, semantics="peft", device="cpu", **kw)
    seed = kw.pop("seed", None)
    model = peft_combined(ckpts["gpt2_base"], ckpts["gpt2"], WEIGHTS, method, seed=seed, **kw)
    for module, entry in ours.adapter.modules.items():
        B, A, _ = peft_factors(model, module)
        assert rel(entry.B @ entry.A, B @ A) < 1e-6, module


@pytest.mark.parametrize("method", ["svd", "cat"])
def test_peft_semantics_inherits_rslora_over_scaling(ckpts, method, tmp_path):
    """PEFT keeps the first source's use_rslora: its result is over-scaled by sqrt(new rank); so is ours,
    and saved, it loads into the real peft with the same forward as PEFT's in-memory result."""
    srcs = sources(ckpts["rs"])
    ours = combine(srcs, WEIGHTS, method, semantics="peft", device="cpu")
    model = peft_combined(ckpts["llama_base"], ckpts["rs"], WEIGHTS, method)
    r = model.peft_config["c"].r
    assert ours.adapter.config["use_rslora"] is True and ours.rank == r
    for module, entry in ours.adapter.modules.items():
        B, A, scaling = peft_factors(model, module)
        assert scaling == pytest.approx(r / math.sqrt(r)) and entry.scaling == scaling
        assert rel(entry.B @ entry.A, B @ A) < 1e-6
    assert ours.relative_error > 1.0
    assert any("use_rslora" in n and "3449" in n for n in ours.notes)
    model.set_adapter("c")
    expected = forward(model.eval())
    save_adapter(ours.adapter, tmp_path / "c")
    from tests.helpers.models import peft_forward
    assert (peft_forward(ckpts["llama_base"], tmp_path / "c") - expected).abs().max() < 1e-5


def test_peft_semantics_rank_pattern_result_reloads(ckpts, tmp_path):
    """linear of rank_pattern sources: PEFT's own result says r=8 for a rank-4 module (cannot be
    reloaded, peft issue 3737); ours carries patterns so it reloads with PEFT's in-memory forward."""
    from peft import PeftModel

    srcs = [load_adapter(ckpts["rs"]), load_adapter(ckpts["rs"] / "b")]
    with pytest.raises(CombineError, match=r"equal ranks.*\[8, 6\]"):
        combine(srcs, WEIGHTS, "linear", semantics="peft")
    srcs = sources(ckpts["pattern"])
    with pytest.raises(CombineError, match=r"model\.layers\.0\.self_attn\.v_proj has rank 4 in source 0, rank 8"):
        combine(srcs, WEIGHTS, "linear", semantics="peft")
    # same ranks per module: v_proj 4 in both, q_proj 8 in both
    (tmp_path / "src").mkdir()
    make_peft_checkpoint(ckpts["llama_base"], tmp_path / "src",
                         {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          rank_pattern={"q_proj": 8}),
                          "b": dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                    rank_pattern={"q_proj": 8})}, seed=3)
    ours = combine(sources(tmp_path / "src"), WEIGHTS, "linear", semantics="peft")
    model = peft_combined(ckpts["llama_base"], tmp_path / "src", WEIGHTS, "linear")
    assert model.peft_config["c"].r == 8 and model.peft_config["c"].rank_pattern == {}
    for module, entry in ours.adapter.modules.items():
        B, A, _ = peft_factors(model, module)
        assert torch.equal(entry.A, A) and torch.equal(entry.B, B)
    assert any("3737" in n for n in ours.notes)
    model.set_adapter("c")
    expected = forward(model.eval())
    save_adapter(ours.adapter, tmp_path / "c")
    loaded = PeftModel.from_pretrained(load_base(ckpts["llama_base"]), tmp_path / "c")
    assert (forward(loaded.eval()) - expected).abs().max() < 1e-5


def test_peft_before_0_21_scales_svd_twice(ckpts):
    srcs = sources(ckpts["pair"])
    ours = combine(srcs, WEIGHTS, "svd", semantics="peft", rank=8, peft_version="0.20.1")
    reference = intended(srcs, WEIGHTS, squared_scaling=True)
    assert total_rel(effective(ours), reference) < 1e-5
    assert any("scaling twice" in n for n in ours.notes)
    assert ours.relative_error > 0.5  # vs the single-scaled intended delta


def test_peft_semantics_clamp_matches(ckpts):
    srcs = sources(ckpts["pair"])
    ours = combine(srcs, WEIGHTS, "svd", semantics="peft", svd_clamp=0.9)
    model = peft_combined(ckpts["llama_base"], ckpts["pair"], WEIGHTS, "svd", svd_clamp=0.9)
    for module, entry in ours.adapter.modules.items():
        B, A, _ = peft_factors(model, module)
        assert rel(entry.B @ entry.A, B @ A) < 1e-6


# ----------------------------------------------------------------------------- exact semantics


def pruned_reference(srcs, weights, method: str, seed: int) -> dict[str, torch.Tensor]:
    """float64 intended-then-pruned delta per module (B @ A layout): peft's own merge_utils for the
    deterministic methods; DARE with masks drawn from float32 probabilities, seeded per module."""
    from peft.utils import merge_utils

    kind = method.removesuffix("_svd")
    out = {}
    modules = dict.fromkeys(m for s in srcs for m in s.modules)
    for module in modules:
        pairs = [(w, s.modules[module]) for w, s in zip(weights, srcs) if module in s.modules]
        layout = [(e.B.double() @ e.A.double()).T * e.scaling if (e.fan_in_fan_out or e.kind == "embedding")
                  else (e.B.double() @ e.A.double()) * e.scaling for _, e in pairs]
        w = torch.tensor([w for w, _ in pairs], dtype=torch.float64)
        if kind in ("svd", "linear"):
            merged = merge_utils.task_arithmetic(layout, w)
        elif kind == "ties":
            merged = merge_utils.ties(layout, w, DENSITY, "total")
        elif kind == "magnitude_prune":
            merged = merge_utils.magnitude_prune(layout, w, DENSITY)
        else:
            g = torch.Generator().manual_seed(module_seed(seed, module))
            kept = [t * torch.bernoulli(torch.full(tuple(t.shape), DENSITY), generator=g).double() / DENSITY
                    for t in layout]
            stacked = torch.stack(kept)
            if kind == "dare_linear":
                merged = (stacked * w[:, None, None]).sum(0)
            else:
                mask = merge_utils.calculate_majority_sign_mask(stacked, "total")
                merged = merge_utils.disjoint_merge(stacked * w[:, None, None], mask)
        e = pairs[0][1]
        out[module] = merged.T if (e.fan_in_fan_out or e.kind == "embedding") else merged
    return out


def to_double(adapter: AdapterTensors) -> AdapterTensors:
    import copy

    out = copy.deepcopy(adapter)
    for e in out.modules.values():
        e.A, e.B = e.A.double(), e.B.double()
    return out


def truncate(d: torch.Tensor, k: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(d, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


@pytest.mark.parametrize("method", METHODS)
def test_exact_semantics_against_float64_reference(ckpts, method):
    srcs = sources(ckpts["pair"])
    kw = kwargs_for(method)
    seed = kw.get("seed", 0)
    reference = (intended(srcs, WEIGHTS) if method in ("cat", "svd", "linear")
                 else pruned_reference(srcs, WEIGHTS, method, seed))
    # rank 128 >= every module's rank: nothing is truncated
    full = combine(srcs, WEIGHTS, method, rank=128, device="cpu", **kw)
    assert full.adapter.config["use_rslora"] is False
    assert all(module_scaling(full.adapter.config, m)[2] == 1.0 for m in full.adapter.modules)
    assert total_rel(effective(full), reference) < 1e-5
    assert full.method_error < 1e-5
    if method == "cat":
        return
    # default rank (the largest source rank, 4): the best rank-4 approximation of the reference
    cut = combine(srcs, WEIGHTS, method, device="cpu", **kw)
    assert cut.rank == 4 and all(e.r == 4 for e in cut.adapter.modules.values())
    truncated = {m: truncate(d, 4) for m, d in reference.items()}
    assert total_rel(effective(cut), truncated) < 1e-4
    assert cut.method_error == pytest.approx(total_rel(truncated, reference), rel=1e-3)
    # precision float64 (on float64 sources, so that storage does not round either)
    f64 = combine([to_double(s) for s in srcs], WEIGHTS, method, rank=128, precision="float64", **kw)
    assert f64.method_error < 1e-12 and total_rel(effective(f64), reference) < 1e-12
    if method.endswith("_svd"):  # plain and _svd variants are one operation in exact semantics
        plain = combine(srcs, WEIGHTS, method.removesuffix("_svd"), **kw)
        for m, e in cut.adapter.modules.items():
            assert torch.equal(e.A, plain.adapter.modules[m].A) and torch.equal(e.B, plain.adapter.modules[m].B)


def test_exact_linear_is_svd(ckpts):
    srcs = sources(ckpts["pair"])
    a, b = combine(srcs, WEIGHTS, "linear"), combine(srcs, WEIGHTS, "svd")
    for m, e in a.adapter.modules.items():
        assert torch.equal(e.A, b.adapter.modules[m].A) and torch.equal(e.B, b.adapter.modules[m].B)
    assert any("linear in exact semantics is svd" in n for n in a.notes)


def test_exact_fan_in_fan_out(ckpts):
    srcs = sources(ckpts["gpt2"])
    for method in ("svd", "dare_ties"):
        kw = kwargs_for(method)
        reference = (intended(srcs, WEIGHTS) if method == "svd"
                     else pruned_reference(srcs, WEIGHTS, method, kw["seed"]))
        result = combine(srcs, WEIGHTS, method, rank=256, **kw)
        assert total_rel(effective(result), reference) < 1e-5
        assert all(e.fan_in_fan_out for e in result.adapter.modules.values())


@pytest.mark.parametrize("method", ["cat", "svd"])
def test_exact_rslora_and_rank_pattern_reload(ckpts, method, tmp_path):
    """rsLoRA and rank/alpha-pattern sources combined exactly; the result reloads in the real peft
    and its forward equals base + intended delta."""
    from peft import PeftModel

    srcs = sources(ckpts["rs"])
    assert srcs[0].modules["model.layers.0.self_attn.q_proj"].r == 8
    assert srcs[0].modules["model.layers.0.self_attn.v_proj"].scaling == pytest.approx(3 / 2)
    result = combine(srcs, WEIGHTS, method, rank=16 if method == "svd" else None)
    config = result.adapter.config
    assert config["use_rslora"] is False
    if method == "cat":  # ranks differ per module: 8+6 for q_proj, 4+2 for down_proj, 4+6 elsewhere
        ranks = {m: e.r for m, e in result.adapter.modules.items()}
        assert ranks["model.layers.1.self_attn.q_proj"] == 14 and ranks["model.layers.0.mlp.down_proj"] == 6
        assert config["r"] == 10 and set(config["rank_pattern"].values()) == {14, 6}
        assert config["alpha_pattern"] == config["rank_pattern"]
    else:
        assert config["r"] == 16 and config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    for m in result.adapter.modules:
        assert module_scaling(config, m)[2] == 1.0
    assert result.relative_error < 1e-5
    save_adapter(result.adapter, tmp_path / "out")
    loaded = load_adapter(tmp_path / "out")
    assert {m: e.r for m, e in loaded.modules.items()} == {m: e.r for m, e in result.adapter.modules.items()}
    model = PeftModel.from_pretrained(load_base(ckpts["llama_base"]), tmp_path / "out")
    ours = forward(model.eval())
    base = load_base(ckpts["llama_base"])
    with torch.no_grad():
        for module, delta in intended(srcs, WEIGHTS).items():
            weight = base.get_submodule(module).weight
            weight.copy_((weight.double() + delta).float())
    assert (ours - forward(base)).abs().max() < 1e-5


def test_qr_core_svd_equals_dense_svd():
    g = torch.Generator().manual_seed(0)
    m, n, R = 300, 200, 24
    B = torch.randn(m, R, generator=g) * torch.logspace(0, -2, R)
    A = torch.randn(R, n, generator=g)
    dense = B.double() @ A.double()
    for k in (6, 12, 24, 40):
        Bk, Ak, S = lowrank_svd(B, A, k)
        assert Bk.shape == (m, min(k, R)) and Ak.shape == (min(k, R), n)
        assert rel(Bk @ Ak, truncate(dense, k)) < 1e-5
        assert torch.allclose(S, torch.linalg.svdvals(dense)[:R], rtol=1e-5, atol=1e-5 * float(S[0]))


def test_quantile_matches_torch_and_works_beyond_2_24():
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 7, 1000, 12345):
        x = torch.randn(n, generator=g)
        for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0):
            assert torch.equal(quantile(x, q), torch.quantile(x, q)), (n, q)
    big = torch.randn(2 ** 24 + 5, generator=g)
    with pytest.raises(RuntimeError):
        torch.quantile(big, 0.99)  # the limit PEFT's svd_clamp runs into
    ours = quantile(big, 0.99)
    v = torch.sort(big.double()).values
    pos = 0.99 * (big.numel() - 1)
    lo = math.floor(pos)
    expected = v[lo] + (v[lo + 1] - v[lo]) * (pos - lo)
    assert abs(float(ours) - float(expected)) < 1e-6


def test_exact_clamp(ckpts):
    """PEFT's signed-quantile clamp, on factors with a fixed sign convention."""
    srcs = sources(ckpts["pair"])
    plain = combine(srcs, WEIGHTS, "svd")
    clamped = combine(srcs, WEIGHTS, "svd", svd_clamp=0.9)
    for module, entry in clamped.adapter.modules.items():
        B, A = plain.adapter.modules[module].B, plain.adapter.modules[module].A
        hi = torch.quantile(torch.cat([B.flatten(), A.flatten()]), 0.9)
        assert torch.equal(entry.B, B.clamp(-hi, hi)) and torch.equal(entry.A, A.clamp(-hi, hi))
    assert any("svd_clamp 0.9" in n for n in clamped.notes)
    assert clamped.relative_error > plain.relative_error


# ------------------------------------------------------------------- refusals, bias, seeds, io


def test_dora_refused_with_reason(ckpts):
    srcs = sources(ckpts["dora"])
    for semantics in ("exact", "peft"):
        with pytest.raises(CombineError, match=r"DoRA.*base weight.*3761"):
            combine(srcs, WEIGHTS, "svd", semantics=semantics)


def test_lora_bias_combined_exactly(ckpts, tmp_path):
    from peft import PeftModel

    srcs = sources(ckpts["bias"])
    result = combine(srcs, WEIGHTS, "svd", rank=8)
    assert result.adapter.config["lora_bias"] is True
    module = "model.layers.1.self_attn.v_proj"
    expected_bias = sum(w * s.modules[module].scaling * s.modules[module].lora_bias.double()
                        for w, s in zip(WEIGHTS, srcs))
    assert torch.allclose(result.adapter.modules[module].lora_bias.double(), expected_bias, atol=1e-6)
    save_adapter(result.adapter, tmp_path / "out")
    model = PeftModel.from_pretrained(load_base(ckpts["llama_base"]), tmp_path / "out")
    layer = model.base_model.model.get_submodule(module)
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = (layer(x) - layer.base_layer(x)).double()
    want = sum(w * s.modules[module].scaling * (x.double() @ (s.modules[module].B.double()
                                                              @ s.modules[module].A.double()).T
                                                + s.modules[module].lora_bias.double())
               for w, s in zip(WEIGHTS, srcs))
    assert rel(got, want) < 1e-5
    # peft semantics reproduces PEFT dropping them, loudly
    peft_result = combine(srcs, WEIGHTS, "svd", semantics="peft")
    assert all(torch.count_nonzero(e.lora_bias) == 0 for e in peft_result.adapter.modules.values())
    assert any("biases are dropped" in n for n in peft_result.notes)
    peft_model = peft_combined(ckpts["llama_base"], ckpts["bias"], WEIGHTS, "svd")
    assert torch.count_nonzero(peft_model.base_model.model.get_submodule(module).lora_B["c"].bias) == 0
    # pruning has no definition for a bias
    with pytest.raises(CombineError, match="LoRA bias"):
        combine(srcs, WEIGHTS, "ties", density=0.5)


def test_equal_rank_requirement(ckpts):
    srcs = sources(ckpts["unequal"])
    for method in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):
        with pytest.raises(CombineError, match=r"needs equal ranks.*\[4, 6\]"):
            combine(srcs, WEIGHTS, method, semantics="peft", density=0.5, seed=1)
    # exact semantics and the peft methods that accept any ranks do not need them
    assert combine(srcs, WEIGHTS, "linear").rank == 6
    assert combine(srcs, WEIGHTS, "cat", semantics="peft").rank == 10


def test_dare_seeds_reproduce(ckpts):
    srcs = sources(ckpts["pair"])
    a = combine(srcs, WEIGHTS, "dare_ties", density=0.5, seed=3)
    b = combine(srcs, WEIGHTS, "dare_ties", density=0.5, seed=3)
    c = combine(srcs, WEIGHTS, "dare_ties", density=0.5, seed=4)
    module = "model.layers.0.self_attn.q_proj"
    assert torch.equal(a.adapter.modules[module].B, b.adapter.modules[module].B)
    assert not torch.equal(a.adapter.modules[module].B @ a.adapter.modules[module].A,
                           c.adapter.modules[module].B @ c.adapter.modules[module].A)
    drawn = combine(srcs, WEIGHTS, "dare_linear", density=0.5)
    assert drawn.seed is not None and any(f"seed={drawn.seed}" in n for n in drawn.notes)
    again = combine(srcs, WEIGHTS, "dare_linear", density=0.5, seed=drawn.seed)
    assert torch.equal(again.adapter.modules[module].A, drawn.adapter.modules[module].A)


def test_argument_errors(ckpts):
    srcs = sources(ckpts["pair"])
    with pytest.raises(CombineError, match="unknown method"):
        combine(srcs, WEIGHTS, "mean")
    with pytest.raises(CombineError, match="pass density"):
        combine(srcs, WEIGHTS, "ties")
    with pytest.raises(CombineError, match="2 adapters but 1 weights"):
        combine(srcs, [1.0], "svd")
    with pytest.raises(CombineError, match="density 0 divides"):
        combine(srcs, WEIGHTS, "dare_linear", density=0.0)


def test_differing_replacements_refused(ckpts):
    srcs = sources(ckpts["pair"])
    assert srcs[0].replacements  # both saved the (same) embedding copy: carried over
    result = combine(srcs, WEIGHTS, "cat")
    assert result.adapter.replacements.keys() == srcs[0].replacements.keys()
    srcs[1].replacements = {k: v + 1 for k, v in srcs[1].replacements.items()}
    with pytest.raises(CombineError, match="replace base tensors differently"):
        combine(srcs, WEIGHTS, "cat")


def test_save_adapter_is_what_peft_loads(ckpts, tmp_path):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    srcs = sources(ckpts["rs"])
    result = combine(srcs, WEIGHTS, "cat")
    save_adapter(result.adapter, tmp_path / "out")
    ours = adapter_state_dict(result.adapter)
    model = PeftModel.from_pretrained(load_base(ckpts["llama_base"]), tmp_path / "out")
    theirs = get_peft_model_state_dict(model)
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    # a rank the config does not give the module is refused before anything is written
    result.adapter.config["rank_pattern"] = {}
    with pytest.raises(AdapterError, match="config gives it rank"):
        save_adapter(result.adapter, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_embedding_lora_combined(ckpts):
    srcs = sources(ckpts["pair"])
    module = "model.embed_tokens"
    assert srcs[0].modules[module].kind == "embedding"
    result = combine(srcs, WEIGHTS, "svd", rank=8)
    entry = result.adapter.modules[module]
    assert entry.kind == "embedding" and entry.A.shape == (8, 128) and entry.B.shape == (32, 8)
    assert rel(entry.B @ entry.A, intended(srcs, WEIGHTS)[module]) < 1e-5
