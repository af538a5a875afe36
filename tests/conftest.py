"""Suite-wide settings and the fixtures every test module shares.

Settings: deterministic CPU kernels, offline hubs. Fixtures: the ms-swift interpreter, a tiny Llama
base, a registry on each configured database, and real `swiftreg serve` processes. Helpers that are
not fixtures live in tests/helpers/.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.helpers.databases import (  # noqa: E402
    DATABASES,
    create_postgres_database,
    drop_postgres_database,
    postgres_configured,
)
from tests.helpers.server import Server, running_server  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)  # same kernels as the ms-swift side: equivalence is checked to the bit


#: fixture -> the tier marker every test using it (directly or through another fixture) gets, so that
#: `-m "not server"` or `-m "not oracle"` deselects it without each module having to say so.
TIER_OF_FIXTURE = {"server": "server", "fresh_server": "server", "swift_python": "oracle"}


def _gpu_tier_runs_here() -> bool:
    """Whether the `gpu` tier can run: a CUDA device, or the CPU stand-in (SWIFTREG_GPU_TEST_DEVICE=cpu, set by
    `scripts/gpu-check --cpu`)."""
    if os.environ.get("SWIFTREG_GPU_TEST_DEVICE", "cuda").startswith("cpu"):
        return True
    import torch

    return bool(torch.cuda.is_available())


def pytest_report_header(config: pytest.Config) -> str | None:
    if _gpu_tier_runs_here():
        return None
    return ("gpu tier: deselected (no CUDA device); tests/test_gpu_check.py runs it on the CPU stand-in through "
            "`scripts/gpu-check --cpu`, and `scripts/gpu-check` on a GPU machine")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in TIER_OF_FIXTURE:
                item.add_marker(TIER_OF_FIXTURE[fixture])
    if not _gpu_tier_runs_here():  # deselected, not skipped: the suite reports no skips (issue 19's one exception)
        gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
        if gpu:
            config.hook.pytest_deselected(items=gpu)
            items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


@pytest.fixture(scope="session")
def swift_python() -> str:
    """The ms-swift interpreter. Never skipped: a missing environment fails the oracle tier loudly."""
    python = os.environ.get("SWIFTREG_SWIFT_PYTHON")
    if not python or not os.path.exists(python):
        pytest.fail("SWIFTREG_SWIFT_PYTHON is not set to an ms-swift interpreter: run the suite with scripts/test, "
                    "which builds that environment once and sets it", pytrace=False)
    return python


@pytest.fixture(scope="session")
def llama_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.models import build_base

    return build_base("llama", tmp_path_factory.mktemp("base") / "llama")


# ----- registry fixtures: every registry test runs on SQLite, and on PostgreSQL when configured -----

@contextmanager
def _fresh_database(postgres: bool, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a new PostgreSQL database (dropped after), or SQLite in tmp_path."""
    if not postgres:
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with _fresh_database(request.param != "sqlite", tmp_path) as url:
        yield url


@pytest.fixture
def one_database_url(tmp_path: Path) -> Iterator[str]:
    """PostgreSQL when configured (CI), else SQLite: for paths tested on both databases elsewhere."""
    with _fresh_database(postgres_configured(), tmp_path) as url:
        yield url


@pytest.fixture
def reg(database_url: str, tmp_path: Path) -> Iterator[Any]:
    """A fresh registry (home in tmp_path) on each configured database."""
    from registry.service import Registry

    registry = Registry(home=tmp_path / "home", database_url=database_url)
    yield registry
    registry.close()


# ----- real servers ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=DATABASES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `swiftreg serve` per module and database, shared by the module's tests (starting one costs seconds)."""
    root = tmp_path_factory.mktemp(f"server-{request.param}")
    url = f"sqlite:///{root / 'registry.db'}" if request.param == "sqlite" else create_postgres_database()
    try:
        with running_server(root / "home", url) as srv:
            yield srv
    finally:
        if request.param != "sqlite":
            drop_postgres_database(url)


@pytest.fixture
def fresh_server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    """A `swiftreg serve` of its own for one test, on each configured database (for tests that count or kill)."""
    with running_server(tmp_path / "server", database_url) as srv:
        yield srv
