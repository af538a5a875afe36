"""swiftreg's format layer: ms-swift and PEFT adapter checkpoints, read, checked and converted.

Pure functions over checkpoint folders. No database, no HTTP, and no torch at import time (torch
is imported only to read legacy .bin files).
"""
from .conversion import ConversionPlan, ConversionResult, convert, execute, parse_renames, plan
from .errors import (
    CheckpointReadError, ConfigError, FormatError, InvalidAdapterError, NotACheckpointError, OutputError,
    RefusedError, SafetensorsHeaderError, UnsafePickleError, UnsupportedFieldError, UnsupportedTunerError,
)
from .inspect import AdapterSummary, CheckpointSummary, inspect
from .layout import Adapter, Checkpoint, detect
from .validate import Problem, Report, validate

__all__ = [
    "Adapter", "AdapterSummary", "Checkpoint", "CheckpointSummary", "CheckpointReadError", "ConfigError",
    "ConversionPlan", "ConversionResult", "FormatError", "InvalidAdapterError", "NotACheckpointError",
    "OutputError", "Problem", "RefusedError", "Report", "SafetensorsHeaderError", "UnsafePickleError",
    "UnsupportedFieldError", "UnsupportedTunerError", "convert", "detect", "execute", "inspect",
    "parse_renames", "plan", "validate",
]
