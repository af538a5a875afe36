"""Swift <-> PEFT conversion: a plan (layout, keys, configs, or a refusal), then a copy.

Planning reads only configs and safetensors headers. Executing writes each weights file as a
new header plus the untouched tensor bytes, into a temporary folder beside the destination that
is renamed into place at the end: a failed conversion leaves nothing behind.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from . import config as configs
from . import source_files
from .config import CONFIG_NAME, SIDECAR_NAME
from .errors import (
    FormatError, NotACheckpointError, OutputError, RefusedError, UnsafeFileError, UnsupportedFieldError,
    UnsupportedTunerError,
)
from .keys import TensorKey
from .layout import (
    DEFAULT_ADAPTER, SAFETENSORS_NAME, Adapter, Checkpoint, Format, _check_name, detect, is_pickle_file,
)
from .methods import GRAMMAR, explain_swift_only, SWIFT_ONLY_TUNERS, tuners
from .safetensors_io import write_renamed
from .tensors import WeightsFile

SWIFT_MARKER = "configuration.json"
#: Written into every safetensors file we produce when the source had no metadata.
DEFAULT_METADATA = {"format": "pt"}


@dataclass
class AdapterPlan:
    """What one output adapter will be: where, which config, which tensor under which key."""

    source: Adapter
    name: str                      # name in the output (after --rename)
    folder: str                    # relative output folder ("" for the PEFT root)
    config: dict
    sidecar: dict
    weights: WeightsFile
    renames: list[tuple[str, str]]  # (source key, output key), in source order
    dropped: list[str] = field(default_factory=list)  # keys of other adapters leaked into this file


@dataclass
class ConversionPlan:
    source: Checkpoint
    target: Format
    adapters: list[AdapterPlan]
    extra_files: list[Path]
    notices: list[str]
    extra_states: Path | None = None  # a Swift checkpoint's extra_states/, carried byte for byte into Swift


@dataclass(frozen=True)
class ConversionResult:
    destination: Path
    target: Format
    adapters: tuple[str, ...]
    tensors: int
    bytes: int
    notices: tuple[str, ...]


def parse_renames(pairs: Sequence[str]) -> dict[str, str]:
    """`OLD=NEW` strings -> {old: new}."""
    renames: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise NotACheckpointError(f"--rename expects OLD=NEW, got {pair!r}")
        renames[old] = new
    return renames


def _swift_type_refusal(adapter: Adapter) -> UnsupportedTunerError:
    kind = adapter.type_name or "<none>"
    why = explain_swift_only(kind) if kind in SWIFT_ONLY_TUNERS else (
        "it is not a LoRA-family tuner this converter knows")
    return UnsupportedTunerError(
        f"adapter {adapter.name!r} is a Swift {kind} tuner: {why}; only LoRA-family adapters convert to PEFT",
        adapter.config_path)


def _target_config(adapter: Adapter, target: Format) -> tuple[dict, dict]:
    """(config, sidecar) for `adapter` in the target format, or a refusal."""
    method = adapter.method
    if adapter.config.get("swift_type") is not None:
        if method is None:
            raise _swift_type_refusal(adapter)
        if target == "swift":
            return dict(adapter.config), dict(adapter.sidecar)
        peft, sidecar = configs.swift_to_peft(adapter.config, adapter=adapter.name, config_path=adapter.config_path)
        return peft, {**adapter.sidecar, **sidecar}
    if method is None:
        if target == "peft" and adapter.type_name in tuners.BY_NAME:
            return dict(adapter.config), dict(adapter.sidecar)  # already PEFT: kept as it is
        if adapter.type_name in tuners.BY_NAME:
            raise UnsupportedTunerError(f"adapter {adapter.name!r} is a PEFT {adapter.type_name} adapter: "
                                        + tuners.swift_form_refusal(adapter.type_name))  # the type says it all
        raise UnsupportedTunerError(
            f"adapter {adapter.name!r} is a PEFT {adapter.type_name} adapter; swiftreg converts LoRA-family "
            "adapters (LoRA, DoRA, rsLoRA) and carries SHiRA", adapter.config_path)
    if target == "peft":
        return dict(adapter.config), dict(adapter.sidecar)
    if method.swift_type is None:
        raise UnsupportedTunerError(
            f"adapter {adapter.name!r} is a PEFT {method.peft_type} adapter and ms-swift has no "
            f"{method.peft_type} tuner; keep it in PEFT format", adapter.config_path)
    return configs.peft_to_swift(adapter.config, adapter.sidecar, method.swift_type), {}


def _parse_key(adapter: Adapter, source_format: Format, key: str) -> TensorKey:
    if source_format == "peft":
        parsed = GRAMMAR.parse_peft(key)
        if parsed is None:
            raise NotACheckpointError(
                f"adapter {adapter.name!r}: key {key!r} lacks the 'base_model.model.' prefix, so PEFT would load "
                "nothing from this file", adapter.weights)
        return parsed
    if any(part.startswith("loramodule_") for part in key.split(".")):
        raise RefusedError(
            f"adapter {adapter.name!r}: key {key!r} is ms-swift 1.1-1.3's own LoRA layout (loramodule_), "
            "which no current library loads; re-save it with a newer ms-swift first", adapter.weights)
    return GRAMMAR.parse_swift(key)


def _plan_adapter(adapter: Adapter, source_format: Format, target: Format, name: str,
                  peft_version: str | None, notices: list[str]) -> AdapterPlan:
    config, sidecar = _target_config(adapter, target)
    method = adapter.method
    if method is None:  # another PEFT type (peft_native.py), PEFT to PEFT: every key kept as it is
        if peft_version:
            raise UnsupportedFieldError(
                f"adapter {adapter.name!r} is a PEFT {adapter.type_name} adapter: --peft-version rewrites LoRA and "
                "SHiRA configs only (swiftreg's field table of older peft releases has no other config class)",
                adapter.config_path)
        if adapter.weights is None:
            raise NotACheckpointError(
                f"adapter {adapter.name!r} has no {SAFETENSORS_NAME} or adapter_model.bin", adapter.folder)
        weights = WeightsFile.open(adapter.weights)
        folder = "" if name == DEFAULT_ADAPTER else name
        return AdapterPlan(adapter, name, folder, config, sidecar, weights, [(i.name, i.name) for i in weights.infos()],
                           [])
    if peft_version:
        config, dropped_fields = configs.for_peft_version(
            config, peft_version, config_class=method.config_class, adapter=adapter.name,
            config_path=adapter.config_path)
        if dropped_fields:
            notices.append(f"adapter {name!r}: dropped default-valued fields PEFT {peft_version} does not know: "
                           f"{', '.join(sorted(dropped_fields))}")
    if adapter.weights is None:
        raise NotACheckpointError(
            f"adapter {adapter.name!r} has no {SAFETENSORS_NAME} or adapter_model.bin", adapter.folder)
    weights = WeightsFile.open(adapter.weights)
    renames: list[tuple[str, str]] = []
    dropped: list[str] = []
    seen: dict[str, str] = {}
    own_name = adapter.name
    for info in weights.infos():
        parsed = _parse_key(adapter, source_format, info.name)
        if parsed.adapter is not None and parsed.adapter != own_name:
            dropped.append(info.name)
            continue
        if parsed.role is not None and target == "swift" and not parsed.role.swift:
            raise UnsupportedTunerError(f"key {info.name!r} has no Swift form", adapter.weights)
        new_key = parsed.swift(name) if target == "swift" else parsed.peft()
        if not new_key or new_key == "__metadata__" or new_key.endswith("."):
            raise RefusedError(f"adapter {adapter.name!r}: key {info.name!r} would become {new_key!r}, which is not "
                               "a usable tensor name", adapter.weights)
        if new_key in seen:
            raise RefusedError(
                f"adapter {adapter.name!r}: keys {seen[new_key]!r} and {info.name!r} both map to {new_key!r}",
                adapter.weights)
        seen[new_key] = info.name
        renames.append((info.name, new_key))
    if dropped:
        notices.append(
            f"adapter {adapter.name!r}: left out {len(dropped)} keys of other adapters that ms-swift's "
            f"substring match leaked into {adapter.weights.name} (e.g. {dropped[0]!r})")
    if target == "swift" and any(k.role is not None and k.role.name.startswith("lora_embedding")
                                 for k in (GRAMMAR.parse_swift(new) for _, new in renames)):
        notices.append(
            f"adapter {name!r} has embedding LoRA: ms-swift 4.6's Swift.from_pretrained cannot load embedding "
            "LoRA from Swift format (its loader re-inserts the adapter name after 'lora_embedding_A.' and drops "
            "the tensors with only a log line); load the PEFT form in ms-swift instead, which goes through PEFT")
    folder = "" if target == "peft" and name == DEFAULT_ADAPTER else name
    return AdapterPlan(adapter, name, folder, config, sidecar, weights, renames, dropped)


def plan(source: Checkpoint, target: Format, *, adapters: Sequence[str] | None = None,
         renames: Mapping[str, str] | None = None, peft_version: str | None = None) -> ConversionPlan:
    """Everything the conversion will write, decided before a byte is written."""
    renames = dict(renames or {})
    notices: list[str] = []
    chosen = [source.adapter(n) for n in adapters] if adapters else list(source.adapters)
    for old in renames:
        source.adapter(old)
    if target == "peft" and source.extra_states is not None:
        raise RefusedError(
            "has extra_states/: modules saved outside any tuner (extra_state_keys) have no place in a PEFT "
            "checkpoint", source.extra_states)
    out_names = [renames.get(a.name, a.name) for a in chosen]
    for name in out_names:
        _check_name(name, source.path)
    if len(set(out_names)) != len(out_names):
        raise OutputError(f"two adapters would both be named {next(n for n in out_names if out_names.count(n) > 1)!r}")
    plans = [_plan_adapter(a, source.format, target, n, peft_version, notices) for a, n in zip(chosen, out_names)]
    if target == "peft" and DEFAULT_ADAPTER not in out_names:
        notices.append(
            f"no adapter is named {DEFAULT_ADAPTER!r}, so the output root holds no adapter: load one with "
            f"PeftModel.from_pretrained(model, DST, subfolder=...) or rename it (--rename {out_names[0]}=default)")
    folders = {p.folder for p in plans if p.folder}
    for extra in source.extra_files:
        if extra.name in folders:
            raise OutputError(f"the file {extra.name!r} would collide with the output folder of adapter "
                              f"{extra.name!r}; rename or remove the file", extra)
    if source.skipped_pickles:
        notices.append("left out pickle files (never opened): "
                       + ", ".join(p.name for p in source.skipped_pickles))
    if source.other_folders:
        notices.append("left out folders that hold no adapter: " + ", ".join(p.name for p in source.other_folders))
    # Swift to Swift (choosing or renaming adapters): extra_states/ holds what ms-swift saved outside any tuner
    # (extra_state_keys) and belongs to the checkpoint, not to one adapter: carried whole, never left behind.
    carried = source.extra_states if target == "swift" else None
    if carried is not None:
        pickled = sorted(p.relative_to(source.path).as_posix() for p in carried.rglob("*")
                         if is_pickle_file(p.name, weights_allowed=True))
        if pickled:
            notices.append("left out pickle files of extra_states/ (never opened): " + ", ".join(pickled))
    return ConversionPlan(source, target, plans, list(source.extra_files), notices, carried)


def publish_folder(tmp: Path, dst: Path) -> None:
    """Rename a finished temporary folder to `dst`, replacing an existing `dst` without a moment where
    neither exists half-written: the old one is renamed aside first and removed after."""
    if dst.exists():
        import shutil  # here, not at the top: shutil and tempfile cost ~8 ms of every `convert`'s start
        import tempfile

        retired = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.rename(dst, retired / "old")
        os.rename(tmp, dst)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(tmp, dst)


def new_temp_folder(dst: Path, suffix: str = ".partial") -> Path:
    """A new, empty folder beside `dst` under a dot-name, with the mode the umask gives any new folder
    (0o777 less the umask), so the output renamed from it is as readable as `mkdir` would make it;
    tempfile.mkdtemp always makes 0o700."""
    stem = dst.name.encode()[:160].decode(errors="ignore")  # the name stays under NAME_MAX
    for _ in range(100):
        tmp = dst.parent / f".{stem}.{os.urandom(6).hex()}{suffix}"
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue
    raise OutputError("cannot create a temporary folder beside it", dst)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_adapter(p: AdapterPlan, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_bytes(configs.dump_json(p.config))
    if p.sidecar:
        (folder / SIDECAR_NAME).write_bytes(configs.dump_json(p.sidecar))
    out = folder / SAFETENSORS_NAME
    if p.weights.header is not None:
        by_name = p.weights.header.by_name
        write_renamed(p.weights.header, out, [(by_name[old], new) for old, new in p.renames],
                      metadata=p.weights.header.metadata or DEFAULT_METADATA)
    else:
        from .legacy_bin import save_safetensors
        assert p.weights.state is not None
        save_safetensors({new: p.weights.state[old] for old, new in p.renames}, out, DEFAULT_METADATA)
    return out.stat().st_size


def execute(conversion: ConversionPlan, destination: str | Path, *, overwrite: bool = False,
            durable: bool = False) -> ConversionResult:
    """Write the plan to `destination` atomically.

    The output appears whole or not at all (a temporary folder renamed into place), whatever
    happens to the process. `durable` also fsyncs every file and folder before the rename, so the
    output survives a power loss too; like `cp`, the default leaves flushing to the kernel, since
    the sync costs more than the conversion itself (0.2 s of the 0.4 s for a 306 MB adapter).
    """
    dst = Path(destination).absolute()
    src = conversion.source.path.absolute()
    if dst == src or src in dst.parents:
        raise OutputError("destination must be outside the source checkpoint (conversion never works in place)", dst)
    if dst.exists() and not overwrite:
        raise OutputError("already exists; choose a new path or pass --overwrite", dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_folder(dst)
    try:
        total = 0
        for p in conversion.adapters:
            total += _write_adapter(p, tmp / p.folder if p.folder else tmp)
        root = conversion.source.path
        roots = source_files.allowed_roots(root)
        for extra in conversion.extra_files:  # the symlink rule again, at the read: resolved once, opened as checked
            found = source_files.check(root, extra, roots=roots)
            if found is None:
                raise UnsafeFileError("became a folder while being converted", extra)
            source_files.copy_file(found, tmp / extra.name)
        if conversion.extra_states is not None:
            states = tmp / conversion.extra_states.name
            states.mkdir()
            total += _copy_extra_states(conversion.extra_states, root, states, roots)
        if conversion.target == "swift" and not (tmp / SWIFT_MARKER).exists():
            (tmp / SWIFT_MARKER).write_bytes(b"{}")
        if durable:
            for path in tmp.rglob("*"):
                if path.is_file():
                    _fsync(path)
            for folder in {tmp / p.folder for p in conversion.adapters} | {tmp}:
                _fsync(folder)
        publish_folder(tmp, dst)
        if durable:
            _fsync(dst.parent)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConversionResult(
        destination=dst,
        target=conversion.target,
        adapters=tuple(p.name for p in conversion.adapters),
        tensors=sum(len(p.renames) for p in conversion.adapters),
        bytes=total,
        notices=tuple(conversion.notices),
    )


def _copy_extra_states(folder: Path, root: Path, dst: Path, roots: tuple[Path, ...]) -> int:
    """The files of extra_states/ under the source rule (links checked; pickles other than the weights file
    never copied), into `dst`; bytes copied."""
    total = 0
    for found in source_files.walk(folder, roots=roots, top=root):
        rel = Path(found.rel).relative_to(folder.name)
        if is_pickle_file(rel.name, weights_allowed=True):
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        total += source_files.copy_file(found, out)
    return total


def convert(source: str | Path, destination: str | Path, to: Format, *, adapters: Sequence[str] | None = None,
            renames: Mapping[str, str] | None = None, peft_version: str | None = None,
            overwrite: bool = False, durable: bool = False) -> ConversionResult:
    """Convert the checkpoint at `source` into `to` format at `destination`."""
    if to not in ("swift", "peft"):
        raise FormatError(f"unknown target format {to!r}; use 'swift' or 'peft'")
    conversion = plan(detect(source), to, adapters=adapters, renames=renames, peft_version=peft_version)
    return execute(conversion, destination, overwrite=overwrite, durable=durable)
