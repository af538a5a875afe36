"""Tensor-key grammar of both formats, written once.

A key is read from the right, segment by segment, never by substring search: the last one to
three segments say what the tensor is (its *role*: `lora_A`, `lora_embedding_B`, ...), which
adapter it belongs to (Swift only) and which parameter it is (`weight`, `bias`). Everything to
the left is the module path inside the base model and is never looked at, so a module named
`lora_A_proj`, `default_head` or even `lora_A` comes through untouched.

    Swift   model.layers.0.q_proj.lora_A.default.weight      embed.lora_embedding_A.default
            model.layers.0.q_proj.lora_magnitude_vector.default.weight
            lm_head.modules_to_save.default2.weight           (a leaked key of adapter default2)
    PEFT    base_model.model.model.layers.0.q_proj.lora_A.weight   base_model.model.embed.lora_embedding_A
            base_model.model.model.layers.0.q_proj.lora_magnitude_vector

Keys with no role (modules_to_save copies, biases with bias="all", embedding base weights) are
*plain*: they only gain or lose the `base_model.model.` prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

PEFT_PREFIX = "base_model.model."
MODULES_TO_SAVE = "modules_to_save"
PARAMS = frozenset({"weight", "bias"})


@dataclass(frozen=True)
class Role:
    """One kind of adapter tensor and how each format spells its key tail.

    `params`: trailing parameter segments the role takes in both formats (empty: none).
    `swift_param`: a parameter segment Swift always appends where PEFT writes none.
    `swift`: whether the role exists in Swift checkpoints at all.
    """

    name: str
    params: frozenset[str] = frozenset()
    swift_param: str | None = None
    swift: bool = True


@dataclass(frozen=True)
class TensorKey:
    """A key taken apart. `module` is the full key when `role` is None (a plain key)."""

    module: str
    role: Role | None = None
    param: str | None = None
    adapter: str | None = None

    def swift(self, adapter: str) -> str:
        if self.role is None:
            return self.module
        param = self.param or self.role.swift_param
        tail = f".{param}" if param else ""
        return f"{self.module}.{self.role.name}.{adapter}{tail}"

    def peft(self) -> str:
        if self.role is None:
            return PEFT_PREFIX + self.module
        tail = f".{self.param}" if self.param else ""
        return f"{PEFT_PREFIX}{self.module}.{self.role.name}{tail}"


class KeyGrammar:
    """Parses keys of both formats for a set of roles (the union of every known method's)."""

    def __init__(self, roles: Mapping[str, Role]) -> None:
        self.roles = dict(roles)

    def parse_swift(self, key: str) -> TensorKey:
        s = key.split(".")
        roles = self.roles
        if len(s) >= 4:
            role = roles.get(s[-3])
            if role is not None and (s[-1] in role.params or s[-1] == role.swift_param):
                param = s[-1] if s[-1] in role.params else None
                return TensorKey(".".join(s[:-3]), role, param, s[-2])
        if len(s) >= 3:
            role = roles.get(s[-2])
            if role is not None and not role.params and s[-1] not in PARAMS:
                return TensorKey(".".join(s[:-2]), role, None, s[-1])
            if role is not None and s[-1] in role.params:  # PEFT-style tail inside a Swift file
                return TensorKey(".".join(s[:-2]), role, s[-1], None)
        if len(s) >= 2:
            role = roles.get(s[-1])
            if role is not None and not role.params:
                return TensorKey(".".join(s[:-1]), role, None, None)
        for i in range(len(s) - 3, 0, -1):
            if s[i] == MODULES_TO_SAVE:
                return TensorKey(".".join(s[:i] + s[i + 2:]), None, None, s[i + 1])
        return TensorKey(key)

    def parse_peft(self, key: str) -> TensorKey | None:
        """None when the key lacks the `base_model.model.` prefix (PEFT would load nothing)."""
        if not key.startswith(PEFT_PREFIX):
            return None
        rest = key[len(PEFT_PREFIX):]
        s = rest.split(".")
        roles = self.roles
        if len(s) >= 3:
            role = roles.get(s[-2])
            if role is not None and s[-1] in role.params:
                return TensorKey(".".join(s[:-2]), role, s[-1])
            if role is not None and s[-1] == role.swift_param:  # ms-swift's `lora_magnitude_vector.weight`
                return TensorKey(".".join(s[:-2]), role, None)
        if len(s) >= 2:
            role = roles.get(s[-1])
            if role is not None and not role.params:
                return TensorKey(".".join(s[:-1]), role, None)
        return TensorKey(rest)
