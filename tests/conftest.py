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


# ----- registry fixtures: every registry test runs on SQLite, and on PostgreSQL when configured -----

DATABASES = ["sqlite"] + (["postgresql"] if os.environ.get("SWIFTREG_TEST_DATABASE_URL") else [])


def _postgres_admin_url() -> str:
    return os.environ["SWIFTREG_TEST_DATABASE_URL"]


def create_postgres_database() -> str:
    """A fresh, empty PostgreSQL database for one test; unreachable PostgreSQL fails the test."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from registry.db.engine import normalise_url

    admin_url = normalise_url(_postgres_admin_url())
    name = f"swiftreg_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - turned into a loud failure, never a skip
        pytest.fail(f"SWIFTREG_TEST_DATABASE_URL is set but PostgreSQL is unreachable: {exc}", pytrace=False)
    finally:
        admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from registry.db.engine import normalise_url

    name = make_url(url).database
    admin = create_engine(normalise_url(_postgres_admin_url()), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture
def reg(database_url: str, tmp_path):
    """A fresh registry (home in tmp_path) on each configured database."""
    from registry.service import Registry

    registry = Registry(home=tmp_path / "home", database_url=database_url)
    yield registry
    registry.close()
