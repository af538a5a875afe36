"""Every tuner type swiftreg stores, and what it can do with each: the table the code and the README share.

PEFT's own types (all 45 of peft 0.21.2) are checked, built and merged through the installed peft itself
(converters/peft_native.py, registry/tensors/peft_layers.py); only the LoRA family and SHiRA have
hand-written, zero-copy paths (lora.py, shira.py). ms-swift's own tuners (swift_only.py) are stored in
their Swift form and checked through ms-swift in its own environment. `tests/test_tuners.py` holds this
table to the installed peft (the same types, the same key stems), and `scripts/tuner_table.py` writes
the README's table from it, so neither can drift.

Columns: `merge` is None when the weights can be merged (and unmerged: by lineage, bit for bit), else
the reason in one line; `combine` names what a weighted combination is for that type ("" = refused).
"""
from __future__ import annotations

from dataclasses import dataclass

#: Families: "lora" (hand-written LoRA path), "shira" (hand-written SHiRA), "peft" (peft's own layers),
#: "prompt" (peft prompt learning: virtual tokens, no layer to merge), "swift" (ms-swift's own tuners).
FAMILIES = ("lora", "shira", "peft", "prompt", "swift")

PROMPT_WHY = "it adds learned virtual tokens (or prefixes) to the input, not a change of any weight"


@dataclass(frozen=True)
class Tuner:
    """One tuner type. `stems`: how the type's tensor keys name its own parameters (a key segment that
    starts with one of them); prompt-learning types have fixed key names (`keys`) instead."""

    name: str
    family: str
    stems: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    merge: str | None = None
    unmerge: str | None = None      # a numerical unmerge it cannot do (lineage still returns the base)
    combine: str = ""

    @property
    def mergeable(self) -> bool:
        return self.merge is None

    @property
    def peft(self) -> bool:
        return self.family != "swift"


FROM_BASE = ("peft builds its layers from an SVD of the base weights themselves, which the streamed merge never "
             "holds whole; merge it with peft (merge_and_unload) on a machine that holds the model")


def _peft(name: str, *stems: str, merge: str | None = None, unmerge: str | None = None, combine: str = "") -> Tuner:
    return Tuner(name, "peft", stems, merge=merge, unmerge=unmerge, combine=combine)


def _prompt(name: str, *keys: str) -> Tuner:
    return Tuner(name, "prompt", keys=keys, merge=PROMPT_WHY, unmerge=PROMPT_WHY)


#: peft 0.21.2's PeftType, every member. Stems are the prefixes of peft's tuner parameters.
PEFT_TUNERS: tuple[Tuner, ...] = (
    Tuner("LORA", "lora", ("lora_",), combine="every PEFT combination type (cat, linear, svd, ties, dare, ...)"),
    _peft("ADALORA", "lora_", merge=None),
    _peft("ADAMSS", "adamss_", merge=FROM_BASE, unmerge="nothing was merged"),
    _peft("ADAPTION_PROMPT", "adaption_", merge="adaption prompts are gated attention over learned prompt "
          "tokens, not a change of a weight", unmerge="nothing was merged"),
    _peft("BEFT", "beft_", merge="BEFT trains bias vectors of the target layers; swiftreg's streamed merge changes "
          "weights only", unmerge="nothing was merged"),
    _peft("BOFT", "boft_"),
    _peft("C3A", "c3a_"),
    _prompt("CARTRIDGE", "prompt_embeddings"),
    _prompt("CPT", "prompt_embeddings"),
    _peft("DEFT", "deft_", unmerge="peft 0.21.2's DEFT unmerge does not give the base back (logit difference 0.09 "
          "on a tiny Llama)"),
    _peft("DELORA", "delora_"),
    _peft("FOURIERFT", "fourierft_"),
    _peft("FROD", "frod_", merge=FROM_BASE, unmerge="nothing was merged"),
    _peft("GLORA", "glora_"),
    _peft("GRALORA", "gralora_"),
    _peft("HIRA", "hira_", unmerge="peft 0.21.2's HiRA layer fails to unmerge (AttributeError)"),
    _peft("HRA", "hra_"),
    _peft("IA3", "ia3_", combine="linear (peft's own weighted sum of the ia3_l vectors)"),
    _peft("LILY", "lily_", merge="peft 0.21.2 implements no merge for Lily (its layers raise NotImplementedError)",
          unmerge="nothing was merged"),
    _peft("LN_TUNING", "ln_tuning_", unmerge="the merge puts the adapter's own copy of each norm layer in place of "
          "the base one, so the original is gone from the merged weights"),
    _peft("LOHA", "hada_"),
    _peft("LOKR", "lokr_"),
    _peft("MISS", "miss_"),
    _prompt("MULTITASK_PROMPT_TUNING", "prompt_embeddings", "prefix_task_cols", "prefix_task_rows"),
    _peft("OFT", "oft_"),
    _peft("OSF", "osf_", merge=FROM_BASE, unmerge="nothing was merged"),
    _peft("PEANUT", "peanut_", unmerge="peft 0.21.2's PEANUT layer fails to unmerge (AttributeError)"),
    _peft("POLY", "poly_", merge="Poly routes each task to a mixture of LoRA modules chosen at run time (task_ids); "
          "there is no single weight to merge", unmerge="nothing was merged"),
    _prompt("PREFIX_TUNING", "prompt_embeddings"),
    _prompt("PROMPT_TUNING", "prompt_embeddings"),
    _peft("PSOFT", "psoft_", merge=FROM_BASE, unmerge="nothing was merged"),
    _peft("PVERA", "pvera_", merge="peft 0.21.2's PVeRA merge does not reproduce its own forward (logit difference "
          "0.28 on a tiny Llama), so a merged model could not pass the equivalence check",
          unmerge="nothing was merged"),
    _prompt("P_TUNING", "prompt_embeddings"),
    _peft("RANDLORA", "randlora_"),
    _peft("ROAD", "road_"),
    _peft("SHADOW", "shadow_", merge="peft 0.21.2 cannot build SHADOW for a Llama (its forward fails: "
          "'ShadowCarrier' object has no attribute 'view')", unmerge="nothing was merged"),
    Tuner("SHIRA", "shira", ("shira_",), combine="linear: a SHiRA adapter over the union of the masks (fusion)"),
    _peft("SUPERTUNING", "supertuning_"),
    _peft("TINYLORA", "tinylora_"),
    _peft("TRAINABLE_TOKENS", "trainable_tokens_", unmerge="the merge overwrites the trained embedding rows, whose "
          "original values the adapter does not keep"),
    _peft("UNILORA", "unilora_"),
    _peft("VBLORA", "vblora_"),
    _peft("VERA", "vera_"),
    _peft("WAVEFT", "waveft_"),
    _peft("XLORA", "xlora_", "lora_", merge="X-LoRA mixes its LoRA experts per token with a learned classifier; "
          "there is no single weight to merge", unmerge="nothing was merged"),
)

#: ms-swift's own tuners (swift_type), stored in Swift form. Merge: none has a merge swiftreg can prove.
SWIFT_TUNER_NAMES = ("ADAPTER", "PROMPT", "SIDE", "RESTUNING", "SCETuning", "LLAMAPRO", "longlora", "neftune",
                     "part", "reft")
SWIFT_TUNERS: tuple[Tuner, ...] = tuple(
    Tuner(name, "swift", merge="an ms-swift tuner with no PEFT form: merge it with ms-swift "
          "(Swift.merge_and_unload) where ms-swift can", unmerge="nothing was merged") for name in SWIFT_TUNER_NAMES)

BY_NAME: dict[str, Tuner] = {t.name: t for t in PEFT_TUNERS}
SWIFT_BY_NAME: dict[str, Tuner] = {t.name: t for t in SWIFT_TUNERS}


def peft_tuner(peft_type: str) -> Tuner | None:
    return BY_NAME.get(peft_type)


def merge_refusal(peft_type: str) -> str | None:
    """Why a PEFT type cannot be merged (one line), or None when it can."""
    tuner = BY_NAME.get(peft_type)
    if tuner is None:
        return f"tuner type {peft_type!r} is not one peft defines"
    return None if tuner.merge is None else f"tuner type {peft_type} cannot be merged: {tuner.merge}"


def swift_form_refusal(peft_type: str) -> str:
    """Why a PEFT-only type has no Swift form (`pull --format swift`, `convert --to swift`)."""
    return (f"ms-swift keeps {peft_type} adapters in PEFT form (it hands every PEFT config to peft and loads such "
            "folders through peft), so there is no Swift form to convert to; use the PEFT form (--format peft)")


def operations(tuner: Tuner) -> dict[str, str]:
    """The README table's row: operation -> "yes", "no" or a short qualifier."""
    lora = tuner.family == "lora"
    swift = tuner.family == "swift"
    return {
        "push": "yes",
        "validate": "ms-swift" if swift else "yes",
        "serve": "Swift form" if swift else "PEFT form",
        "merge": "yes" if tuner.mergeable else "no",
        "unmerge": ("lineage" if tuner.unmerge else "yes") if tuner.mergeable else "no",
        "combine": ("yes" if lora else "linear" if tuner.combine else "no"),
        "convert": "Swift <-> PEFT" if lora else "no",
        "vLLM": "yes" if lora else "no (merge)" if tuner.mergeable else "no",
    }
