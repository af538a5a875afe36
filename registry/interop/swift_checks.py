"""ms-swift's own tuners (Adapter, Prompt, Side, LLaMA-Pro, ...) checked by ms-swift itself, in its environment.

swiftreg has no grammar for these tuners' tensors and does not copy ms-swift's: ms-swift builds the tuner for
each stored config on the base model (`Swift.prepare_model`) and saves it (swift_side.py `expect`), and the
names and shapes it writes must be exactly those of the stored file. The first differences are named (key,
expected shape, found shape). One ms-swift subprocess per call, whatever the number of checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import converters
from converters.methods import SWIFT_ONLY_TUNERS
from converters.safetensors_io import read_header
from converters.validation import Problem

SHOWN = 8


def swift_only_adapters(folder: Path) -> list[str]:
    """The adapters of the checkpoint at `folder` that are ms-swift's own tuners (no PEFT form)."""
    checkpoint = converters.detect(folder)
    if checkpoint.format != "swift":
        return []
    return [a.name for a in checkpoint.adapters if a.type_name in SWIFT_ONLY_TUNERS]


def expect_job(ref: str, folder: Path, base: Path, adapters: list[str]) -> dict[str, Any]:
    """The swift_side `expect` job for one checkpoint."""
    from ..tensors import equivalence as eq

    return {"id": ref, "op": "expect", "base": str(base), "checkpoint": str(folder), "adapters": adapters,
            "model_class": "AutoModelForCausalLM" if eq.is_causal_lm(base) else "AutoModel"}


def compare(folder: Path, expected: dict[str, dict[str, list]]) -> list[tuple[str, str, str]]:
    """(adapter, where, message) for every difference between what ms-swift writes and the stored files."""
    problems: list[tuple[str, str, str]] = []
    for name, keys in expected.items():
        path = folder / name / "adapter_model.safetensors"
        found = {t.name: list(t.shape) for t in read_header(path).tensors} if path.is_file() else {}
        want = {k: list(v[1]) for k, v in keys.items()}
        for key in sorted(set(want) - set(found))[:SHOWN]:
            problems.append((name, key, f"missing: ms-swift's {name} tuner for this config on this base has it, "
                             f"shape {want[key]}"))
        for key in sorted(set(found) - set(want))[:SHOWN]:
            problems.append((name, key, "is not a tensor ms-swift's tuner for this config has: ms-swift would ignore "
                             "it"))
        for key in [k for k in sorted(set(want) & set(found)) if want[k] != found[k]][:SHOWN]:
            problems.append((name, key, f"shape {found[key]}, but ms-swift's tuner for this config on this base "
                             f"expects {want[key]}"))
    return problems


def check(folder: str | Path, base: str | Path | None, *, python: str | None = None) -> list[Problem]:
    """`swiftreg validate`'s ms-swift half: problems for the Swift-only tuners of the checkpoint at `folder`."""
    from .. import constants
    from ..errors import SwiftEnvironmentError
    from .swift_env import run_jobs

    folder = Path(folder)
    names = swift_only_adapters(folder)
    if not names:
        return []
    if base is None:
        return [Problem(n, "adapter_config.json", "ms-swift's check of this tuner's tensors needs the base model "
                        "(--base-model)", "warning") for n in names]
    python = python or constants.swift_python()
    if not python:
        return [Problem(n, "adapter_config.json", "ms-swift's check of this tuner's tensors needs ms-swift: set "
                        "SWIFTREG_SWIFT_PYTHON to its interpreter", "warning") for n in names]
    try:
        [result] = run_jobs([expect_job(str(folder), folder, Path(base), names)], python=python)
    except (SwiftEnvironmentError, OSError) as exc:
        return [Problem(names[0], "ms-swift", f"the ms-swift check did not run: {str(exc)[-400:]}")]
    if not result.get("ok"):
        return [Problem(names[0], "ms-swift", f"ms-swift cannot build this tuner on this base: {result.get('error')}")]
    return [Problem(a, where, message) for a, where, message in compare(folder, result["expected"])]


__all__ = ["check", "compare", "expect_job", "swift_only_adapters"]
