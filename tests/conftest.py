"""Suite-wide settings: deterministic CPU kernels, offline hubs, and the ms-swift environment check."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)  # same kernels as the ms-swift side: equivalence is checked to the bit


@pytest.fixture(scope="session")
def swift_python() -> str:
    """The ms-swift interpreter. Never skipped: a missing environment fails the oracle tier loudly."""
    python = os.environ.get("SWIFTREG_SWIFT_PYTHON")
    if not python or not os.path.exists(python):
        pytest.fail("SWIFTREG_SWIFT_PYTHON is not set to an ms-swift interpreter: run the suite with scripts/test, "
                    "which builds that environment once and sets it", pytrace=False)
    return python


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory: pytest.TempPathFactory):
    from tests.models import build_base

    return build_base("llama", tmp_path_factory.mktemp("base") / "llama")
