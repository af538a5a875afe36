"""The commands of a registry server: `serve` (HTTP: API v1 and the hub download protocols) and
`token create|revoke|ls` (its bearer tokens, on the server's own database only).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ..errors import UnavailableError
from .common import echo_json, json_option, local_registry

#: Seconds `serve --wait-for-db` waits for the database when given no number, and between its log lines.
WAIT_FOR_DB = 300.0
WAIT_LOG_EVERY = 5.0


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port to listen on.")
@click.option("--home", type=click.Path(path_type=Path), help="Registry home (default: SWIFTREG_HOME).")
@click.option("--database-url", help="Any SQLAlchemy URL (default: SWIFTREG_DATABASE_URL, else SQLite in the home).")
@click.option("--store", metavar="FOLDER|URL", help="Blob store: a folder, file:///PATH or s3://BUCKET/PREFIX "
              "(default: SWIFTREG_STORE_URL, else HOME/blobs).")
@click.option("--no-redirect", is_flag=True, help="With object storage: stream downloads and uploads through the "
              "server instead of redirecting clients to presigned URLs (for storage clients cannot reach).")
@click.option("--anonymous-read", is_flag=True, help="Allow reads without a token.")
@click.option("--max-partial-bytes", type=click.IntRange(min=0), default=64 << 30, show_default=True,
              help="Bytes of unfinished uploads one namespace (or unlimited tokens together) may hold; 413 past it.")
@click.option("--upload-ttl", type=click.FloatRange(min=1), default=24 * 3600.0, show_default=True,
              help="Seconds an unfinished upload may sit idle before the server removes it (without gc).")
@click.option("--scrub-interval", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds between passes that rehash stored blobs not verified for --scrub-max-age, quarantining "
                   "corrupt ones (0: never; POST /api/v1/scrub runs one now).")
@click.option("--scrub-max-age", type=click.FloatRange(min=0), default=7 * 86400.0, show_default=True,
              help="A scrub pass rehashes the blobs whose last verification is older than this (seconds).")
@click.option("--public-url", callback=lambda _c, _p, v: _public_url(v), metavar="URL",
              help="The origin clients reach this server by (http(s)://host[:port]), named in absolute URLs the "
                   "server writes (pagination links). Default: the address each connection reached; the Host header "
                   "is never used.")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds a client has to send a request's headers; the connection is closed after that.")
@click.option("--body-timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds a request body may pause between two chunks; the request ends (an upload keeps what "
                   "arrived) and the connection is closed after that.")
@click.option("--keep-alive-timeout", type=click.IntRange(min=1), default=5, show_default=True,
              help="Seconds an idle keep-alive connection stays open between requests.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="The least severe level logged.")
@click.option("--log-format", default="json", show_default=True, type=click.Choice(["json", "text"]),
              help="json: one object per line (access log: request_id, status, bytes, duration_ms, token_id, ...).")
@click.option("--ssl-certfile", type=click.Path(path_type=Path), help="Serve HTTPS with this certificate (PEM).")
@click.option("--ssl-keyfile", type=click.Path(path_type=Path), help="The private key of --ssl-certfile (PEM).")
@click.option("--wait-for-db", "wait_for_db", type=click.FloatRange(min=0), is_flag=False, flag_value=WAIT_FOR_DB,
              default=None, metavar="[SECONDS]",
              help=f"When the database does not answer at start, wait for it up to SECONDS (default {WAIT_FOR_DB:.0f}) "
                   "instead of exiting at once.")
def serve(host: str, port: int, home: Path | None, database_url: str | None, store: str | None,
          anonymous_read: bool, max_partial_bytes: int, upload_ttl: float, scrub_interval: float,
          scrub_max_age: float, log_level: str, log_format: str,
          ssl_certfile: Path | None, ssl_keyfile: Path | None, wait_for_db: float | None,
          public_url: str | None = None, header_timeout: float = 10.0, body_timeout: float = 60.0,
          keep_alive_timeout: int = 5, no_redirect: bool = False) -> None:
    """Serve the registry over HTTP: swiftreg's API v1 and the Hugging Face download protocol.

    The database must answer at start: if it does not, one line says so and the command exits 1, or
    with --wait-for-db it waits (a line every few seconds). Once serving, an outage of the database,
    the blob store or the disk is answered 503 with Retry-After until it is over; /healthz reports it.
    """
    import logging

    import uvicorn

    from ..db.faults import database_fault
    from ..server.access_log import JsonLogFormatter
    from ..server.app import ServerSettings, create_app
    from ..server.hygiene import protocol
    from ..service import Registry
    from .. import constants
    from ..store.factory import open_store

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
    registry = Registry(home=home, database_url=database_url,
                        store=open_store(store, home or constants.home()) if store else None)
    _database_answers(registry.db.url, wait_for_db, logging.getLogger("swiftreg.server"))
    try:
        registry.db.migrate()  # before the first request, not during it
    except Exception as exc:
        if database_fault(exc) is None:
            raise
        raise _not_answering(registry.db.url, exc, None) from None
    app = create_app(registry, ServerSettings(anonymous_read=anonymous_read, max_partial_bytes=max_partial_bytes,
                                                   upload_ttl=upload_ttl, scrub_interval=scrub_interval,
                                                   scrub_max_age=scrub_max_age,
                                                   public_url=public_url, body_timeout=body_timeout,
                                                   redirect=not no_redirect))
    # log_config=None: uvicorn's own loggers go through the handler above; its text access log is
    # replaced by the JSON one of server/access_log.py (logged when a response ends, with its bytes).
    # http=: the h11 protocol with a deadline for request heads, whatever else is installed (hygiene.py)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30, log_config=None,
                http=protocol(header_timeout), timeout_keep_alive=keep_alive_timeout,
                access_log=False,
                ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)


def _database_answers(url: str, wait: float | None, log: Any) -> None:
    """Return once the database answers one query; without `wait` (seconds), raise at the first failure."""
    from ..db.faults import cause_of, ping, probe_engine, safe_url

    engine = probe_engine(url)
    started = time.monotonic()
    next_line = started
    try:
        while True:
            try:
                ping(engine)
            except Exception as exc:  # noqa: BLE001 - any failure: the database does not answer
                waited = time.monotonic() - started
                if wait is None or waited >= wait:
                    raise _not_answering(url, exc, wait) from None
                if time.monotonic() >= next_line:
                    log.warning("waiting for the database at %s (%s): %.0f s of %.0f s", safe_url(url),
                                cause_of(exc), waited, wait)
                    next_line += WAIT_LOG_EVERY
                time.sleep(0.5)
                continue
            if wait is not None:
                log.warning("the database at %s answers (after %.1f s)", safe_url(url), time.monotonic() - started)
            return
    finally:
        engine.dispose()


def _not_answering(url: str, exc: Exception, wait: float | None) -> UnavailableError:
    from ..db.faults import cause_of, safe_url

    waited = f" after waiting {wait:.0f} s" if wait else ""
    hint = "" if wait else "; start it, or give --wait-for-db [SECONDS]"
    return UnavailableError(f"the database at {safe_url(url)} does not answer{waited} ({cause_of(exc)}){hint}",
                            dependency="database")


def _public_url(value: str | None) -> str | None:
    """--public-url checked at parse time (http(s)://host[:port], no path)."""
    from ..errors import RegistryError
    from ..server.hygiene import public_origin

    if value is None:
        return None
    try:
        public_origin(value)
    except RegistryError as exc:
        raise click.BadParameter(str(exc)) from None
    return value.strip().rstrip("/")


@click.group()
def token() -> None:
    """Bearer tokens for `swiftreg serve` (stored only as hashes)."""


@token.command(name="create")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), required=True,
              help="What the token may do: read < write (push, tags, jobs) < admin (gc, stats).")
@click.option("--namespace", "namespaces", multiple=True, help="Limit the token to this namespace (repeatable).")
@click.option("--owner", default=lambda: __import__("getpass").getuser(), show_default="current user",
              help="Who the token is for (kept with it, shown by `token ls`).")
@json_option()
def token_create(scope: str, namespaces: tuple[str, ...], owner: str, as_json: bool) -> None:
    """Create a token; its secret is printed once and never stored."""
    from .. import tokens

    secret, info = tokens.create(local_registry("token create"), scope, owner, list(namespaces) or None)
    if as_json:
        echo_json({"id": info.id, "token": secret, "scope": info.scope, "namespaces": info.namespaces})
    else:
        click.echo(secret)
        click.secho(f"token {info.id} ({scope}{', namespaces ' + ','.join(namespaces) if namespaces else ''}): "
                    "keep it now, it cannot be shown again", err=True, fg="yellow")


@token.command(name="revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    """Revoke the token TOKEN_ID (its id, as `token ls` shows)."""
    from .. import tokens

    tokens.revoke(local_registry("token revoke"), token_id)
    click.echo(f"revoked token {token_id}")


@token.command(name="ls")
@json_option()
def token_list(as_json: bool) -> None:
    """List tokens (never their secrets)."""
    from .. import tokens

    rows = tokens.list_tokens(local_registry("token ls"))
    if as_json:
        echo_json([{**r.__dict__, "created_at": r.created_at.isoformat()} for r in rows])
        return
    for r in rows:
        click.echo(f"{r.id:>4}  {r.scope:<6} {r.owner:<16} {','.join(r.namespaces or ['*']):<20} "
                   f"{'revoked' if r.revoked else 'active'}")


COMMANDS = (serve, token)
