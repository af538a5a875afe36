"""A real S3-protocol server on 127.0.0.1 for the object-storage tests: moto's standalone server
(tests/helpers/s3_server.py: moto's own app, with presigned URLs checked and a stop/listen-again switch).

A missing moto is a skip, and in the full suite (SWIFTREG_FULL_SUITE=1) a failure: scripts/test installs it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.helpers.server import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY_ID, SECRET = "AKIASWIFTREGTESTKEY1", "swiftreg-test-secret-key-0123456789abcdef"


def require_moto() -> None:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        message = f"moto[server] and boto3 are needed for the object-storage tests ({exc}): pip install 'moto[server]'"
        if os.environ.get("SWIFTREG_FULL_SUITE") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@dataclass
class S3Server:
    port: int
    process: subprocess.Popen
    bucket: str = "swiftreg-test"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The AWS_* variables a process needs to reach this server."""
        return {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                            region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))

    def _control(self, what: str) -> dict[str, int]:
        with urllib.request.urlopen(self.endpoint + "/_swiftreg/" + what, data=b"", timeout=10) as answer:
            stats: dict[str, int] = json.loads(answer.read())
            return stats

    def stats(self) -> dict[str, int]:
        return self._control("stats")

    def reset_stats(self) -> None:
        self._control("reset")

    def stop_after_parts(self, n: int) -> None:
        self._control(f"stop-after-parts?n={n}")

    def stop_listening(self) -> None:
        os.kill(self.process.pid, signal.SIGUSR1)
        _wait(self.port, up=False)

    def listen_again(self) -> None:
        os.kill(self.process.pid, signal.SIGUSR2)
        _wait(self.port, up=True)

    def listening(self) -> bool:
        return _answers(self.port)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _wait(port: int, up: bool, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while _answers(port) != up:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the S3 server on port {port} did not {'start' if up else 'stop'} listening")
        time.sleep(0.05)


@contextmanager
def running_s3(log: Path | None = None, part_min: int = 256 << 10) -> Iterator[S3Server]:
    """moto on a free port with one bucket (S3_UPLOAD_PART_MIN_SIZE lowered so tests use small parts)."""
    require_moto()
    port = free_port()
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, "S3_UPLOAD_PART_MIN_SIZE": str(part_min),
           "MOTO_PORT": str(port)}
    out = open(log, "w") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "tests.helpers.s3_server", str(port)], cwd=ROOT, env=env,
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the moto S3 server did not start (exit {process.poll()}); see {log}")
            time.sleep(0.05)
        server = S3Server(port, process)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if out is not subprocess.DEVNULL:
            out.close()
