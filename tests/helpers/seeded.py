"""A registry seeded like a small team's: a dozen adapters on two base models, Swift and PEFT.

Used by tests/test_validate_all.py, tests/test_jobs_ray.py and bench/validate.py. PEFT checkpoints
are made by the real peft on tiny real models (tests/helpers/models.py); Swift ones are those converted to
ms-swift's layout by swiftreg (the oracle tier proves that layout is ms-swift's own, and the
validation's swift_load check loads them with the real ms-swift).
"""
from __future__ import annotations

from pathlib import Path

import converters
from tests.helpers.models import build_base, make_peft_checkpoint

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: repo -> (base, format, {adapter name: LoraConfig kwargs})
ADAPTERS: dict[str, tuple[str, str, dict[str, dict]]] = {
    "team/plain": ("llama", "peft", {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])}),
    "team/rslora": ("llama", "peft", {"default": dict(r=8, lora_alpha=8, use_rslora=True,
                                                      target_modules=["q_proj", "k_proj", "v_proj"])}),
    "team/dora": ("llama", "peft", {"default": dict(r=4, lora_alpha=4, use_dora=True, target_modules=["q_proj",
                                                                                                      "o_proj"])}),
    "team/patterns": ("llama", "peft", {"default": dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL,
                                                        rank_pattern={"down_proj": 2}, alpha_pattern={"up_proj": 16})}),
    "team/embed": ("llama", "peft", {"default": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])}),
    "team/swift-plain": ("llama", "swift", {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])}),
    "team/swift-dora": ("llama", "swift", {"default": dict(r=4, lora_alpha=8, use_dora=True,
                                                           target_modules=["v_proj", "down_proj"])}),
    "team/swift-multi": ("llama", "swift", {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj"]),
                                            "sql": dict(r=2, lora_alpha=4, use_rslora=True,
                                                        target_modules=["v_proj", "o_proj"])}),
    "lab/gpt2-attn": ("gpt2", "peft", {"default": dict(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                        fan_in_fan_out=True)}),
    "lab/gpt2-mlp": ("gpt2", "peft", {"default": dict(r=8, lora_alpha=16, use_rslora=True,
                                                       target_modules=["c_fc", "c_proj"], fan_in_fan_out=True)}),
    "lab/gpt2-swift": ("gpt2", "swift", {"default": dict(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                          fan_in_fan_out=True)}),
    "lab/gpt2-dora": ("gpt2", "peft", {"default": dict(r=4, lora_alpha=8, use_dora=True, target_modules=["c_attn"],
                                                        fan_in_fan_out=True)}),
}
BASES = {"llama": "meta/llama-tiny", "gpt2": "openai/gpt2-tiny"}


def seed_registry(reg, work: Path, namespace: str | None = None) -> list[str]:
    """Push the bases and the adapters (team/plain twice); the adapter revisions, as `ns/name@N`.

    `namespace`: only that namespace's adapters (and the bases they need)."""
    chosen = {repo: spec for repo, spec in ADAPTERS.items() if namespace is None or repo.startswith(namespace + "/")}
    for kind, repo in BASES.items():
        if any(base == kind for base, _, _ in chosen.values()):
            reg.push_base(build_base(kind, work / f"base-{kind}"), repo, tag="v1")
    pushed = []
    for i, (repo, (base, fmt, adapters)) in enumerate(ADAPTERS.items()):
        if repo not in chosen:
            continue
        folder = work / repo.replace("/", "--")
        make_peft_checkpoint(work / f"base-{base}", folder, adapters, seed=100 + i)
        if fmt == "swift":
            swift = work / (repo.replace("/", "--") + "-swift")
            converters.convert(folder, swift, "swift")
            folder = swift
        info = reg.push(folder, repo, tag="v1", base_model=f"{BASES[base]}@v1").revision
        pushed.append(f"{info.repo}@{info.number}")
    if "team/plain" not in chosen:
        return pushed
    again = work / "team--plain-2"
    make_peft_checkpoint(work / "base-llama", again, ADAPTERS["team/plain"][2], seed=7)
    info = reg.push(again, "team/plain", base_model=f"{BASES['llama']}@v1").revision
    pushed.append(f"{info.repo}@{info.number}")
    return pushed
