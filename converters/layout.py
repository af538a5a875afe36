"""Recognising a checkpoint folder: which format, which adapters, which weights files.

    Swift                                   PEFT
    ckpt/configuration.json                 ckpt/adapter_config.json      <- adapter "default"
    ckpt/default/adapter_config.json        ckpt/adapter_model.safetensors
    ckpt/default/adapter_model.safetensors  ckpt/second/adapter_config.json
    ckpt/second/...                         ckpt/second/adapter_model.safetensors
    ckpt/extra_states/  (blocks PEFT)

A folder is Swift when its adapter configs carry `swift_type`, PEFT when none does. Only reading
configs and listing files happens here: no tensor is opened.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import source_files
from .config import CONFIG_NAME, SIDECAR_NAME, read_json
from .errors import ConfigError, NotACheckpointError
from .methods import BY_PEFT_TYPE, BY_SWIFT_TYPE, Method, SWIFT_ONLY_TUNERS

Format = Literal["swift", "peft"]
SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
EXTRA_STATES = "extra_states"
DEFAULT_ADAPTER = "default"
#: An adapter name becomes a folder name and a key segment: keep it to what both can hold.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}$")
RESERVED_NAMES = frozenset({"weight", "bias", EXTRA_STATES, "modules_to_save", "base_model", "model"})
#: Suffixes of files that hold (or may hold) pickles, compared without case: torch.save files, pickle,
#: joblib and dill dumps, numpy arrays (which load pickles with allow_pickle). Never copied, stored or opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".npy", ".npz")


def is_pickle_file(name: str, *, weights_allowed: bool = False) -> bool:
    """Whether the file `name` (a name or a relative path) may hold a pickle, whatever the case of its suffix.

    `weights_allowed`: `adapter_model.bin`, exactly so named, is the legacy weights file that is read with
    torch.load(weights_only=True) and stored as safetensors, so it is not a pickle to leave out.
    """
    base = name.rsplit("/", 1)[-1]
    if weights_allowed and base == BIN_NAME:
        return False
    return base.lower().endswith(PICKLE_SUFFIXES)


@dataclass(frozen=True)
class Adapter:
    """One adapter of a checkpoint: its config and where its weights are."""

    name: str
    folder: Path
    config: dict[str, Any]
    weights: Path | None
    sidecar: dict[str, Any] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.folder / CONFIG_NAME

    @property
    def weights_format(self) -> Literal["safetensors", "bin"] | None:
        if self.weights is None:
            return None
        return "safetensors" if self.weights.suffix == ".safetensors" else "bin"

    @property
    def type_name(self) -> str:
        """The config's own type: `swift_type` for Swift configs, `peft_type` otherwise."""
        value = self.config.get("swift_type") if "swift_type" in self.config else self.config.get("peft_type")
        return value if isinstance(value, str) else ""

    @property
    def method(self) -> Method | None:
        """The method module for this adapter's type; None for types we do not know (or malformed ones)."""
        name = self.type_name
        return BY_SWIFT_TYPE.get(name) if "swift_type" in self.config else BY_PEFT_TYPE.get(name)

    @property
    def tuner_type(self) -> str:
        method = self.method
        return method.tuner_type(self.config) if method else self.type_name


@dataclass(frozen=True)
class Checkpoint:
    """A whole checkpoint folder as detected."""

    path: Path
    format: Format
    adapters: tuple[Adapter, ...]
    extra_states: Path | None = None
    extra_files: tuple[Path, ...] = ()      # other root files worth carrying (README.md, args.json)
    skipped_pickles: tuple[Path, ...] = ()  # training_args.bin, optimizer.pt, ...
    other_folders: tuple[Path, ...] = ()    # root folders that hold no adapter (runs/, ...): not converted

    @property
    def multi(self) -> bool:
        return len(self.adapters) > 1

    def adapter(self, name: str) -> Adapter:
        for a in self.adapters:
            if a.name == name:
                return a
        raise NotACheckpointError(
            f"no adapter named {name!r}; this checkpoint has {', '.join(a.name for a in self.adapters)}", self.path)


def _weights_in(folder: Path) -> Path | None:
    safetensors, bin_file = folder / SAFETENSORS_NAME, folder / BIN_NAME
    if safetensors.is_file():
        return safetensors
    if bin_file.is_file():
        return bin_file
    return None


def _check_name(name: str, where: Path) -> None:
    if not ADAPTER_NAME.match(name) or name in RESERVED_NAMES:
        raise NotACheckpointError(
            f"adapter name {name!r} is not usable: names are 1-128 of letters, digits, '_' and '-', "
            f"not starting with '-', and not one of {', '.join(sorted(RESERVED_NAMES))}", where)


def _read_adapter(name: str, folder: Path) -> Adapter:
    _check_name(name, folder)
    config = read_json(folder / CONFIG_NAME)
    sidecar_path = folder / SIDECAR_NAME
    sidecar = read_json(sidecar_path, what="sidecar") if sidecar_path.is_file() else {}
    if "swift_type" not in config and "peft_type" not in config:
        raise ConfigError("has neither swift_type nor peft_type: not an adapter config", folder / CONFIG_NAME)
    return Adapter(name, folder, config, _weights_in(folder), sidecar)


def detect(path: str | Path) -> Checkpoint:
    """Recognise the checkpoint at `path`, or raise NotACheckpointError saying what was expected."""
    root = Path(path)
    if not root.exists():
        raise NotACheckpointError("no such file or folder", root)
    if not root.is_dir():
        raise NotACheckpointError("is a file; pass the checkpoint folder that holds adapter_config.json", root)
    root_config = root / CONFIG_NAME
    # The symlink rule (source_files.py) on every entry read here or copied by a conversion: a link that
    # leads outside the folder and the model caches, dangles or names a folder is refused before any read.
    roots = source_files.allowed_roots(root)
    entries = {p: source_files.check(root, p, roots=roots) for p in sorted(root.iterdir())}
    subfolders = sorted(p for p, found in entries.items() if found is None and p.name != EXTRA_STATES
                        and os.path.lexists(p / CONFIG_NAME))
    for folder in subfolders:
        for p in sorted(folder.iterdir()):
            source_files.check(root, p, roots=roots)
    adapters: list[Adapter] = []
    if root_config.is_file():
        adapters.append(_read_adapter(DEFAULT_ADAPTER, root))
    adapters.extend(_read_adapter(p.name, p) for p in subfolders)
    if not adapters:
        raise NotACheckpointError(
            f"no {CONFIG_NAME} here or in any subfolder: not a Swift or PEFT adapter checkpoint", root)
    swift = [a for a in adapters if "swift_type" in a.config]
    if swift and root_config.is_file():
        if "swift_type" in adapters[0].config:
            raise NotACheckpointError(
                "this folder is one adapter of a Swift checkpoint (its config has swift_type at the top "
                "level); pass the checkpoint folder that contains it", root)
        raise NotACheckpointError(
            "mixes a PEFT adapter at the root with Swift adapters in subfolders "
            f"({', '.join(a.name for a in swift)}); ms-swift refuses to load such a folder too", root)
    if swift and len(swift) != len(adapters):
        peft_named = [a.name for a in adapters if "swift_type" not in a.config]
        raise NotACheckpointError(f"subfolders {', '.join(peft_named)} lack swift_type while others have it", root)
    extra_states = root / EXTRA_STATES
    extra_files: list[Path] = []
    pickles: list[Path] = []
    for p, found in entries.items():
        if found is None or p.name in (CONFIG_NAME, SAFETENSORS_NAME, BIN_NAME, SIDECAR_NAME):
            continue
        (pickles if is_pickle_file(p.name) else extra_files).append(p)
    return Checkpoint(
        path=root,
        format="swift" if swift else "peft",
        adapters=tuple(adapters),
        extra_states=extra_states if extra_states.is_dir() else None,
        extra_files=tuple(extra_files),
        skipped_pickles=tuple(pickles),
        other_folders=tuple(p for p, found in entries.items() if found is None and p not in subfolders
                            and p.name != EXTRA_STATES and not p.name.startswith(".")),
    )


def known_types() -> str:
    return ", ".join(sorted({*BY_PEFT_TYPE, *BY_SWIFT_TYPE, *SWIFT_ONLY_TUNERS}))
