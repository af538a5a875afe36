"""moto's standalone S3 server (moto[server]: its own WSGI app, `DomainDispatcherApplication`) in a process the
tests control, with what moto leaves out and real S3 does:

- presigned URLs are checked: an expired one (X-Amz-Date + X-Amz-Expires in the past) is 403
  AccessDenied "Request has expired", one whose signature does not cover this request (another key, part
  or method) is 403 SignatureDoesNotMatch (SigV4 recomputed with the secret key; moto 5.2.5 accepts both);
- the server can stop listening and listen again on the same port while its state survives, which is how
  a stopped S3 endpoint (or a network partition) looks to a client: connection refused, and afterwards the
  parts of an unfinished multipart upload are still there, as on S3. (moto keeps everything in memory, so
  killing and restarting the process would lose them: a test of "completes after it restarts without
  re-sending finished parts" could not tell resumption from re-sending.) SIGUSR1 stops listening, SIGUSR2
  listens again; `POST /_swiftreg/stop-after-parts?n=K` stops it after K more presigned part uploads;
- counters (`GET /_swiftreg/stats`): presigned part PUTs, bytes PUT and bytes GET through presigned URLs.

Every answer closes its connection (HTTP/1.0), so "stopped" means refused for every next request.

Run: python -m tests.helpers.s3_server PORT (AWS_SECRET_ACCESS_KEY: the key URLs are signed with).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, quote


class Control:
    def __init__(self) -> None:
        self.stats = {"part_puts": 0, "presigned_put_bytes": 0, "presigned_get_bytes": 0, "refused": 0}
        self.stop_after: int | None = None
        self.lock = threading.Lock()
        self.on_stop: Callable[[], None] = lambda: None


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def check_presigned(environ: dict[str, Any], secret: str, now: float | None = None) -> str | None:
    """None when the presigned request is valid, else the S3 error code and message."""
    pairs = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    query = dict(pairs)
    try:
        amz_date = query["X-Amz-Date"]
        expires = int(query["X-Amz-Expires"])
        credential = query["X-Amz-Credential"]
        signed_headers = query["X-Amz-SignedHeaders"]
        signature = query["X-Amz-Signature"]
    except (KeyError, ValueError):
        return "AuthorizationQueryParametersError: incomplete presigned query"
    signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    if (now if now is not None else time.time()) > signed_at + expires:
        return "AccessDenied: Request has expired"
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")
    path = raw.split("?", 1)[0]
    canonical_query = "&".join(sorted(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs
                                      if k != "X-Amz-Signature"))
    headers = ""
    for name in signed_headers.split(";"):
        value = environ.get("HTTP_HOST", "") if name == "host" else environ.get(
            "HTTP_" + name.upper().replace("-", "_"), environ.get(name.upper().replace("-", "_"), ""))
        headers += f"{name}:{value.strip()}\n"
    request = "\n".join([environ["REQUEST_METHOD"], path, canonical_query, headers, signed_headers,
                         "UNSIGNED-PAYLOAD"])
    _, day, region, service, terminal = credential.split("/")
    scope = f"{day}/{region}/{service}/{terminal}"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(("AWS4" + secret).encode(), day), region), service), terminal)
    if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature):
        return "SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided"
    return None


class Checked:
    """WSGI middleware in front of moto's app (see the module docstring)."""

    def __init__(self, app: Any, secret: str, control: Control) -> None:
        self.app, self.secret, self.control = app, secret, control

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_swiftreg/"):
            return self._control(environ, start_response, path)
        query = environ.get("QUERY_STRING", "")
        if "X-Amz-Signature=" not in query:
            return self.app(environ, start_response)  # header-signed (boto3 itself): as moto does
        problem = check_presigned(environ, self.secret)
        if problem is not None:
            code, message = problem.split(": ", 1)
            with self.control.lock:
                self.control.stats["refused"] += 1
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
                    "</Error>").encode()
            start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        method = environ["REQUEST_METHOD"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        status_box: list[str] = []

        def recording(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_box.append(status)
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        result = self.app(environ, recording)
        body = b"".join(result)
        ok = bool(status_box) and status_box[0].startswith("2")
        stop = False
        with self.control.lock:
            if method == "PUT" and ok:
                self.control.stats["presigned_put_bytes"] += length
                if "partNumber=" in query:
                    self.control.stats["part_puts"] += 1
                    if self.control.stop_after is not None:
                        self.control.stop_after -= 1
                        stop = self.control.stop_after <= 0
                        if stop:
                            self.control.stop_after = None
            elif method == "GET" and ok:
                self.control.stats["presigned_get_bytes"] += len(body)
        if stop:
            threading.Thread(target=self.control.on_stop, daemon=True).start()
        return [body]

    def _control(self, environ: dict[str, Any], start_response: Any, path: str) -> Iterable[bytes]:
        query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
        if path == "/_swiftreg/stop-after-parts":
            with self.control.lock:
                self.control.stop_after = int(query["n"])
        elif path == "/_swiftreg/reset":
            with self.control.lock:
                for k in self.control.stats:
                    self.control.stats[k] = 0
        with self.control.lock:
            body = json.dumps(self.control.stats).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def main() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    port = int(sys.argv[1])
    control = Control()
    app = Checked(DomainDispatcherApplication(create_backend_app), os.environ["AWS_SECRET_ACCESS_KEY"], control)

    class OneRequest(MotoRequestHandler):
        protocol_version = "HTTP/1.0"  # every answer closes its connection

    lock = threading.Lock()
    current: list[Any] = []

    def start() -> None:
        with lock:
            if current:
                return
            for _ in range(200):
                try:
                    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=OneRequest)
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise SystemExit(f"port {port} stayed busy")
            current.append(server)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop() -> None:
        with lock:
            if not current:
                return
            server = current.pop()
            server.shutdown()
            server.server_close()

    control.on_stop = stop
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=stop, daemon=True).start())
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=start, daemon=True).start())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
