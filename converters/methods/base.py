"""The shape every method module fills in."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..keys import Role


@dataclass(frozen=True)
class Method:
    """A tuner family both formats (or only PEFT) can hold.

    `swift_type` is None for methods Swift has no implementation of (SHiRA): converting those to
    Swift is refused. `pair_roles` are roles that must appear together on one module, and
    `variant` names the tuner type a config describes (LoRA with `use_dora` is DORA).
    """

    peft_type: str
    swift_type: str | None
    roles: tuple[Role, ...]
    config_class: str
    pair_roles: tuple[tuple[str, str], ...] = ()
    variant: Callable[[Mapping[str, Any]], str] = field(default=lambda config: "")

    def role(self, name: str) -> Role:
        return next(r for r in self.roles if r.name == name)

    def tuner_type(self, config: Mapping[str, Any]) -> str:
        return self.variant(config) or self.peft_type
