"""Every error the format layer raises, as one tree.

    FormatError                     anything wrong with a checkpoint or a request to convert one
    ├── NotACheckpointError         the path holds no adapter layout we recognise
    ├── CheckpointReadError         a file is there but cannot be read safely
    │   ├── ConfigError             adapter_config.json (or a sidecar) is malformed
    │   ├── SafetensorsHeaderError  a corrupt or hostile safetensors header
    │   └── UnsafePickleError       a legacy .bin needs more than plain tensors to load
    ├── RefusedError                a well-formed checkpoint the target format cannot express
    │   ├── UnsupportedTunerError   a tuner type with no equivalent on the other side
    │   └── UnsupportedFieldError   a config field whose value the target cannot hold
    ├── InvalidAdapterError         validation found the adapter inconsistent (see .problems)
    └── OutputError                 the destination is unusable (exists, inside the source, ...)

Each message names the file, key or field at fault and says what to do about it. The CLI prints
the message and exits 1; nothing here should ever surface as a traceback for a user mistake.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


class FormatError(Exception):
    """Base class: `path` is the file or folder at fault when there is one."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class NotACheckpointError(FormatError):
    """The folder is not a Swift or PEFT adapter checkpoint."""


class CheckpointReadError(FormatError):
    """A file of the checkpoint cannot be read safely."""


class ConfigError(CheckpointReadError):
    """An adapter config (or its sidecar) is not what the format requires."""


class SafetensorsHeaderError(CheckpointReadError):
    """The safetensors header is corrupt, inconsistent with the file, or hostile."""


class UnsafePickleError(CheckpointReadError):
    """A .bin checkpoint that `torch.load(weights_only=True)` refuses: we never unpickle freely."""


class RefusedError(FormatError):
    """The checkpoint is fine but cannot be expressed in the target format without losing meaning."""


class UnsupportedTunerError(RefusedError):
    """The adapter's tuner type has no equivalent in the target format."""


class UnsupportedFieldError(RefusedError):
    """A config field holds a value the target format (or PEFT release) cannot represent."""


class InvalidAdapterError(FormatError):
    """Validation found problems; `.problems` lists each one."""

    def __init__(self, message: str, problems: Sequence[object], path: Path | str | None = None) -> None:
        self.problems = list(problems)
        super().__init__(message, path)


class OutputError(FormatError):
    """The destination cannot be written as asked."""
