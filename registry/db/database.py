"""The database handle: one engine, its schema brought to head on first use, and its sessions.

`Registry.db` is one of these. Everything beside the service that needs the registry's tables (tokens,
the job queue, validation history, the server's startup) goes through this public handle rather than
the service's internals, and the one dialect-specific statement (insert-or-ignore) is written once.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from .engine import ensure_schema, insert_ignore, make_engine, read_session, write_session


class Database:
    """A registry's database at `url` (SQLite or PostgreSQL); opening it costs no query."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = make_engine(url)
        self._schema_ready = False

    @property
    def engine(self) -> Engine:
        """The engine, with the schema migrated to head (done once, on first access, under a lock)."""
        if not self._schema_ready:
            self.migrate()
        return self._engine

    def migrate(self) -> None:
        """Bring the schema to head now, rather than on first use (a server does, before its first request)."""
        ensure_schema(self._engine)
        self._schema_ready = True

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`, known without touching the database."""
        return self._engine.dialect.name

    def read(self) -> AbstractContextManager[Session]:
        """A read transaction (a consistent snapshot on PostgreSQL; no write lock on SQLite)."""
        return read_session(self.engine)

    def write(self) -> AbstractContextManager[Session]:
        """A write transaction: committed on success, rolled back on any exception."""
        return write_session(self.engine)

    @staticmethod
    def insert_ignore(session: Session, model: type[Any], **values: Any) -> bool:
        """INSERT a row unless it collides with a unique constraint; whether it was inserted."""
        return insert_ignore(session, model, **values)

    def close(self) -> None:
        """Close the pooled connections (the handle opens new ones if used again)."""
        self._engine.dispose()
