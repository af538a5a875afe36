"""A private PostgreSQL cluster (initdb + pg_ctl in a temporary folder, on a free port) that a test may stop
and start again without disturbing the PostgreSQL every other test shares.

The binaries come from SWIFTREG_TEST_PG_BIN, else `pg_config --bindir`, else the newest
/usr/lib/postgresql/*/bin. PostgreSQL refuses to run as root: as root the cluster belongs to the
`postgres` OS user and every command runs through `runuser`.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.helpers.server import free_port


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when none is installed."""
    given = os.environ.get("SWIFTREG_TEST_PG_BIN")
    if given:
        return Path(given)
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


class PostgresCluster:
    """One cluster: `url` (trust authentication, user postgres, database postgres), `start()`, `stop()`."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir, self.root = bindir, root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        if self._as:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                   "-c fsync=off -c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "postgres.log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        done = subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
                              capture_output=True)
        return done.returncode == 0


@contextmanager
def private_postgres() -> Iterator[PostgresCluster]:
    """A started cluster of this test's own, stopped and removed afterwards."""
    bindir = postgres_bin()
    if bindir is None:
        import pytest

        pytest.fail("no PostgreSQL binaries (initdb, pg_ctl) for a private cluster: install PostgreSQL or set "
                    "SWIFTREG_TEST_PG_BIN", pytrace=False)
    # not under pytest's tmp_path: as root that folder is closed to the postgres user
    root = Path(tempfile.mkdtemp(prefix="swiftreg-pg-"))
    cluster = PostgresCluster(bindir, root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
