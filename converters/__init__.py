"""swiftreg's format layer: ms-swift and PEFT adapter checkpoints, read, checked and converted.

Pure functions over checkpoint folders. No database, no HTTP, and no torch at import time (torch
is imported only to read legacy .bin files). Names are loaded on first use, so a command that
only converts never pays for validation or inspection code.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CheckpointReadError, ConfigError, FormatError, InvalidAdapterError, NotACheckpointError, OutputError,
    RefusedError, SafetensorsHeaderError, UnsafeFileError, UnsafePickleError, UnsupportedFieldError,
    UnsupportedTunerError,
)

_LAZY = {
    "ConversionPlan": "conversion", "ConversionResult": "conversion", "convert": "conversion",
    "execute": "conversion", "parse_renames": "conversion", "plan": "conversion",
    "AdapterSummary": "inspection", "CheckpointSummary": "inspection", "inspect": "inspection",
    "Adapter": "layout", "Checkpoint": "layout", "detect": "layout",
    "Problem": "validation", "Report": "validation", "validate": "validation",
}

if TYPE_CHECKING:
    from .conversion import ConversionPlan, ConversionResult, convert, execute, parse_renames, plan
    from .inspection import AdapterSummary, CheckpointSummary, inspect
    from .layout import Adapter, Checkpoint, detect
    from .validation import Problem, Report, validate


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'converters' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Adapter", "AdapterSummary", "Checkpoint", "CheckpointSummary", "CheckpointReadError", "ConfigError",
    "ConversionPlan", "ConversionResult", "FormatError", "InvalidAdapterError", "NotACheckpointError",
    "OutputError", "Problem", "RefusedError", "Report", "SafetensorsHeaderError", "UnsafeFileError",
    "UnsafePickleError", "UnsupportedFieldError", "UnsupportedTunerError", "convert", "detect", "execute", "inspect",
    "parse_renames", "plan", "validate",
]
