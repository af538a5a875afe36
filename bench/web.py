"""Benchmark: server time per web page (p50, p95) on a registry of 10,000 adapter revisions.

What it measures
    A registry seeded with --adapters adapters (default 1,000) of --revisions revisions each (default 10:
    10,000 revisions), on 5 base models and 20 namespaces, with tags, branches, a validation run on every
    third revision (a failure on every seventh) and provenance on some: rows written straight into the
    database (their blobs are not stored: pages that read a model card or a config show none, which costs
    them the lookup only). Then a real `swiftreg serve` on it, and each page requested --repeat times with
    an admin session; the server's own time per request is its access log's `duration_ms` (what the process
    spends, without the client), and the client's wall time is printed beside it. Target: p95 < 100 ms.

Run (from the repository root):
    .venv/bin/python bench/web.py                        # SQLite
    .venv/bin/python bench/web.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
      (a fresh database named swiftreg_bench_web_<pid> is created on that server and dropped afterwards)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAGES = [
    ("home", "/ui/"),
    ("home page 2", None),  # the keyset `after` of the first page, filled in below
    ("search name", "/ui/?q=adapter-04"),
    ("filter tuner+format", "/ui/?tuner=LORA&format=peft"),
    ("filter tag", "/ui/?tag=v3"),
    ("filter validation failed", "/ui/?validation=failed"),
    ("filter base", "/ui/?base=base/model-2"),
    ("adapter", "/ui/r/ns07/adapter-0347"),
    ("revision", "/ui/r/ns07/adapter-0347/rev/5"),
    ("base model", "/ui/r/base/model-2"),
    ("jobs", "/ui/jobs"),
    ("admin", "/ui/admin"),
]


def seed(url: str, home: Path, adapters: int, revisions: int) -> None:
    from sqlalchemy import insert

    from registry.db.models import (
        AdapterRecord, BaseModelRecord, ProvenanceRecord, RefRecord, RevisionRecord, ValidationRunRecord,
    )
    from registry.service import Registry

    reg = Registry(home=home, database_url=url)
    rng = random.Random(7)
    now = datetime.now(timezone.utc) - timedelta(days=30)
    digest = lambda i: "sha256:" + f"{i:064x}"  # noqa: E731
    with reg.db.write() as s:
        base_ids = []
        for b in range(5):
            row = BaseModelRecord(namespace="base", name=f"model-{b}", revision_count=1, created_at=now)
            s.add(row)
            s.flush()
            s.add(RevisionRecord(base_model_id=row.id, number=1, digest=digest(10**9 + b), format="transformers",
                                 manifest={"files": [{"path": "model.safetensors", "size": 1 << 20,
                                                      "sha256": digest(10**9 + b)}]}, meta={}, parents=[],
                                 created_at=now))
            base_ids.append(row.id)
        s.flush()
        n = 0
        for a in range(adapters):
            repo = AdapterRecord(namespace=f"ns{a % 20:02d}", name=f"adapter-{a:04d}", revision_count=revisions,
                                 base_model_id=base_ids[a % 5], tuner_type="LORA" if a % 4 else "DORA",
                                 created_at=now)
            s.add(repo)
            s.flush()
            rev_rows = []
            for r in range(1, revisions + 1):
                n += 1
                rev_rows.append({"adapter_id": repo.id, "number": r, "digest": digest(n),
                                 "format": "peft" if a % 3 else "swift",
                                 "manifest": {"files": [{"path": "adapter_config.json", "size": 400,
                                                         "sha256": digest(n + 10**8)},
                                                        {"path": "adapter_model.safetensors", "size": 65536 * r,
                                                         "sha256": digest(n + 2 * 10**8)}]},
                                 "meta": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                                          "tuner_type": "LORA"},
                                 "parents": [], "message": f"revision {r}", "author": "bench",
                                 "created_at": now + timedelta(seconds=n)})
            s.execute(insert(RevisionRecord), rev_rows)
            ids = {num: rid for rid, num in s.execute(
                RevisionRecord.__table__.select().with_only_columns(RevisionRecord.id, RevisionRecord.number)
                .where(RevisionRecord.adapter_id == repo.id))}
            s.execute(insert(RefRecord), [{"adapter_id": repo.id, "name": "main", "kind": "branch",
                                           "revision_id": ids[revisions]}] +
                      [{"adapter_id": repo.id, "name": f"v{r}", "kind": "tag", "revision_id": ids[r]}
                       for r in range(1, revisions + 1, 2)])
            runs = [{"revision_id": ids[r], "check_kind": "equivalence", "metrics": {"max_abs_diff": rng.random()},
                     "passed": (a + r) % 7 != 0, "library_versions": {"torch": "2.13.0"},
                     "started_at": now, "finished_at": now} for r in range(1, revisions + 1) if (a + r) % 3 == 0]
            if runs:
                s.execute(insert(ValidationRunRecord), runs)
            if a % 10 == 0:
                s.add(ProvenanceRecord(revision_id=ids[1], hub="hf", endpoint="https://huggingface.co",
                                       source_repo=f"someone/{repo.name}", source_commit="c" * 40))
    from registry import tokens

    secret = tokens.create(reg, "admin", "bench")[0]
    (home / "bench-token").write_text(secret)
    reg.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--revisions", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    from tests.helpers.server import free_port, registry_env, stop

    with tempfile.TemporaryDirectory(prefix="swiftreg-bench-web-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        url = f"sqlite:///{home / 'registry.db'}"
        admin_url = None
        if args.database_url:
            import psycopg

            admin_url = args.database_url
            name = f"swiftreg_bench_web_{os.getpid()}"
            plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(plain, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = admin_url.rsplit("/", 1)[0] + "/" + name
        try:
            started = time.perf_counter()
            seed(url, home, args.adapters, args.revisions)
            print(f"seeded {args.adapters * args.revisions} revisions in {time.perf_counter() - started:.1f} s "
                  f"({'PostgreSQL' if admin_url else 'SQLite'})")
            port = free_port()
            log = home / "server.log"
            with open(log, "w") as out:
                proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--host", "127.0.0.1",
                                         "--port", str(port), "--log-level", "info"],
                                        env=registry_env(home, url), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            base = f"http://127.0.0.1:{port}"
            try:
                for _ in range(100):
                    try:
                        if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                token = (home / "bench-token").read_text()
                with httpx.Client(base_url=base, cookies={"swiftreg_session": token}, timeout=60) as http:
                    first = http.get("/ui/").text
                    after = first.split("after=")[1].split('"')[0] if "after=" in first else ""
                    pages = [(n, p if p else f"/ui/?after={after}") for n, p in PAGES]
                    wall: dict[str, list[float]] = {}
                    for _name, path in pages:
                        for i in range(args.repeat + 2):
                            t = time.perf_counter()
                            r = http.get(path)
                            elapsed = (time.perf_counter() - t) * 1000
                            assert r.status_code == 200, (path, r.status_code, r.text[:300])
                            if i >= 2:  # two warm-ups
                                wall.setdefault(path, []).append(elapsed)
            finally:
                stop(proc)
            server: dict[str, list[float]] = {}
            for line in log.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                path = entry.get("path") or ""
                query = entry.get("query")
                full = path + (f"?{query}" if query else "")
                if path.startswith("/ui") and "duration_ms" in entry:
                    server.setdefault(full, []).append(float(entry["duration_ms"]))
            print(f"{'page':<26} {'server p50':>11} {'server p95':>11} {'client p95':>11}  "
                  f"(ms, {args.repeat} requests)")
            worst = 0.0
            for name, path in pages:
                times = server.get(path, [])[2:] or []
                p50 = statistics.median(times) if times else float("nan")
                p95 = percentile(times, 0.95) if times else float("nan")
                worst = max(worst, p95 if times else 0.0)
                print(f"{name:<26} {p50:>11.1f} {p95:>11.1f} {percentile(wall[path], 0.95):>11.1f}")
            print(f"worst server p95: {worst:.1f} ms (target < 100 ms)")
        finally:
            if admin_url:
                import psycopg

                with psycopg.connect(admin_url.replace("postgresql+psycopg://", "postgresql://"),
                                     autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


if __name__ == "__main__":
    main()
