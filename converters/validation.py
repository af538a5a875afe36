"""Is an adapter internally consistent, and does it fit a base model?

PEFT's loader is silent about most mistakes (unmatched keys are ignored, missing LoRA keys keep
B = 0, a missing prefix loads nothing), so a file that "loads" proves little. These checks read
configs and safetensors headers and report every problem with the key or field at fault; the one
look at tensor values is for NaN and Inf (converters/finite.py): a non-finite config number is
always an error, non-finite tensor values are an error unless `allow_nonfinite` (then a warning).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from . import finite, legacy_bin
from .base_model import BaseModel
from .errors import FormatError
from .layout import Adapter, Checkpoint, detect
from .methods import GRAMMAR, SWIFT_ONLY_TUNERS
from .safetensors_io import FLOAT_DTYPES, INT_DTYPES
from .tensors import TensorInfo, WeightsFile

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    adapter: str
    where: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"[{self.severity}] {self.adapter}: {self.where}: {self.message}"


@dataclass
class Report:
    path: Path
    format: str
    adapters: list[str]
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


def pattern_value(pattern: Mapping[str, Any], module: str) -> Any | None:
    """PEFT >= 0.15's rule for rank_pattern/alpha_pattern: the first key matching the module wins."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def targets_module(target_modules: Any, module: str) -> bool:
    """PEFT's target_modules rule: a regex string must match the whole path; a list entry must be the
    path or its last dotted part(s)."""
    if target_modules is None:
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith("." + t) for t in target_modules)


def _contains_module(key: str, module: str) -> bool:
    return f".{module}." in f".{key}."


class _AdapterCheck:
    def __init__(self, adapter: Adapter, fmt: str, report: Report, base: BaseModel | None,
                 allow_nonfinite: bool = False) -> None:
        self.a, self.fmt, self.report, self.base = adapter, fmt, report, base
        self.c = adapter.config
        self.allow_nonfinite = allow_nonfinite

    def problem(self, where: str, message: str, severity: Severity = "error") -> None:
        self.report.problems.append(Problem(self.a.name, where, message, severity))

    def _check_swift_only(self) -> None:
        """A tuner only ms-swift has (Adapter, Prompt, Side, LLaMA-Pro, ReFT, ...): kept in its own form.

        Its weights file must read; its tensors follow no grammar swiftreg knows, so they are not
        checked, and it has no PEFT form (the ModelScope API serves it as Swift, for ms-swift).
        """
        if self.a.weights is not None:
            try:
                weights = WeightsFile.open(self.a.weights)
                weights.infos()
            except FormatError as exc:
                self.problem(self.a.weights.name, str(exc))
                return
            self._check_values(weights)
        self.problem("adapter_config.json", f"{self.a.type_name} is a Swift-only tuner: stored as is (ms-swift "
                     "loads it) and it has no PEFT form; its tensors are checked by ms-swift itself (`swiftreg "
                     "validate --base-model` and validate-all, with SWIFTREG_SWIFT_PYTHON set)", "warning")

    def run(self) -> None:
        for where, value in finite.config_fields(self.c):
            self.problem(where, f"is {value}: every number of an adapter config must be finite "
                         "(was it written from a diverged run, or by hand?)")
        method = self.a.method
        if method is None and "swift_type" in self.c and self.a.type_name in SWIFT_ONLY_TUNERS:
            self._check_swift_only()
            return
        if method is None and "swift_type" not in self.c and self.a.type_name:
            self._check_peft_native()
            return
        if method is None:
            self.problem("adapter_config.json", f"tuner type {self.a.type_name!r} is not one swiftreg can check")
            return
        if not self._config_ok(method.peft_type):
            return
        infos = self._tensor_infos()
        if infos is None:
            return
        if method.peft_type == "SHIRA":
            self._check_shira(infos)
        else:
            self._check_lora(infos)

    def _tensor_infos(self) -> list[TensorInfo] | None:
        """The weights file's tensors (names, dtypes, shapes), its values scanned for NaN/Inf; None, with the
        problem recorded, when there is no weights file, it cannot be read, or it holds no tensors."""
        if self.a.weights is None:
            self.problem(self.a.folder.name or ".", "no adapter_model.safetensors or adapter_model.bin")
            return None
        try:
            weights = WeightsFile.open(self.a.weights)
            infos = weights.infos()
        except FormatError as exc:
            self.problem(self.a.weights.name, str(exc))
            return None
        self._check_values(weights)
        if not infos:
            self.problem(self.a.weights.name, "holds no tensors: an adapter without weights changes nothing (was the "
                         "state dict empty when it was saved?)")
            return None
        return infos

    def _check_peft_native(self) -> None:
        """Any other type the installed peft defines: checked by peft itself (converters/peft_native.py)."""
        from . import peft_native

        refusal = peft_native.unknown_type(self.a.type_name)
        if refusal is not None:
            self.problem("adapter_config.json", refusal)
            return
        tuner = peft_native.tuner_for(self.a.type_name)
        for where, message, severity in peft_native.check_config(self.c):
            self.problem(where, message, "error" if severity == "error" else "warning")
        infos = self._tensor_infos()
        if infos is None:
            return
        errors_before = len(self.report.errors)
        mts = self.c.get("modules_to_save")
        issues, _ = peft_native.check_keys(tuner, [i.name for i in infos],
                                           [m for m in mts if isinstance(m, str)] if isinstance(mts, list) else [])
        for where, message, severity in issues:
            self.problem(where, message, "error" if severity == "error" else "warning")
        if len(self.report.errors) > errors_before:
            return
        if self.base is None:
            self.problem("adapter_config.json", f"{tuner.name}: the shape check needs the base model (a registered "
                         "base, or --base-model DIR); names and pairing were checked from the file alone", "warning")
            return
        try:
            expected = peft_native.expected_state(self.c, self.base.path)
        except peft_native.DoesNotFitError as exc:
            self.problem("adapter_config.json", str(exc))
            return
        except RuntimeError as exc:
            self.problem("adapter_config.json", f"shape check skipped: {exc}", "warning")
            return
        found = {i.name: (tuple(i.shape), i.dtype) for i in infos}
        for where, message, severity in peft_native.compare_state(expected, found):
            self.problem(where, message, "error" if severity == "error" else "warning")

    def _check_values(self, weights: WeightsFile) -> None:
        """NaN or Inf in the tensors: an error, or a warning when they were allowed."""
        try:
            found = (finite.scan_safetensors(weights.header) if weights.header is not None
                     else legacy_bin.nonfinite(weights.state or {}))
        except OSError as exc:
            self.problem(weights.path.name, f"cannot read the tensor values: {exc}")
            return
        if not found:
            return
        if self.allow_nonfinite:
            self.problem(weights.path.name, finite.describe(found) + " (allowed)", "warning")
        else:
            self.problem(weights.path.name, finite.describe(found) + ": a diverged training run? Use the checkpoint "
                         "from before it diverged, or pass --allow-nonfinite if these values are deliberate")

    def _config_ok(self, peft_type: str) -> bool:
        c, ok = self.c, True
        r = c.get("r")
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
            self.problem("config.r", f"must be a positive integer, got {r!r}")
            ok = False
        if peft_type == "LORA":
            alpha = c.get("lora_alpha")
            if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
                self.problem("config.lora_alpha", f"must be a number, got {alpha!r}")
                ok = False
            for name in ("rank_pattern", "alpha_pattern"):
                pattern = c.get(name) or {}
                if not isinstance(pattern, dict) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in pattern.values()):
                    self.problem(f"config.{name}", f"must map module patterns to positive numbers, got {pattern!r}")
                    ok = False
            if c.get("bias", "none") not in ("none", "all", "lora_only"):
                self.problem("config.bias", f"must be none, all or lora_only, got {c.get('bias')!r}")
                ok = False
        tm = c.get("target_modules")
        if tm is not None and not isinstance(tm, str) and not (
                isinstance(tm, list) and all(isinstance(t, str) for t in tm)):
            self.problem("config.target_modules", f"must be a list of names or a regex string, got {tm!r}")
            ok = False
        patterns = [("config.target_modules", tm)] if isinstance(tm, str) else []
        for name in ("rank_pattern", "alpha_pattern"):
            if isinstance(c.get(name), dict):
                patterns += [(f"config.{name}", key) for key in c[name]]
        for where, pattern in patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError, RecursionError) as exc:
                self.problem(where, f"{pattern!r} is not a valid regular expression: {exc}")
                ok = False
        mts = c.get("modules_to_save")
        if mts is not None and not (isinstance(mts, list) and all(isinstance(m, str) for m in mts)):
            self.problem("config.modules_to_save", f"must be a list of module names, got {mts!r}")
            ok = False
        return ok

    def _group(self, infos: list[TensorInfo]) -> tuple[dict[str, dict[str, TensorInfo]], list[TensorInfo]]:
        modules: dict[str, dict[str, TensorInfo]] = defaultdict(dict)
        plain: list[TensorInfo] = []
        foreign: dict[str, list[str]] = defaultdict(list)
        for info in infos:
            if self.fmt == "peft":
                parsed = GRAMMAR.parse_peft(info.name)
                if parsed is None:
                    self.problem(info.name, "lacks the 'base_model.model.' prefix: PEFT loads nothing from such a key")
                    continue
            else:
                parsed = GRAMMAR.parse_swift(info.name)
            if parsed.adapter is not None and parsed.adapter != self.a.name:
                foreign[parsed.adapter].append(info.name)
                continue
            if parsed.role is None:
                plain.append(TensorInfo(parsed.module, info.dtype, info.shape))
            else:
                slot = parsed.role.name + (f".{parsed.param}" if parsed.param else "")
                modules[parsed.module][slot] = info
        for other, keys in foreign.items():
            self.problem(keys[0], f"and {len(keys) - 1} more keys belong to adapter {other!r} (leaked by ms-swift's "
                         "substring match on adapter names); conversion leaves them out", "warning")
        return modules, plain

    def _check_lora(self, infos: list[TensorInfo]) -> None:
        c = self.c
        modules, plain = self._group(infos)
        r_default = c["r"]
        use_dora = bool(c.get("use_dora"))
        fan_in_fan_out = bool(c.get("fan_in_fan_out"))
        embedding_modules = set()
        for module, slots in sorted(modules.items()):
            r = pattern_value(c.get("rank_pattern") or {}, module) or r_default
            if not targets_module(c.get("target_modules"), module):
                self.problem(module, "has LoRA tensors but target_modules does not select it: PEFT creates no "
                             "layer there and ignores them")
            for info in slots.values():
                if info.dtype not in FLOAT_DTYPES:
                    self.problem(info.name, f"dtype {info.dtype} is not a floating-point type")
            if "lora_embedding_A" in slots or "lora_embedding_B" in slots:
                embedding_modules.add(module)
                a, b = slots.get("lora_embedding_A"), slots.get("lora_embedding_B")
                if a is None or b is None:
                    self.problem(module, "has only one of lora_embedding_A / lora_embedding_B")
                    continue
                if not self._check_rank(module, a, b, r):
                    continue
                if self.base is not None:
                    self._check_base(module, in_features=a.shape[-1], out_features=b.shape[0], embedding=True)
                continue
            a, b = slots.get("lora_A.weight"), slots.get("lora_B.weight")
            if a is None or b is None:
                self.problem(module, "has only one of lora_A / lora_B: PEFT would keep the missing one at its "
                             "initial value (B = 0: the adapter does nothing)")
                continue
            if not self._check_rank(module, a, b, r):
                continue
            out_features = b.shape[0]
            bias = slots.get("lora_B.bias")
            if bias is not None:
                if not c.get("lora_bias"):
                    self.problem(bias.name, "is a lora_B bias but lora_bias is false: PEFT would ignore it")
                elif bias.shape != (out_features,):
                    self.problem(bias.name, f"shape {list(bias.shape)} is not [{out_features}]")
            elif c.get("lora_bias"):
                self.problem(module, "lora_bias is true but lora_B has no bias")
            magnitude = slots.get("lora_magnitude_vector")
            if use_dora and magnitude is None:
                self.problem(module, "use_dora is true but the DoRA magnitude vector is missing")
            if magnitude is not None:
                if not use_dora:
                    self.problem(magnitude.name, "is a DoRA magnitude but use_dora is false: PEFT would ignore it")
                elif magnitude.shape != (out_features,):
                    self.problem(magnitude.name, f"shape {list(magnitude.shape)} is not [{out_features}] "
                                 "(one magnitude per output row)")
            if self.base is not None:
                self._check_base(module, in_features=a.shape[-1] if len(a.shape) == 2 else a.shape[1],
                                 out_features=out_features, transposed=fan_in_fan_out)
        self._check_plain(plain, embedding_modules)

    def _check_rank(self, module: str, a: TensorInfo, b: TensorInfo, r: int) -> bool:
        """Report rank problems; False when the shapes are too broken to check anything further."""
        if len(a.shape) < 2 or len(b.shape) < 2:
            self.problem(module, f"lora_A {list(a.shape)} / lora_B {list(b.shape)} must be matrices")
            return False
        if a.shape[0] != r:
            self.problem(a.name, f"has {a.shape[0]} rows but the rank for {module} is {r} "
                         "(r, or rank_pattern where it matches)")
        if b.shape[1] != a.shape[0]:
            self.problem(b.name, f"has {b.shape[1]} columns but lora_A has {a.shape[0]} rows")
        return True

    def _check_base(self, module: str, *, in_features: int, out_features: int,
                    embedding: bool = False, transposed: bool = False) -> None:
        assert self.base is not None
        weight = self.base.weight_of(module)
        if weight is None:
            self.problem(module, f"no weight {module}.weight in the base model {self.base.path}")
            return
        expected = (in_features, out_features) if (embedding or transposed) else (out_features, in_features)
        if len(weight.shape) >= 2 and tuple(weight.shape[:2]) != expected:
            layout = "(num_embeddings, dim)" if embedding else "(in, out)" if transposed else "(out, in)"
            self.problem(module, f"adapter expects a base weight of shape {list(expected)} {layout} but "
                         f"{weight.name} is {list(weight.shape)}")

    def _check_plain(self, plain: list[TensorInfo], embedding_modules: set[str]) -> None:
        c = self.c
        modules_to_save = c.get("modules_to_save") or []
        bias_mode = c.get("bias", "none")
        for info in plain:
            key = info.name
            if any(_contains_module(key, m) for m in modules_to_save):
                if self.base is not None:
                    base = self.base.tensor(key)
                    if base is None:
                        self.problem(key, "modules_to_save tensor has no counterpart in the base model")
                    elif base.shape != info.shape:
                        self.problem(key, f"shape {list(info.shape)} differs from the base model's "
                                     f"{list(base.shape)}")
                continue
            if key.endswith(".bias") and bias_mode != "none":
                continue
            if key.endswith(".base_layer.weight") and key[: -len(".base_layer.weight")] in embedding_modules:
                continue  # PEFT's save_embedding_layers: a copy of the embedding's base weight
            self.problem(key, "matches no LoRA layer, modules_to_save entry or bias setting: PEFT would ignore it")

    def _check_shira(self, infos: list[TensorInfo]) -> None:
        modules, plain = self._group(infos)
        for module, slots in sorted(modules.items()):
            weight, indices = slots.get("shira_weight"), slots.get("shira_indices")
            if weight is None or indices is None:
                self.problem(module, "SHiRA needs both shira_weight and shira_indices")
                continue
            if not targets_module(self.c.get("target_modules"), module):
                self.problem(module, "has SHiRA tensors but target_modules does not select it")
            if len(weight.shape) != 1 or weight.dtype not in FLOAT_DTYPES:
                self.problem(weight.name, f"must be a 1-D float vector, got {weight.dtype} {list(weight.shape)}")
                continue
            if indices.dtype not in INT_DTYPES or len(indices.shape) != 2 or indices.shape[0] != 2:
                self.problem(indices.name, f"must be integer indices of shape [2, n], got {indices.dtype} "
                             f"{list(indices.shape)}")
                continue
            if indices.shape[1] != weight.shape[0]:
                self.problem(indices.name, f"holds {indices.shape[1]} positions for {weight.shape[0]} values")
            base_weight = self.base.weight_of(module) if self.base is not None else None
            if self.base is not None and base_weight is None:
                self.problem(module, f"no weight {module}.weight in the base model {self.base.path}")
            r = self.c.get("r")
            if base_weight is not None and len(base_weight.shape) == 2 and isinstance(r, int):
                count = r * (base_weight.shape[0] + base_weight.shape[1])
                if weight.shape[0] != count:
                    self.problem(weight.name, f"shape {list(weight.shape)}, but peft's SHiRA layer with r={r} on "
                                 f"{base_weight.name} {list(base_weight.shape)} holds r * (out + in) = {count} values")
        self._check_plain(plain, set())


def validate(path: str | Path, base_model: str | Path | None = None, *, allow_nonfinite: bool = False) -> Report:
    """Check every adapter of the checkpoint at `path` (and against `base_model` when given).

    NaN or Inf tensor values are errors unless `allow_nonfinite` (then warnings); non-finite config
    numbers are always errors.
    """
    checkpoint = detect(path)
    base = BaseModel.open(base_model) if base_model is not None else None
    return validate_checkpoint(checkpoint, base, allow_nonfinite=allow_nonfinite)


def validate_checkpoint(checkpoint: Checkpoint, base: BaseModel | None = None, *,
                        allow_nonfinite: bool = False) -> Report:
    report = Report(checkpoint.path, checkpoint.format, [a.name for a in checkpoint.adapters])
    for adapter in checkpoint.adapters:
        _AdapterCheck(adapter, checkpoint.format, report, base, allow_nonfinite).run()
    return report
