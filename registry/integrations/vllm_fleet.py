"""The vLLM fleet recipe: a webhook receiver that keeps every vLLM server of a fleet serving what a tag names now.

vLLM caches a LoRA by the name it was requested under, so after `team/x@prod` moves a server keeps
serving the old revision until that name is unloaded (registry/integrations/vllm.py). This receiver gets
swiftreg's webhook deliveries, checks their signature, and for every ref an event moved or removed
(`tag.moved`, `tag.deleted`, and `revision.created` for the `main` a push moved) unloads the names that
follow it (`team/x@prod`; `team/x` and `team/x@main` for `main`) from each server with
`POST /v1/unload_lora_adapter` (vLLM started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). The next request
for the name asks swiftreg's resolver plugin again, which loads the revision the tag points to now;
no server restarts. A name that was not loaded is fine (vLLM answers 404/400: nothing to do).

    swiftreg webhook add http://fleet-refresher:9000/ --namespace team --event tag.moved --event tag.deleted \
        --event revision.created --secret "$SECRET"
    WEBHOOK_SECRET="$SECRET" python -m registry.integrations.vllm_fleet --port 9000 \
        --vllm http://vllm-0:8000 --vllm http://vllm-1:8000

It answers 2xx once every server was told (or had nothing loaded), 401 for a bad signature, and 502 when a
server could not be reached, so swiftreg retries the delivery later (deliveries are at least once, and an
unload is idempotent). Standard library and httpx only; runs beside the fleet, not in the registry.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable

from ..webhooks.signing import DELIVERY_HEADER, SignatureError, verify_headers

log = logging.getLogger("swiftreg.vllm_fleet")

#: Events after which a name that follows a ref may serve a stale revision.
EVENTS = ("tag.moved", "tag.deleted", "revision.created")


def names_to_unload(payload: dict[str, Any]) -> list[str]:
    """The vLLM adapter names a delivery makes stale: `ns/name@ref` for each ref it moved or removed (one that
    pointed somewhere before), plus `ns/name` for `main` (no ref means main)."""
    swiftreg = payload.get("swiftreg") or {}
    if swiftreg.get("event") not in EVENTS:
        return []
    repo = (payload.get("repo") or {}).get("name")
    names: list[str] = []
    for ref in payload.get("updatedRefs") or []:
        if not repo or not ref.get("oldSha"):
            continue  # a ref that is new was not loadable before: nothing cached under it
        short = str(ref.get("ref", "")).split("/", 2)[-1]
        names.append(f"{repo}@{short}")
        if short == "main" and ref.get("ref", "").startswith("refs/heads/"):
            names.append(repo)
    return names


@dataclass
class FleetRefresher:
    """Unloads stale names from every server in `servers` (base URLs of vLLM's OpenAI server)."""

    servers: list[str]
    secret: str
    timeout: float = 30.0
    unloaded: list[tuple[str, str]] = field(default_factory=list)   # (server, name) vLLM confirmed
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, body: bytes, headers: Any) -> tuple[int, dict[str, Any]]:
        """One delivery: (HTTP status, JSON answer)."""
        try:
            verify_headers(self.secret, body, headers)
        except SignatureError as exc:
            return 401, {"error": str(exc)}
        delivery = headers.get(DELIVERY_HEADER) or ""
        with self._lock:
            if delivery and delivery in self._seen:
                return 200, {"duplicate": delivery}
        names = names_to_unload(json.loads(body))
        failures = []
        for server in self.servers:
            for name in names:
                problem = self._unload(server, name)
                if problem:
                    failures.append(f"{server}: {problem}")
        if failures:
            return 502, {"error": "; ".join(failures)}
        with self._lock:
            self._seen[delivery] = None
            while len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        return 200, {"unloaded": names}

    def _unload(self, server: str, name: str) -> str | None:
        import httpx

        try:
            answer = httpx.post(f"{server.rstrip('/')}/v1/unload_lora_adapter", json={"lora_name": name},
                                timeout=self.timeout)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if answer.status_code == 200:
            log.info("unloaded %s from %s", name, server)
            with self._lock:
                self.unloaded.append((server, name))
            return None
        if answer.status_code in (400, 404):  # not loaded there: nothing stale to drop
            return None
        return f"unload {name}: HTTP {answer.status_code} {answer.text[:200]}"


def serve(refresher: FleetRefresher, host: str = "127.0.0.1", port: int = 9000) -> ThreadingHTTPServer:
    """An HTTP server (not started: call serve_forever) that hands every POST to `refresher`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            if length > 1 << 20:
                self.send_error(413)
                return
            status, answer = refresher.handle(self.rfile.read(length), self.headers)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--vllm", action="append", required=True, help="a vLLM server's base URL (repeatable)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(list(argv) if argv is not None else None)
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        parser.error("set WEBHOOK_SECRET to the webhook's secret (never on the command line)")
    logging.basicConfig(level=logging.INFO)
    serve(FleetRefresher(args.vllm, secret), args.host, args.port).serve_forever()


if __name__ == "__main__":
    main()
