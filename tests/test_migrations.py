"""Alembic migrations are the only source of the schema: they must agree with the models exactly."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect as sa_inspect

from migrations import HEAD
from registry.db import Base, downgrade, make_engine, upgrade
from registry.db.engine import current_revision, head_revision


def _diff(engine) -> list:
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata)


def test_models_and_migrations_agree_and_downgrade_round_trips(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision() == HEAD
        assert _diff(engine) == []
        tables = set(sa_inspect(engine).get_table_names())
        assert {"adapters", "base_models", "revisions", "refs", "derived", "tokens", "jobs",
                "validation_runs"} <= tables
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(sa_inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert _diff(engine) == [] and current_revision(engine) == HEAD
    finally:
        engine.dispose()
