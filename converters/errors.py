"""Every error the format layer raises, as one tree.

    FormatError                     format_error             anything wrong with a checkpoint or a conversion
    ├── NotACheckpointError         not_a_checkpoint         no adapter layout we recognise at the path
    ├── CheckpointReadError         checkpoint_unreadable    a file is there but cannot be read safely
    │   ├── ConfigError             invalid_config           adapter_config.json (or a sidecar) is malformed
    │   ├── SafetensorsHeaderError  invalid_safetensors_header  a corrupt or hostile safetensors header
    │   ├── UnsafePickleError       unsafe_pickle            a legacy .bin needs more than plain tensors
    │   └── UnsafeFileError         unsafe_file              a link leading outside the folder, dangling, ...
    ├── RefusedError                refused                  a checkpoint the target format cannot express
    │   ├── UnsupportedTunerError   unsupported_tuner        a tuner type with no equivalent on the other side
    │   └── UnsupportedFieldError   unsupported_field        a config value the target cannot hold
    ├── InvalidAdapterError         invalid_adapter          validation found it inconsistent (.problems)
    └── OutputError                 unusable_output          the destination is unusable (exists, ...)

Each message names the file, key or field at fault and says what to do about it. The CLI prints
the message and exits 1; nothing here should ever surface as a traceback for a user mistake.
Each class carries `code`, a stable snake_case name a registry server sends so its client can raise
the same class; what that means over HTTP (the status) is the registry's business, not this layer's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


class FormatError(Exception):
    """Base class: `path` is the file or folder at fault when there is one."""

    code = "format_error"
    path: Path | None = None

    def __init_subclass__(cls, *, code: str | None = None, **kwargs: object) -> None:
        """`class X(Parent, code="x")`: every subclass names its own stable code."""
        super().__init_subclass__(**kwargs)
        if code is None:
            raise TypeError(f"{cls.__name__} must define its own `code` (converters/errors.py)")
        cls.code = code

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class NotACheckpointError(FormatError, code="not_a_checkpoint"):
    """The folder is not a Swift or PEFT adapter checkpoint."""


class CheckpointReadError(FormatError, code="checkpoint_unreadable"):
    """A file of the checkpoint cannot be read safely."""


class ConfigError(CheckpointReadError, code="invalid_config"):
    """An adapter config (or its sidecar) is not what the format requires."""


class SafetensorsHeaderError(CheckpointReadError, code="invalid_safetensors_header"):
    """The safetensors header is corrupt, inconsistent with the file, or hostile."""


class UnsafePickleError(CheckpointReadError, code="unsafe_pickle"):
    """A .bin checkpoint that `torch.load(weights_only=True)` refuses: we never unpickle freely."""


class UnsafeFileError(CheckpointReadError, code="unsafe_file"):
    """A file of a source folder that is not read: a symbolic link leading outside the folder and the model
    caches, a dangling or looping link, a link to a folder, or not a regular file (converters/source_files.py)."""


class RefusedError(FormatError, code="refused"):
    """The checkpoint is fine but cannot be expressed in the target format without losing meaning."""


class UnsupportedTunerError(RefusedError, code="unsupported_tuner"):
    """The adapter's tuner type has no equivalent in the target format."""


class UnsupportedFieldError(RefusedError, code="unsupported_field"):
    """A config field holds a value the target format (or PEFT release) cannot represent."""


class InvalidAdapterError(FormatError, code="invalid_adapter"):
    """Validation found problems; `.problems` lists each one."""

    def __init__(self, message: str, problems: Sequence[object], path: Path | str | None = None) -> None:
        self.problems = list(problems)
        super().__init__(message, path)


class OutputError(FormatError, code="unusable_output"):
    """The destination cannot be written as asked."""
