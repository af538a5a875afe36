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


def test_0002_adds_provenance_to_a_populated_registry_and_downgrades_without_touching_revisions(
        database_url: str, tmp_path) -> None:
    from registry.service import Registry
    from tests.helpers.checkpoints import write_peft_lora

    engine = make_engine(database_url)
    try:
        upgrade(engine, "0001")
        assert "provenance" not in sa_inspect(engine).get_table_names()
        reg = Registry(home=tmp_path / "home", database_url=database_url)  # opening upgrades to head
        source = {"hub": "hf", "endpoint": "https://huggingface.co", "repo": "someone/lora", "requested_revision": "v1",
                  "commit": "a" * 40, "subfolder": ""}
        pushed = reg.push(write_peft_lora(tmp_path / "a"), "team/a", provenance=source).revision
        assert current_revision(engine) == HEAD
        assert [p["commit"] for p in reg.show("team/a@1").provenance] == ["a" * 40]
        assert reg.find_import("team/a", "hf", "someone/lora", "a" * 40).number == pushed.number
        assert reg.find_import("team/a", "ms", "someone/lora", "a" * 40) is None
        again = reg.push(write_peft_lora(tmp_path / "a2"), "team/a", provenance=source)  # same bytes, same source
        assert not again.created and len(again.revision.provenance) == 1
        assert reg.list()[0].source["repo"] == "someone/lora"
        reg.close()
        downgrade(engine, "0001")
        assert "provenance" not in sa_inspect(engine).get_table_names()
        with engine.connect() as connection:
            from sqlalchemy import text

            assert connection.execute(text("SELECT count(*) FROM revisions")).scalar() == 1
    finally:
        engine.dispose()
