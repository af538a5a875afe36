"""A summary of a checkpoint for people (`swiftreg inspect`) and for the registry's metadata."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .layout import Adapter, detect
from .methods import GRAMMAR
from .methods.tuners import BY_NAME
from .tensors import WeightsFile


@dataclass(frozen=True)
class AdapterSummary:
    name: str
    tuner_type: str
    weights_format: str | None
    r: int | None
    lora_alpha: float | None
    use_rslora: bool
    use_dora: bool
    target_modules: Any
    modules: int           # modules that actually carry adapter tensors
    modules_to_save: Any
    rank_pattern: dict
    dtypes: dict[str, int]  # dtype -> tensor count
    tensors: int
    parameters: int
    bytes: int


@dataclass(frozen=True)
class CheckpointSummary:
    path: str
    format: str
    adapters: list[AdapterSummary]
    extra_states: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_adapter(adapter: Adapter, fmt: str) -> AdapterSummary:
    c = adapter.config
    infos = WeightsFile.open(adapter.weights).infos() if adapter.weights else []
    modules: set[str] = set()
    own: list = []  # leaving out keys ms-swift leaked from other adapters into this file
    other = BY_NAME.get(adapter.type_name) if adapter.method is None and "swift_type" not in c else None
    if other is not None:  # another PEFT type: its modules by the type's key stems (converters/peft_native.py)
        from .peft_native import module_of

        modules = {found[0] for found in (module_of(other, i.name) for i in infos) if found is not None}
        own, infos = list(infos), []
    for info in infos:
        parsed = GRAMMAR.parse_peft(info.name) if fmt == "peft" else GRAMMAR.parse_swift(info.name)
        if parsed is not None and parsed.adapter not in (None, adapter.name):
            continue
        own.append(info)
        if parsed is not None and parsed.role is not None:
            modules.add(parsed.module)
    infos = own
    return AdapterSummary(
        name=adapter.name,
        tuner_type=adapter.tuner_type,
        weights_format=adapter.weights_format,
        r=c.get("r"),
        lora_alpha=c.get("lora_alpha"),
        use_rslora=bool(c.get("use_rslora")),
        use_dora=bool(c.get("use_dora")),
        target_modules=c.get("target_modules"),
        modules=len(modules),
        modules_to_save=c.get("modules_to_save"),
        rank_pattern=dict(c["rank_pattern"]) if isinstance(c.get("rank_pattern"), dict) else {},
        dtypes=dict(Counter(i.dtype for i in infos)),
        tensors=len(infos),
        parameters=sum(i.numel for i in infos),
        bytes=adapter.weights.stat().st_size if adapter.weights else 0,
    )


def inspect(path: str | Path) -> CheckpointSummary:
    checkpoint = detect(path)
    return CheckpointSummary(
        path=str(checkpoint.path),
        format=checkpoint.format,
        adapters=[summarize_adapter(a, checkpoint.format) for a in checkpoint.adapters],
        extra_states=checkpoint.extra_states is not None,
    )
