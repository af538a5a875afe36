"""Which database failures mean "the database is unavailable, retry later" rather than a bug, and how to
ask a database whether it answers.

`database_fault` reads an exception and answers the error of the tree a client should get instead:
UnavailableError (503, Retry-After) when the database cannot be reached or refused for a reason that
passes (connection refused or dropped, shutting down or starting up, too many connections, a lock or
statement timeout, a deadlock, SQLite's busy timeout or an unreadable file), InsufficientStorageError
(507) when its disk is full, and None for everything else: a failed statement that is a bug stays a
500. Classified by PostgreSQL's SQLSTATE class (psycopg files several unrelated classes under
OperationalError, "statement too complex" among them) and by SQLite's message (sqlite3 has no codes
for these).

`ping` runs one cheap query on a connection of its own with a short timeout, never waiting behind the
request pool: the server's readiness check, the watcher that notices a recovery, and `serve`'s start.
"""
from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from ..errors import InsufficientStorageError, UnavailableError

#: PostgreSQL SQLSTATE classes (and codes) that pass on their own: connection exceptions, insufficient
#: resources, operator intervention (shutdown, start-up, statement timeout), system (I/O) errors, transaction
#: rollbacks (deadlock, serialization), lock not available.
_PG_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_PG_TRANSIENT_CODES = ("55P03",)
_PG_DISK_FULL = "53100"
#: sqlite3.OperationalError messages that mean the file cannot be used now (busy past its timeout, I/O).
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "disk i/o error",
                     "unable to open database file", "attempt to write a readonly database")
_SQLITE_FULL = "database or disk is full"

#: Seconds a readiness ping may take (connect and query) before the database counts as down.
PING_TIMEOUT = 3.0


def safe_url(url: str | Any) -> str:
    """The URL without its password, for a log line or a message."""
    return make_url(str(url)).render_as_string(hide_password=True)


def cause_of(error: BaseException) -> str:
    """The driver's own first line ("connection refused", "database is locked"), without SQLAlchemy's
    statement dump and documentation link."""
    inner = error.orig if isinstance(error, exc.DBAPIError) and error.orig is not None else error
    lines = str(inner).strip().splitlines()
    return (lines[0] if lines else type(inner).__name__)[:300]


def database_fault(error: BaseException) -> UnavailableError | InsufficientStorageError | None:
    """The refusal a client should get for `error`, when it is the database being unavailable or full."""
    if isinstance(error, (exc.DisconnectionError, exc.TimeoutError)):  # pool: gave up reconnecting, or no slot
        return _unavailable()
    if not isinstance(error, exc.DBAPIError):
        return None
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == _PG_DISK_FULL:
        return InsufficientStorageError("the database's disk is full: nothing was written; free space on the "
                                        "database server and retry", writing="database")
    if isinstance(orig, sqlite3.OperationalError):
        message = str(orig).lower()
        if _SQLITE_FULL in message:
            return InsufficientStorageError("the disk holding the database is full: nothing was written; free "
                                            "space and retry", writing="database")
        return _unavailable() if any(m in message for m in _SQLITE_TRANSIENT) else None
    if error.connection_invalidated:
        return _unavailable()
    if sqlstate is not None:
        transient = sqlstate[:2] in _PG_TRANSIENT_CLASSES or sqlstate in _PG_TRANSIENT_CODES
        return _unavailable() if transient else None
    # No SQLSTATE: the driver's own failure to connect or to keep the connection (psycopg's
    # OperationalError / InterfaceError: refused, timed out, closed by the server).
    if isinstance(error, (exc.OperationalError, exc.InterfaceError)):
        return _unavailable()
    return None


def _unavailable() -> UnavailableError:
    return UnavailableError("the database is unavailable: nothing was changed; retry in a few seconds",
                            dependency="database")


def probe_engine(url: str) -> Engine:
    """An engine for pings only: no pool (a ping never waits for a request's connection) and short timeouts."""
    from .engine import normalise_url

    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return create_engine(url, poolclass=NullPool, connect_args={"timeout": PING_TIMEOUT})
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": max(1, int(PING_TIMEOUT))})


def ping(engine: Engine) -> None:
    """One query on a fresh connection of `engine` (a probe_engine); raises what the driver raised."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":  # a SET, not a startup option: poolers refuse those
            connection.execute(text(f"SET statement_timeout = {int(PING_TIMEOUT * 1000)}"))
        connection.execute(text("SELECT 1"))
