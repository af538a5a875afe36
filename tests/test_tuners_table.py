"""README's table of tuner types by operation is exactly what scripts/tuner_table.py makes of the code's own table."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.tuners


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("tuner_table", ROOT / "scripts" / "tuner_table.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_readme_tuner_table_is_generated_from_the_code() -> None:
    script = _script()
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert script.readme_block(text) == script.table(), "README.md is stale: run python scripts/tuner_table.py --write"


def test_every_row_names_each_operation_and_the_lora_row_can_do_everything() -> None:
    from converters.methods import tuners

    script = _script()
    lines = script.table().splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert len(rows) == 1 + len(tuners.PEFT_TUNERS) + len(tuners.SWIFT_TUNERS)
    assert "no" not in rows["LORA"].split(" | ")[2:]
    assert tuners.operations(tuners.BY_NAME["LOHA"])["vLLM"] == "no (merge)"
    assert tuners.operations(tuners.BY_NAME["PROMPT_TUNING"])["merge"] == "no"
