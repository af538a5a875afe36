"""SHiRA: a sparse high-rank delta (PEFT only; ms-swift has no SHiRA)."""
from __future__ import annotations

from ..keys import Role
from .base import Method

SHIRA_WEIGHT = Role("shira_weight", swift=False)
SHIRA_INDICES = Role("shira_indices", swift=False)

METHOD = Method(
    peft_type="SHIRA",
    swift_type=None,
    roles=(SHIRA_WEIGHT, SHIRA_INDICES),
    config_class="ShiraConfig",
    pair_roles=(("shira_weight", "shira_indices"),),
)
