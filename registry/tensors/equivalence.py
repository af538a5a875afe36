"""Does the result still compute what it should? Forward passes on a real model, compared.

Every merge, unmerge and combination ends here: the same seeded probe batch goes through two
models and the outputs (logits, or the last hidden state for encoders) are compared by max
absolute difference, relative error (Frobenius norm of the difference over that of the reference)
and top-1 agreement. Tolerances depend on the dtype the weights are stored in and are written down
below, not chosen per call. Outputs holding NaN or Inf are never equivalent to anything: such a
comparison fails (informational rows included) with the count of the non-finite values as its reason,
and shows no top-1 figure (the argmax of NaN is meaningless).
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ShapeMismatchError

#: Relative-error bounds per dtype for comparisons where only summation order differs (float32: observed
#: ~1e-7 on the test models, 1e-5 leaves two orders of margin). Half precision is bounded by
#: `output_tolerance` (its rounding through the model's depth), these two entries are its floor only.
TOLERANCES: dict[str, float] = {"float32": 1e-5, "float64": 1e-10, "bfloat16": 5e-2, "float16": 1e-2}
#: Roundings to the storage dtype per layer of a transformer on the way to the logits: the two norms,
#: q/k/v/o, the attention product and softmax, gate/up/down, two residual adds (about 12; 16 taken).
ROUNDINGS_PER_LAYER = 16
#: Top-1 agreement below this fails a check, in float32 and float64 only. In half precision a rounding
#: step flips argmax wherever two logits are within it, and random-weight models are full of near ties
#: (the merge bench's bf16 Llama: 0.81 agreement for weights bit-identical to PEFT's), so there top-1 is
#: shown and the relative error, bounded by the dtype's rounding, decides.
#: Only logits have a top-1: an encoder's last hidden state has no class axis, and the argmax of its
#: 384 features flips between near-equal features under any rounding (MiniLM in bfloat16 agreed on
#: 84% of positions while its relative error stayed within the tolerance), so there it is not asked.
MIN_TOP1: dict[str, float] = {"float32": 0.99, "float64": 0.99, "bfloat16": 0.0, "float16": 0.0}


def output_tolerance(dtype: str, layers: int) -> float:
    """The relative-error bound on the outputs of two models that differ only by rounding in `dtype`.

    Each model rounds every layer's activations to the storage dtype about ROUNDINGS_PER_LAYER times,
    each a relative error of at most u = 2^-p (p: 8 for bfloat16, 11 for float16). Through a residual
    stream such errors add up like independent ones (their RMS is u/sqrt(3) each), so two models of
    `layers` layers differ by about u * sqrt(2 * ROUNDINGS_PER_LAYER * (layers + 1) / 3); the bound is
    sqrt(3) times that, u * sqrt(2 * ROUNDINGS_PER_LAYER * (layers + 1)). On the merge bench's bf16 Llama
    (8 layers) that is 0.066; there its LoHa merge, one bf16 ulp from PEFT's on some elements (PEFT rounds
    the delta first), is 0.021 from PEFT's merged model, and on the tests' 6-layer bf16 and fp16 Llamas a
    scaling off by 2 is more than 4 times the bound. Finer mistakes (a module left out) are below any
    output-level bound in half precision and are caught by the per-tensor check (tensor_check.py).
    float32 and float64: only the summation order differs, TOLERANCES.
    """
    bits = {"bfloat16": 8, "float16": 11}.get(dtype)
    if bits is None:
        return TOLERANCES.get(dtype, TOLERANCES["float32"])
    return 2.0 ** -bits * math.sqrt(2 * ROUNDINGS_PER_LAYER * (max(layers, 1) + 1))


def model_depth(model_dir: Path) -> int:
    """The number of layers config.json states (num_hidden_layers, n_layer, num_layers), 12 when it says none."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    for node in (config, config.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(node.get(key), int):
                return int(node[key])
    return 12


#: Warnings the libraries print on every model load that say nothing about the user's models (their
#: own deprecations, raised from their own calls): filtered by message, so every other warning still shows.
KNOWN_NOISE = (
    r"`is_gradient_checkpointing` is deprecated",   # transformers 5, from peft's own call on every load
)
for _message in KNOWN_NOISE:
    warnings.filterwarnings("ignore", message=_message, category=FutureWarning)
PROBE_SENTENCES = [
    "The adapter registry keeps every revision of every adapter.",
    "Merged weights must compute what the base model and its adapter computed.",
]


@dataclass(frozen=True)
class Comparison:
    name: str
    dtype: str
    max_abs: float
    rel_err: float
    top1: float | None
    tolerance: float
    #: A figure to report, not a pass/fail check (e.g. the truncation error of a lossy combination).
    informational: bool = False
    #: Why the outputs could not be compared: NaN or Inf in them (such a comparison never passes).
    nonfinite: str | None = None

    @property
    def passed(self) -> bool:
        if self.nonfinite is not None or not (math.isfinite(self.max_abs) and math.isfinite(self.rel_err)):
            return False
        if self.informational:
            return True
        return self.rel_err <= self.tolerance and (self.top1 is None or self.top1 >= MIN_TOP1.get(self.dtype, 0.99))

    @property
    def reason(self) -> str:
        """Why it failed ("" when it passed)."""
        if self.passed:
            return ""
        if self.nonfinite is not None:
            return self.nonfinite
        if not (math.isfinite(self.max_abs) and math.isfinite(self.rel_err)):
            return f"the difference is not finite (max |diff| {self.max_abs}, relative error {self.rel_err})"
        if self.rel_err > self.tolerance:
            return f"relative error {self.rel_err:.3g} over the tolerance {self.tolerance:g}"
        return f"top-1 agreement {self.top1:.3f} below {MIN_TOP1.get(self.dtype, 0.99)}"

    def to_dict(self) -> dict[str, Any]:
        """As JSON can hold it anywhere (PostgreSQL's json refuses NaN): a non-finite figure becomes its name."""
        plain = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in asdict(self).items()}
        return {**plain, "passed": self.passed, "reason": self.reason}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def is_causal_lm(model_dir: Path) -> bool:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures") or [])


def load_model(model_dir: Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):  # type: ignore[no-untyped-def]
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own table is the output; per-load bars only add noise
    cls = AutoModelForCausalLM if is_causal_lm(model_dir) else AutoModel
    kwargs: dict[str, Any] = {"attn_implementation": "eager"}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return cls.from_pretrained(model_dir, **kwargs).to(device).eval()


def probe_inputs(model_dir: Path, *, batch: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    """Token ids from the model's own tokenizer when it ships one; seeded random ids otherwise."""
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file():
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            ids = tokenizer(PROBE_SENTENCES[:batch], padding="max_length", truncation=True, max_length=length,
                            return_tensors="pt")["input_ids"]
            return ids
        except Exception:  # a tokenizer that does not load is no reason to skip the check
            pass
    vocab = json.loads((model_dir / "config.json").read_text()).get("vocab_size", 128)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator)


#: peft types whose forward needs `task_ids` (the probe uses task 0).
TASK_ID_TYPES = frozenset({"POLY", "MULTITASK_PROMPT_TUNING"})


def _forward_kwargs(model, inputs: torch.Tensor) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The probe as a model takes it: prompt-learning PeftModels need the attention mask (their virtual tokens
    are prepended to it), Poly and multitask prompt tuning a task id."""
    kwargs: dict[str, Any] = {"input_ids": inputs}
    configs = getattr(model, "peft_config", None)
    config = configs.get(getattr(model, "active_adapter", "default")) if isinstance(configs, dict) else None
    if config is not None and getattr(config, "is_prompt_learning", False):
        kwargs["attention_mask"] = torch.ones_like(inputs)
    peft_type = getattr(config, "peft_type", None)
    if getattr(peft_type, "value", peft_type) in TASK_ID_TYPES:
        kwargs["task_ids"] = torch.zeros(inputs.shape[0], dtype=torch.long)
    return kwargs


def outputs(model, inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(**{k: v.to(device) for k, v in _forward_kwargs(model, inputs).items()})
    tensor = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return tensor.detach().to("cpu", torch.float64)


def compare(name: str, ours: torch.Tensor, reference: torch.Tensor, dtype: str, *,
            informational: bool = False, logits: bool = True, tolerance: float | None = None) -> Comparison:
    """``logits=False`` for hidden states (encoders): no top-1 figure, see MIN_TOP1. ``tolerance``: the bound
    (default: TOLERANCES for the dtype)."""
    ours, reference = ours.to(torch.float64), reference.to(torch.float64)
    diff = ours - reference
    denominator = reference.norm().item() or 1.0
    bad = {side: int((~torch.isfinite(t)).sum()) for side, t in (("result", ours), ("reference", reference))}
    nonfinite = "; ".join(f"the {side}'s outputs hold {n:,} NaN or Inf values of {t.numel():,}"
                          for (side, n), t in zip(bad.items(), (ours, reference)) if n) or None
    top1 = None
    if logits and ours.dim() == 3 and ours.shape[-1] > 1 and nonfinite is None:
        top1 = (ours.argmax(-1) == reference.argmax(-1)).double().mean().item()
    return Comparison(name, dtype, diff.abs().max().item(), diff.norm().item() / denominator, top1,
                      TOLERANCES.get(dtype, TOLERANCES["float32"]) if tolerance is None else tolerance,
                      informational, nonfinite)


def peft_outputs(base_dir: Path, adapter_dir: Path, inputs: torch.Tensor, *, dtype: torch.dtype | None = None,
                 merge: bool = False, device: str | torch.device = "cpu") -> torch.Tensor:
    """Outputs of the real PEFT: the adapter applied unmerged, or merged with merge_and_unload()."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(base_dir, dtype, device), adapter_dir).eval()
    if merge:
        model = model.merge_and_unload()
    return outputs(model, inputs)


def format_table(comparisons: list[Comparison]) -> str:
    rows = [("check", "dtype", "max |diff|", "rel err", "top-1", "tolerance", "")]
    for c in comparisons:
        rows.append((c.name, c.dtype, f"{c.max_abs:.3g}", f"{c.rel_err:.3g}",
                     "-" if c.top1 is None else f"{c.top1:.3f}", "-" if c.informational else f"{c.tolerance:.0e}",
                     "FAIL" if not c.passed else "info" if c.informational else "ok"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + [f"FAIL {c.name}: {c.reason}" for c in comparisons if c.nonfinite is not None
                               or (not c.passed and c.informational)])


def merged_outputs(merged_dir: Path, inputs: torch.Tensor, device: str | torch.device = "cpu"
                   ) -> tuple[torch.Tensor, torch.dtype]:
    """The merged model's outputs, run in the dtype it is stored in, and that dtype; the model is freed after."""
    model = load_model(merged_dir, None, device)
    dtype = next(model.parameters()).dtype
    out = outputs(model, inputs)
    del model
    return out, dtype


def check_merge_outputs(base_dir: Path, adapter_dir: Path, merged_dir: Path, *,
                        device: str | torch.device = "cpu") -> list[Comparison]:
    """The merged model against PEFT's own merge_and_unload() and against base + adapter unmerged, all run on
    `device` in the merged model's storage dtype, one model in memory at a time.

    Decisive: vs PEFT's merged model, within `output_tolerance(dtype, depth)` (for LoRA our weights equal
    PEFT's to the bit, so on one device the outputs are equal; the bound leaves room for the one-ulp
    differences where PEFT rounds twice, embeddings and safe merges). In float32, base + adapter unmerged
    is decisive too (1e-5: only summation order differs). In half precision it is shown, not judged: two
    correct models that round differently drift apart through a deep model by more than a scaling
    mistake would in a shallow one (the merge bench's bf16 Llama, whose random adapter outweighs its
    base: 0.097 for weights bit-identical to PEFT's, PEFT's own bf16 model 0.086 from its float32 one).
    What this check needs: one model in the storage dtype (and the adapter, upcast to float32 by PEFT)
    at a time, plus the probe's activations.
    """
    from peft import PeftModel

    inputs = probe_inputs(base_dir)
    ours, dtype = merged_outputs(merged_dir, inputs, device)
    name = dtype_name(dtype)
    logits = is_causal_lm(base_dir)
    tolerance = output_tolerance(name, model_depth(base_dir))
    model = PeftModel.from_pretrained(load_model(base_dir, dtype, device), adapter_dir).eval()
    unmerged = outputs(model, inputs)
    theirs = outputs(model.merge_and_unload(), inputs)
    del model
    half = dtype in (torch.bfloat16, torch.float16)
    return [compare(f"merged vs peft merge_and_unload, both in {name}", ours, theirs, name, logits=logits,
                    tolerance=tolerance),
            compare(f"merged vs base+adapter unmerged, both in {name}", ours, unmerged, name, logits=logits,
                    tolerance=tolerance, informational=half)]


def check_merge(base_dir: Path, adapter_dir: Path, merged_dir: Path, *, device: str | torch.device = "cpu",
                with_peft_merge: bool = True) -> list[Comparison]:
    """`check_merge_outputs`, and in half precision also base + adapter run in float32, as information.
    (`with_peft_merge=False`: base + adapter in the storage dtype only, judged; for callers without peft's merge.)"""
    if not with_peft_merge:
        inputs = probe_inputs(base_dir)
        ours, dtype = merged_outputs(merged_dir, inputs, device)
        name = dtype_name(dtype)
        return [compare(f"merged vs base+adapter, both in {name}", ours,
                        peft_outputs(base_dir, adapter_dir, inputs, dtype=dtype, device=device), name,
                        logits=is_causal_lm(base_dir), tolerance=output_tolerance(name, model_depth(base_dir)))]
    results = check_merge_outputs(base_dir, adapter_dir, merged_dir, device=device)
    if results[0].dtype in ("bfloat16", "float16"):
        inputs = probe_inputs(base_dir)
        ours, _ = merged_outputs(merged_dir, inputs, device)
        exact = peft_outputs(base_dir, adapter_dir, inputs, dtype=torch.float32, device=device)
        results.append(compare("merged vs base+adapter run in float32", ours, exact, results[0].dtype,
                               logits=is_causal_lm(base_dir), informational=True))
    return results


def check_same_model(name: str, left_dir: Path, right_dir: Path, *, device: str | torch.device = "cpu",
                     probe_from: Path | None = None) -> Comparison:
    """(c) e.g. unmerge(merge(W)) vs W: two model folders on the same inputs."""
    inputs = probe_inputs(probe_from or right_dir)
    left = load_model(left_dir, None, device)
    dtype = next(left.parameters()).dtype
    ours = outputs(left, inputs)
    del left
    return compare(name, ours, outputs(load_model(right_dir, dtype, device), inputs), dtype_name(dtype),
                   logits=is_causal_lm(right_dir))


def outputs_with_deltas(base_dir: Path, deltas: dict[str, torch.Tensor], inputs: torch.Tensor, *,
                        device: str | torch.device = "cpu") -> torch.Tensor:
    """Outputs of the base model (float32) with dense deltas added to named weights: the reference a
    combined adapter is held to. Keys are module paths; each delta has its weight's shape."""
    model = load_model(base_dir, torch.float32, device)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for module, delta in deltas.items():
            weight = params.get(f"{module}.weight")
            if weight is None:
                raise ShapeMismatchError(f"the base model has no weight {module}.weight: the adapter was made "
                                         "for another base model")
            weight.copy_((weight.double() + delta.to(weight.device, torch.float64)).to(weight.dtype))
    return outputs(model, inputs)
