"""Engines, transactions and migrations for SQLite (embedded default) and PostgreSQL.

SQLite: WAL so readers never wait for a writer, a generous busy timeout, foreign keys on, and
`BEGIN IMMEDIATE` for write transactions so two pushes serialise at BEGIN instead of failing at
COMMIT. PostgreSQL: row locks (`SELECT ... FOR UPDATE`) taken by the service; a connect timeout, TCP
keepalives and pre-ping (PG_CONNECT_ARGS), so while the server is down a request fails in seconds
(faults.py says which failures mean "unavailable") and after it the pool recovers by itself.

The schema exists only through Alembic (`migrations/`): `upgrade()` is the one way to create it and
runs automatically, under a lock, the first time a registry opens a database.
"""
from __future__ import annotations

import contextlib
from importlib import resources
from pathlib import Path
from typing import Iterator

from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session

WRITE = "swiftreg_write"
ADVISORY_LOCK_KEY = 0x5357_4654  # "SWFT": serialises migrations across processes on PostgreSQL
#: libpq settings of every PostgreSQL connection (a setting in the URL's query wins): seconds to connect,
#: and keepalives that notice a dead server within about a minute.
PG_CONNECT_ARGS: dict[str, Any] = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 30,
                                   "keepalives_interval": 10, "keepalives_count": 3}


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here; everything else passes through."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 120, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=120000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            immediate = connection.get_execution_options().get(WRITE)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    # A request must fail in seconds, not minutes, while PostgreSQL is down or unreachable: a connect
    # timeout, and TCP keepalives so a connection to a server that vanished is noticed; pre-ping so the
    # pool drops the connections an outage broke and the first request after it does not fail on one.
    given = make_url(url).query
    connect_args = {k: v for k, v in PG_CONNECT_ARGS.items() if k not in given}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


@contextlib.contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One write transaction: committed on success, rolled back on any exception."""
    with engine.connect() as connection:
        connection.execution_options(**{WRITE: True})
        with Session(bind=connection, expire_on_commit=False) as session, session.begin():
            yield session


@contextlib.contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(bind=engine, expire_on_commit=False) as session, session.begin():
        yield session


def insert_ignore(session: Session, model: type[Any], **values: Any) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; whether the row was inserted (False: a unique key already held it).

    The one dialect-specific statement of the registry: neither SQLAlchemy core nor both databases
    share a spelling, and racing writers (two pushes, two submissions with one key) rely on it.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":  # imported here: the PostgreSQL dialect's catalog costs an embedded registry 25 ms
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    statement = insert(model)
    key = model.__table__.primary_key.columns  # RETURNING, not rowcount: psycopg reports -1 for ORM inserts
    return session.execute(statement.values(**values).on_conflict_do_nothing().returning(*key)).first() is not None


def _alembic_config(connection: Connection | None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("migrations")))
    config.attributes["connection"] = connection
    return config


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    config = _alembic_config(None)
    return ScriptDirectory.from_config(config).get_current_head() or ""


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "sqlite":
        from filelock import FileLock

        database = make_url(str(engine.url)).database
        lock_path = f"{database}.migrate.lock" if database and database != ":memory:" else None
        with (FileLock(lock_path) if lock_path else contextlib.nullcontext()):
            with engine.connect() as connection:
                yield connection
    else:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            connection.commit()
            try:
                yield connection
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
                connection.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    with _migration_lock(engine) as connection:
        command.upgrade(_alembic_config(connection), revision)
        connection.commit()


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with _migration_lock(engine) as connection:
        command.downgrade(_alembic_config(connection), revision)
        connection.commit()


def ensure_schema(engine: Engine) -> None:
    """Bring the schema to head if it is not there yet (first use of a registry).

    Checked with one query and no Alembic import when the schema is current, which it almost
    always is: opening a registry must stay cheap.
    """
    from migrations import HEAD

    try:
        with engine.connect() as connection:
            current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:  # no alembic_version table yet: an empty database
        current = None
    if current != HEAD:
        upgrade(engine)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"
