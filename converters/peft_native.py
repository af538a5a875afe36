"""Tuner types other than LoRA and SHiRA, understood through the installed peft itself (imported lazily).

Nothing here is a copy of peft: a config is checked by peft's own config class, and the tensors a
checkpoint must hold are those of `get_peft_model_state_dict` on the model peft builds for the config on
the base model, built on the meta device (no weight is read or allocated). Only when peft cannot build a
type on the meta device (a few initialise from the base weights: ADAMSS, FROD, prefix tuning) is the
model built for real, and only while it is small (MAX_REAL_BUILD parameters); otherwise the shape check
says it was skipped. Without a base model only what the files show is checked: the config against its
class, the key grammar of the type (tuners.py's stems), and that every module carries the same set of
tensors as its peers.

torch, transformers and peft are imported inside the functions, never when this module is imported.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from .keys import PEFT_PREFIX
from .methods.tuners import BY_NAME, Tuner

#: Above this many base parameters, a type peft cannot build on the meta device is not built for real.
MAX_REAL_BUILD = 50_000_000
#: Fields every PEFT config carries beside its class's own (written by PeftConfig itself).
COMMON_FIELDS = frozenset({"peft_type", "peft_version", "base_model_name_or_path", "revision", "task_type",
                           "auto_mapping", "inference_mode"})
#: The transformers auto class peft's task types wrap.
TASK_CLASSES = {"CAUSAL_LM": "AutoModelForCausalLM", "SEQ_CLS": "AutoModelForSequenceClassification",
                "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM", "TOKEN_CLS": "AutoModelForTokenClassification",
                "QUESTION_ANS": "AutoModelForQuestionAnswering", "FEATURE_EXTRACTION": "AutoModel"}

Issue = tuple[str, str, str]  # (where, message, severity)
Expected = dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, safetensors dtype)


@lru_cache(maxsize=1)
def installed() -> tuple[str, dict[str, Any]]:
    """(peft version, {peft_type: config class}) of the installed peft."""
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return peft.__version__, {str(getattr(t, "value", t)): cls for t, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def unknown_type(peft_type: str) -> str | None:
    """The refusal of a type the installed peft does not define (its name and peft's version), or None."""
    version, types = installed()
    if peft_type in types:
        return None
    return (f"tuner type {peft_type!r} is not one the installed peft {version} defines (it knows "
            f"{len(types)} types); a checkpoint from a newer peft needs that peft to be checked")


def config_object(config: Mapping[str, Any]) -> Any:
    """peft's config object for `config` (fields the installed peft does not know are left out)."""
    _, types = installed()
    cls = types[str(config["peft_type"])]
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in config.items() if k in known and k != "peft_type"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**kwargs)


def check_config(config: Mapping[str, Any]) -> list[Issue]:
    """The config against the installed peft's class: it must construct; unknown fields are named."""
    version, types = installed()
    cls = types[str(config["peft_type"])]
    known = {f.name for f in dataclasses.fields(cls)} | COMMON_FIELDS
    issues: list[Issue] = []
    unknown = sorted(k for k in config if k not in known)
    if unknown:
        written = config.get("peft_version")
        by = f" (written by peft {written})" if written else ""
        issues.append(("adapter_config.json", f"fields the installed peft {version} does not know{by}: "
                       f"{', '.join(unknown)}; peft ignores them when it loads the adapter (convert with "
                       "--peft-version to check them against an older peft)", "warning"))
    try:
        config_object(config)
    except Exception as exc:  # noqa: BLE001 - the config class's own refusal is the finding
        issues.append(("adapter_config.json", f"peft {version}'s {cls.__name__} refuses this config: "
                       f"{type(exc).__name__}: {str(exc)[:300]}", "error"))
    return issues


def tuner_for(peft_type: str) -> Tuner:
    """The table's row for `peft_type`; for a type the installed peft has and the table lacks (a newer peft),
    a row made from peft's own parameter prefix, which swiftreg does not merge."""
    tuner = BY_NAME.get(peft_type)
    if tuner is not None:
        return tuner
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    prefix = {str(getattr(t, "value", t)): p for t, p in PEFT_TYPE_TO_PREFIX_MAPPING.items()}.get(peft_type, "")
    return Tuner(peft_type, "peft", (prefix,) if prefix else (), merge=f"{peft_type} is newer than swiftreg's "
                 "table of tuner types", unmerge="nothing was merged")


def module_of(tuner: Tuner, key: str) -> tuple[str, str] | None:
    """(module path, tail) for a key of a tuner layer (`base_model.model.<module>.<stem...>`), or None.

    The module is everything before the first segment that starts with one of the type's stems."""
    if not key.startswith(PEFT_PREFIX):
        return None
    parts = key[len(PEFT_PREFIX):].split(".")
    for i, part in enumerate(parts):
        if i > 0 and any(part.startswith(stem) for stem in tuner.stems):
            return ".".join(parts[:i]), ".".join(parts[i:])
    return None


def check_keys(tuner: Tuner, keys: list[str], modules_to_save: list[str]) -> tuple[list[Issue], int]:
    """The key grammar of `tuner` and the pairing of tensors across modules: (issues, modules found)."""
    issues: list[Issue] = []
    if tuner.family == "prompt":
        for key in keys:
            if key not in tuner.keys:
                issues.append((key, f"is not a {tuner.name} tensor (expected {', '.join(tuner.keys)}): peft would "
                               "ignore it", "error"))
        return issues, 0
    tails: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        found = module_of(tuner, key)
        if found is not None:
            tails[found[0]].add(found[1])
            continue
        rest = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else None
        if key.startswith("base_model.") and any(seg.startswith(tuner.stems) for seg in key.split(".")[1:3]):
            continue  # a shared parameter at the root of the tuner model (vera_A, unilora_theta_d, frod_V)
        if rest is not None and any(f".{m}." in f".{rest}" or rest.startswith(f"{m}.") for m in modules_to_save):
            continue
        if rest is not None and rest.endswith(".bias"):
            continue  # bias="all" / "<type>_only": the base layer's bias, saved beside the adapter
        issues.append((key, f"matches no {tuner.name} layer (keys name a module then a {'/'.join(tuner.stems)}"
                       "* parameter) nor a modules_to_save entry: peft would ignore it", "error"))
    # Pairing: modules of the same kind carry the same tensors; a module lacking one its peers have keeps
    # peft's initial value for it silently.
    by_set = Counter(frozenset(t) for t in tails.values())
    if len(by_set) > 1:
        union = set().union(*tails.values())
        common = max(by_set, key=lambda s: (by_set[s], len(s)))
        for module, have in sorted(tails.items()):
            if have < common:
                missing = sorted(common - have)
                issues.append((module, f"lacks {', '.join(missing)} that the other {tuner.name} modules carry: peft "
                               "would keep its initial value there", "error"))
            elif not have <= union:  # pragma: no cover - union holds every set
                pass
    return issues, len(tails)


# ----- the shape check against a base model ------------------------------------------------------------

def auto_class(config: Mapping[str, Any], base_config: Mapping[str, Any]) -> Any:
    import transformers

    task = config.get("task_type")
    name = TASK_CLASSES.get(str(task)) if task else None
    if name is None:
        archs = base_config.get("architectures") or []
        causal = any(isinstance(a, str) and a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        name = "AutoModelForCausalLM" if causal else "AutoModel"
    return getattr(transformers, name)


def _build(config: Mapping[str, Any], base_path: Path, device: str) -> Any:
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(base_path)
    cls = auto_class(config, json.loads((base_path / "config.json").read_text()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device(device):
            model = cls.from_config(hf_config)
        return get_peft_model(model, config_object(config))


class DoesNotFitError(RuntimeError):
    """peft finds nothing of the config's targets in this base model: the adapter is for another model."""


def _does_not_fit(exc: Exception) -> bool:
    return isinstance(exc, ValueError) and "not found in the base model" in str(exc)


def peft_model(config: Mapping[str, Any], base_path: str | Path, *, meta_only: bool = False) -> tuple[Any, bool]:
    """(the PeftModel peft builds for `config` on the base at `base_path`, built on meta?).

    Raises RuntimeError saying why when it cannot be built (on meta, and for real when allowed and small)."""
    base_path = Path(base_path)
    try:
        return _build(config, base_path, "meta"), True
    except Exception as meta_exc:  # noqa: BLE001 - some types initialise from the base weights
        if _does_not_fit(meta_exc):
            raise DoesNotFitError(f"peft finds none of this {config.get('peft_type')} config's target modules in the "
                                  f"base model ({str(meta_exc)[:200]}): is the adapter for another base "
                                  "model?") from None
        if meta_only:
            raise RuntimeError(f"peft cannot build {config.get('peft_type')} on the meta device: "
                               f"{type(meta_exc).__name__}: {str(meta_exc)[:200]}") from None
        params = _parameter_count(base_path)
        if params > MAX_REAL_BUILD:
            raise RuntimeError(f"peft builds {config.get('peft_type')} from the base weights themselves (not on the "
                               f"meta device), and this base has {params:,} parameters") from None
        try:
            return _build(config, base_path, "cpu"), False
        except Exception as exc:  # noqa: BLE001
            raise RuntimeError(f"peft cannot build {config.get('peft_type')} on this base model: "
                               f"{type(exc).__name__}: {str(exc)[:300]}") from None


def _parameter_count(base_path: Path) -> int:
    from .tensors import WeightsFile

    total = 0
    for f in sorted(base_path.glob("*.safetensors")):
        total += sum(i.numel for i in WeightsFile.open(f).infos())
    return total


_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


@lru_cache(maxsize=16)
def _expected_cached(config_json: str, base_path: str) -> Expected:
    from peft import get_peft_model_state_dict

    model, _ = peft_model(json.loads(config_json), base_path)
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {k: (tuple(v.shape), _ST_DTYPES.get(str(v.dtype).removeprefix("torch."), str(v.dtype)))
            for k, v in state.items()}


def expected_state(config: Mapping[str, Any], base_path: str | Path) -> Expected:
    """Names, shapes and dtypes of the tensors peft saves for `config` on the base at `base_path`."""
    return dict(_expected_cached(json.dumps(config, sort_keys=True, default=str), str(Path(base_path).resolve())))


FLOATS = frozenset({"F32", "F16", "BF16", "F64"})


def compare_state(expected: Expected, found: Mapping[str, tuple[tuple[int, ...], str]], *,
                  shown: int = 8) -> list[Issue]:
    """The differences between what peft builds and what the file holds, first ones named."""
    issues: list[Issue] = []
    for key in sorted(set(expected) - set(found))[:shown]:
        shape, _ = expected[key]
        issues.append((key, f"missing: peft's model for this config on this base has it, shape {list(shape)} (peft "
                       "would keep its initial value)", "error"))
    for key in sorted(set(found) - set(expected))[:shown]:
        issues.append((key, "is not a tensor peft's model for this config has: peft would ignore it", "error"))
    wrong = [k for k in sorted(set(expected) & set(found)) if tuple(expected[k][0]) != tuple(found[k][0])]
    for key in wrong[:shown]:
        issues.append((key, f"shape {list(found[key][0])}, but peft's model for this config on this base expects "
                       f"{list(expected[key][0])}", "error"))
    for key in sorted(set(expected) & set(found)):
        want, have = expected[key][1], found[key][1]
        if want == have:
            continue
        if want in FLOATS and have in FLOATS:
            continue  # peft casts floating adapter weights to the model's dtype when it loads them
        issues.append((key, f"is {have}, but peft's model holds it as {want}", "error"))
    return issues


__all__ = ["installed", "unknown_type", "check_config", "check_keys", "module_of", "peft_model", "expected_state",
           "compare_state", "config_object", "BY_NAME"]
