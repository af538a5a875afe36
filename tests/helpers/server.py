"""A real `swiftreg serve` (uvicorn on 127.0.0.1, a free port) for integration tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    home: Path
    database_url: str
    admin_token: str
    write_token: str
    read_token: str
    process: subprocess.Popen

    def token(self, scope: str, namespace: str | None = None) -> str:
        """A fresh token made with the real CLI against the server's database."""
        args = [sys.executable, "-m", "registry.cli", "token", "create", "--scope", scope, "--json"]
        if namespace:
            args += ["--namespace", namespace]
        done = subprocess.run(args, env=registry_env(self.home, self.database_url), capture_output=True, text=True,
                              check=True)
        import json

        return json.loads(done.stdout)["token"]


def registry_env(home: Path, database_url: str) -> dict[str, str]:
    """The environment of a swiftreg process on this registry: no SWIFTREG_* variable of the test run leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
    env.update(SWIFTREG_HOME=str(home), SWIFTREG_DATABASE_URL=database_url)
    if os.environ.get("SWIFTREG_SWIFT_PYTHON"):
        env["SWIFTREG_SWIFT_PYTHON"] = os.environ["SWIFTREG_SWIFT_PYTHON"]
    return env


def _tokens(home: Path, database_url: str) -> tuple[str, str, str]:
    """An admin, a write and a read token, made in this process (three CLI processes would cost seconds per
    server); `Server.token` and the CLI tests make theirs with the real `swiftreg token create`."""
    from registry import tokens
    from registry.service import Registry

    reg = Registry(home=home, database_url=database_url)
    try:
        admin, write, read = (tokens.create(reg, scope, "tests")[0] for scope in ("admin", "write", "read"))
    finally:
        reg.close()
    return admin, write, read


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it has not exited within `grace` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_server(home: Path, database_url: str, *, anonymous_read: bool = False,
                   extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Iterator[Server]:
    port = free_port()
    args = [sys.executable, "-m", "registry.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", *extra_args]
    if anonymous_read:
        args.append("--anonymous-read")
    # the server writes its log for as long as it runs: closed in the finally below, not by a with block
    log = open(home.parent / f"server-{port}.log", "w") if home.parent.exists() else subprocess.DEVNULL  # noqa: SIM115
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(args, env={**registry_env(home, database_url), **(env or {})}, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"{'https' if '--ssl-certfile' in extra_args else 'http'}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"swiftreg serve exited with {process.returncode}; "
                                   f"see {home.parent}/server-{port}.log")
            try:
                if httpx.get(url + "/healthz", timeout=1, verify=False).status_code == 200:  # local self-signed TLS
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("swiftreg serve did not answer /healthz within 60 s")
            time.sleep(0.1)
        admin, write, read = _tokens(home, database_url)
        yield Server(url, home, database_url, admin, write, read, process)
    finally:
        stop(process)
        if log is not subprocess.DEVNULL:
            log.close()
