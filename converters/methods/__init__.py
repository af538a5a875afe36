"""Per-method rules, one module per tuner family, all with the same shape (like PEFT's tuners/).

Each method module defines `METHOD`: its PEFT and Swift type names, its tensor roles and how it
names its tuner type. Adding a method means adding one module here and listing it below.
"""
from __future__ import annotations

from ..keys import KeyGrammar, Role
from .base import Method
from .lora import METHOD as LORA
from .shira import METHOD as SHIRA
from .swift_only import SWIFT_ONLY_TUNERS, explain_swift_only

METHODS: tuple[Method, ...] = (LORA, SHIRA)
BY_PEFT_TYPE = {m.peft_type: m for m in METHODS}
BY_SWIFT_TYPE = {m.swift_type: m for m in METHODS if m.swift_type}
ROLES: dict[str, Role] = {r.name: r for m in METHODS for r in m.roles}
GRAMMAR = KeyGrammar(ROLES)

__all__ = ["Method", "METHODS", "BY_PEFT_TYPE", "BY_SWIFT_TYPE", "ROLES", "GRAMMAR", "LORA", "SHIRA",
           "SWIFT_ONLY_TUNERS", "explain_swift_only"]
