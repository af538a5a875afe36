"""Load: 16 concurrent clients resolving and downloading for 30 s against one server, 4 of them also
pushing to one adapter: no errors, no lost pushes, gap-free numbers.

Runs on PostgreSQL when SWIFTREG_TEST_DATABASE_URL is set (as in CI), on SQLite otherwise.
"""
from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from registry.client import RemoteRegistry
from registry.service import Registry
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.databases import create_postgres_database, drop_postgres_database
from tests.helpers.server import running_server

pytestmark = [pytest.mark.server, pytest.mark.slow]

DURATION = 30.0
READERS = 12
PUSHERS = 4


def test_sixteen_clients_for_thirty_seconds_lose_nothing(tmp_path: Path) -> None:
    pg = bool(os.environ.get("SWIFTREG_TEST_DATABASE_URL"))
    url = create_postgres_database() if pg else f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    try:
        _run(tmp_path, url)
    finally:
        if pg:
            drop_postgres_database(url)


def _run(tmp_path: Path, database_url: str) -> None:
    seeded = Registry(home=tmp_path / "home", database_url=database_url)
    ids = []
    for i in range(4):
        seeded.push(write_peft_lora(tmp_path / f"seed{i}", seed=i, layers=16, r=8), f"load/a{i}", tag="v1")
        ids.append(f"load/a{i}@v1")
    seeded.close()
    folders = [[write_peft_lora(tmp_path / f"push{p}-{n}", seed=1000 + 100 * p + n) for n in range(200)]
               for p in range(PUSHERS)]
    errors: list[str] = []
    pushed: list[int] = []
    reads = [0]
    lock = threading.Lock()
    with running_server(tmp_path / "home", database_url) as server:
        deadline = time.monotonic() + DURATION

        def reader(k: int) -> None:
            rng = random.Random(k)
            home = 0
            try:
                while time.monotonic() < deadline:
                    # A fresh cache now and then: the next resolve downloads every file again.
                    client = RemoteRegistry(server.url, server.read_token, tmp_path / f"r{k}-{home}")
                    for _ in range(5):
                        folder = client.resolve(rng.choice(ids), format=rng.choice([None, "swift"]))
                        assert (folder / "adapter_config.json").is_file() or any(folder.iterdir())
                        with lock:
                            reads[0] += 1
                    client.close()
                    home += 1
            except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
                errors.append(f"reader {k}: {type(exc).__name__}: {exc}")

        def pusher(k: int) -> None:
            client = RemoteRegistry(server.url, server.write_token, tmp_path / f"p{k}")
            try:
                for folder in folders[k]:
                    if time.monotonic() >= deadline:
                        break
                    result = client.push(folder, "load/busy")
                    with lock:
                        pushed.append(result.revision.number)
                    client.resolve(f"load/busy@{result.revision.number}")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"pusher {k}: {type(exc).__name__}: {exc}")
            finally:
                client.close()

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(READERS)]
        threads += [threading.Thread(target=pusher, args=(k,)) for k in range(PUSHERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=DURATION + 120)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert errors == [], errors[:5]
        admin = RemoteRegistry(server.url, server.admin_token, tmp_path / "admin")
        log = admin.log("load/busy")
        admin.close()
    numbers = sorted(r.number for r in log)
    assert numbers == sorted(pushed) == list(range(1, len(pushed) + 1)), "a push was lost or numbered twice"
    assert len(pushed) >= PUSHERS and reads[0] >= READERS
    print(f"\n{reads[0]} resolves and {len(pushed)} pushes in {DURATION:.0f} s, no errors")
