"""The databases every registry test runs on: SQLite always, PostgreSQL when SWIFTREG_TEST_DATABASE_URL is set.

A PostgreSQL test gets a fresh, empty database of its own (created in the configured server, dropped
after), and the marker `postgres`, so `-m "not postgres"` runs the SQLite half alone.
"""
from __future__ import annotations

import os
import uuid

import pytest


def postgres_configured() -> bool:
    return bool(os.environ.get("SWIFTREG_TEST_DATABASE_URL"))


#: pytest params for a per-database fixture: "sqlite", and "postgresql" (marked `postgres`) when configured.
DATABASES = ["sqlite"] + ([pytest.param("postgresql", marks=pytest.mark.postgres)] if postgres_configured() else [])


def _postgres_admin_url() -> str:
    return os.environ["SWIFTREG_TEST_DATABASE_URL"]


def create_postgres_database() -> str:
    """A fresh, empty PostgreSQL database for one test; unreachable PostgreSQL fails the test."""
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
