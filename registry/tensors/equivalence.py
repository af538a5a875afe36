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

#: Relative-error bounds per storage dtype. float32: only summation order differs (observed
#: ~1e-7 on the test models); 1e-5 leaves two orders of margin. bfloat16 keeps 8 bits of mantissa
#: (relative rounding 2^-9 = 2e-3 per weight) and a merged weight rounds once more than the
#: unmerged path, accumulated over layers: 5e-2. float16: 10 bits, 1e-2.
TOLERANCES: dict[str, float] = {"float32": 1e-5, "float64": 1e-10, "bfloat16": 5e-2, "float16": 1e-2}
#: Top-1 agreement below this fails a check. Half-precision rounding flips argmax wherever two
#: logits are within a rounding step, which on a 32-token probe of a small model is a token or two.
#: Only logits have a top-1: an encoder's last hidden state has no class axis, and the argmax of its
#: 384 features flips between near-equal features under any rounding (MiniLM in bfloat16 agreed on
#: 84% of positions while its relative error stayed within the tolerance), so there it is not asked.
MIN_TOP1: dict[str, float] = {"float32": 0.99, "float64": 0.99, "bfloat16": 0.9, "float16": 0.9}
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
            informational: bool = False, logits: bool = True) -> Comparison:
    """``logits=False`` for hidden states (encoders): no top-1 figure, see MIN_TOP1."""
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
                      TOLERANCES.get(dtype, TOLERANCES["float32"]), informational, nonfinite)


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


def check_merge(base_dir: Path, adapter_dir: Path, merged_dir: Path, *, device: str | torch.device = "cpu",
                with_peft_merge: bool = True) -> list[Comparison]:
    """(a) our merged model vs base + adapter unmerged; (b) vs PEFT's own merge_and_unload().

    In half precision (a) is held against the adapter computed in float32, not against PEFT's
    unmerged model in the same half dtype: that model carries its own rounding (on MiniLM in
    bfloat16 it is 4.1% from the float32 outputs, our merge 2.5%), so two noisy models compared
    with each other would judge the reference's rounding, not the merge. The same-dtype figure
    is still reported, as information.
    """
    inputs = probe_inputs(base_dir)
    merged_model = load_model(merged_dir, None, device)
    dtype = next(merged_model.parameters()).dtype
    ours = outputs(merged_model, inputs)
    del merged_model
    logits = is_causal_lm(base_dir)
    name = dtype_name(dtype)
    if dtype in (torch.bfloat16, torch.float16):
        exact = peft_outputs(base_dir, adapter_dir, inputs, dtype=torch.float32, device=device)
        same = peft_outputs(base_dir, adapter_dir, inputs, dtype=dtype, device=device)
        results = [compare("merged vs base+adapter", ours, exact, name, logits=logits),
                   compare(f"merged vs base+adapter run in {name}", ours, same, name, logits=logits,
                           informational=True)]
    else:
        results = [compare("merged vs base+adapter", ours, peft_outputs(base_dir, adapter_dir, inputs, dtype=dtype,
                                                                         device=device), name, logits=logits)]
    if with_peft_merge:
        results.append(compare("merged vs peft merge_and_unload", ours,
                               peft_outputs(base_dir, adapter_dir, inputs, dtype=dtype, merge=True, device=device),
                               name, logits=logits))
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
