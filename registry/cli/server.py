"""The commands of a registry server: `serve` (HTTP: API v1 and the hub download protocols) and
`token create|revoke|ls` (its bearer tokens, on the server's own database only).
"""
from __future__ import annotations

from pathlib import Path

import click

from .common import echo_json, json_option, local_registry


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port to listen on.")
@click.option("--home", type=click.Path(path_type=Path), help="Registry home (default: SWIFTREG_HOME).")
@click.option("--database-url", help="Any SQLAlchemy URL (default: SWIFTREG_DATABASE_URL, else SQLite in the home).")
@click.option("--store", type=click.Path(path_type=Path), help="Blob store folder (default: HOME/blobs).")
@click.option("--anonymous-read", is_flag=True, help="Allow reads without a token.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="The least severe level logged.")
@click.option("--log-format", default="json", show_default=True, type=click.Choice(["json", "text"]),
              help="json: one object per line (access log: request_id, status, bytes, duration_ms, token_id, ...).")
@click.option("--ssl-certfile", type=click.Path(path_type=Path), help="Serve HTTPS with this certificate (PEM).")
@click.option("--ssl-keyfile", type=click.Path(path_type=Path), help="The private key of --ssl-certfile (PEM).")
def serve(host: str, port: int, home: Path | None, database_url: str | None, store: Path | None,
          anonymous_read: bool, log_level: str, log_format: str, ssl_certfile: Path | None,
          ssl_keyfile: Path | None) -> None:
    """Serve the registry over HTTP: swiftreg's API v1 and the Hugging Face download protocol."""
    import logging

    import uvicorn

    from ..server.access_log import JsonLogFormatter
    from ..server.app import ServerSettings, create_app
    from ..service import Registry
    from ..store import LocalBlobStore

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if log_format == "json"
                         else logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
    registry = Registry(home=home, database_url=database_url, store=LocalBlobStore(store) if store else None)
    registry.db.migrate()  # before the first request, not during it
    app = create_app(registry, ServerSettings(anonymous_read=anonymous_read))
    # log_config=None: uvicorn's own loggers go through the handler above; its text access log is
    # replaced by the JSON one of server/access_log.py (logged when a response ends, with its bytes).
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30, log_config=None,
                access_log=False,
                ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)


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
