"""Adapter configs: reading them strictly and translating them between the formats.

Swift configs are PEFT's LoraConfig fields plus `swift_type` and ms-swift's own fields. The
translation is a split and a join: Swift -> PEFT moves the Swift-only fields into the
`additional_config.json` sidecar; PEFT -> Swift puts them back. Nothing else is touched, so both
round trips give every field back with its value.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, UnsupportedFieldError
from .methods.lora import MATH_CHANGING_FIELDS, SWIFT_ONLY_FIELDS

CONFIG_NAME = "adapter_config.json"
SIDECAR_NAME = "additional_config.json"
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def read_json(path: Path, *, what: str = "config") -> dict[str, Any]:
    """A JSON object from `path`, or ConfigError naming the file."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{what} is {size} bytes; more than {MAX_CONFIG_BYTES} is not a config", path)
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", path) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{what} is not valid JSON: {str(exc)[:200]}", path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object, not {type(data).__name__}", path)
    return data


def dump_json(data: Mapping[str, Any]) -> bytes:
    """The way PEFT and ms-swift both write configs: indent 2, sorted keys."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def swift_to_peft(config: Mapping[str, Any], *, adapter: str, config_path: Path) -> tuple[dict, dict]:
    """(PEFT config, sidecar fields) for a Swift LoRA config, or a refusal naming the field."""
    for name, why in MATH_CHANGING_FIELDS.items():
        if config.get(name):
            raise UnsupportedFieldError(
                f"adapter {adapter!r} sets {name}={config[name]!r}: {why}, so it cannot be converted to PEFT",
                config_path)
    peft = {k: v for k, v in config.items() if k not in SWIFT_ONLY_FIELDS and k != "swift_type"}
    peft["peft_type"] = config.get("peft_type") or config["swift_type"]
    sidecar = {k: config[k] for k in SWIFT_ONLY_FIELDS if k in config}
    return peft, sidecar


def peft_to_swift(config: Mapping[str, Any], sidecar: Mapping[str, Any], swift_type: str) -> dict:
    """The Swift config for a PEFT config and the sidecar fields ms-swift saved beside it."""
    swift = dict(config)
    swift.update(sidecar)
    swift["swift_type"] = swift_type
    return swift


@lru_cache(maxsize=1)
def peft_field_table() -> dict[str, dict[str, Any]]:
    """{minor release: {"LoraConfig": {field: default}, ...}}, read from the real PEFT releases."""
    # beside this module (a plain file read: importlib.resources costs ~10 ms of every command's start)
    text = (Path(__file__).parent / "data" / "peft_config_fields.json").read_text("utf-8")
    return json.loads(text)


def known_peft_versions() -> list[str]:
    return sorted(peft_field_table(), key=lambda v: tuple(int(p) for p in v.split(".")))


def for_peft_version(config: Mapping[str, Any], version: str, *, config_class: str,
                     adapter: str, config_path: Path) -> tuple[dict, list[str]]:
    """`config` trimmed to the fields PEFT `version` knows.

    A field that release lacks is dropped only when it holds the newest release's default (the
    older PEFT behaves the same without it); any other value is refused, since the older PEFT
    would silently ignore it and compute something else.
    """
    table = peft_field_table()
    minor = ".".join(version.split(".")[:2])
    if minor not in table:
        raise UnsupportedFieldError(
            f"unknown PEFT version {version!r}; known: {', '.join(known_peft_versions())}")
    target = table[minor].get(config_class)
    if target is None:
        raise UnsupportedFieldError(f"PEFT {version} has no {config_class}", config_path)
    newest = table[known_peft_versions()[-1]].get(config_class, {})
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in config.items():
        if key in target or key in ("peft_type", "peft_version", "swift_type") or key not in newest:
            kept[key] = value
        elif value == newest[key]:
            dropped.append(key)
        else:
            raise UnsupportedFieldError(
                f"adapter {adapter!r} sets {key}={value!r}, which PEFT {version} does not know "
                f"(it would ignore the field and compute something else); convert for a newer PEFT", config_path)
    return kept, dropped
