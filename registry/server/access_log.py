"""Structured access logs: one JSON object per request, written when the response has ended.

Why its own ASGI middleware: an HTTP middleware returns as soon as the response headers exist, so
for a 300 MB blob it would log a duration of a millisecond and no byte count. Wrapping `send` sees
the last body message, so `duration_ms` and `bytes` are what the client got (or `aborted` when the
connection went away first). Each request gets an `X-Request-Id` (the caller's, if it sent a sane
one) that appears in the log line and in the response, so a user's error report can be found.

The caller is named by token id and owner (set by `auth.require`), never by the secret.
"""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("swiftreg.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        record: dict[str, Any] = {"status": None, "bytes": 0, "done": False}

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                record["bytes"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    record["done"] = True
            elif message["type"] == "http.response.pathsend":  # a file handed to the server whole
                record["done"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            stats = getattr(getattr(scope.get("app"), "state", None), "stats", None)
            if isinstance(stats, dict) and "bytes_sent" in stats:  # response bodies: what the server sent
                stats["bytes_sent"] += record["bytes"]
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(_line(scope, record, request_id, started))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _line(scope: Scope, record: dict[str, Any], request_id: str, started: float) -> str:
    state = scope.get("state", {})
    client = scope.get("client")
    entry = {
        "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "client": client[0] if client else None,
        "method": scope.get("method"),
        "path": scope.get("path"),
        "query": scope.get("query_string", b"").decode("latin-1") or None,
        "status": record["status"] if record["status"] is not None else 500,
        "bytes": record["bytes"],
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "token_id": state.get("token_id"),
        "owner": state.get("token_owner"),
        "user_agent": _header(scope, b"user-agent"),
    }
    if not record["done"]:
        entry["aborted"] = True  # the client left (or the app failed) before the response ended
    return json.dumps(entry, separators=(",", ":"))


class JsonLogFormatter(logging.Formatter):
    """Every other log record as one JSON object too, so one pipeline reads the server's whole output."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == access_log.name:
            return message  # already a JSON object
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": message}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))
