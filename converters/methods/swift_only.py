"""Swift tuner types with no PEFT equivalent, and why each cannot be converted."""
from __future__ import annotations

SWIFT_ONLY_TUNERS: dict[str, str] = {
    "ADAPTER": ("Swift's Adapter inserts bottleneck MLPs (`adapter_<name>.linear1/2`) after modules; "
                "PEFT has no such layer"),
    "PROMPT": "Swift's Prompt tuning stores per-layer prompt tokens (`prompt_<name>.prompt_token`) injected into "
              "hidden states; PEFT's prompt methods are built differently and cannot load them",
    "SIDE": "Side tuning runs a separate side network (`side_<name>`) beside the model; PEFT has no side tuning",
    "RESTUNING": "ResTuning adds root-level residual tuner blocks (`restuning_<name>`); PEFT has none",
    "SCETuning": "SCEdit tuners (`scetuner_<name>`) have no PEFT counterpart",
    "LLAMAPRO": "LLaMA-Pro inserts whole new decoder blocks; that is a new architecture, not a PEFT adapter",
    "longlora": "LongLoRA also trains every embedding and norm parameter and changes attention; PEFT cannot hold those",
    "neftune": "NEFTune only adds noise to embeddings during training; it has no weights to convert",
    "part": "Part tuning trains original parameters in place; PEFT adapters cannot carry them",
    "reft": "ReFT interventions (pyreft) have no PEFT format",
    "ROME": "ROME edits base weights directly; there is no adapter to convert",
}


def explain_swift_only(swift_type: str) -> str:
    return SWIFT_ONLY_TUNERS.get(swift_type, "ms-swift defines no LoRA-compatible layout for it")
