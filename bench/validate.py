"""Benchmark: `swiftreg validate-all` on a seeded registry, inline versus two local `swiftreg worker`s.

What it measures
    The registry of tests/helpers/seeded.py (13 adapter revisions: 9 PEFT and 4 Swift, LoRA / rsLoRA / DoRA /
    rank and alpha patterns / embedding LoRA / Conv1D fan_in_fan_out, on a tiny Llama and a tiny
    GPT-2), validated end to end as a user runs it, each as whole processes:
      1. inline     `swiftreg validate-all --backend inline` (one process does every check)
      2. 2 workers  two `swiftreg worker` processes started with the run, and
                    `swiftreg validate-all --backend worker` queueing the revisions in batches for them
    Wall time from start to the report, per revision, and the speed-up of 2 over 1. The workers'
    start-up (importing torch, transformers and peft, about as long as the checks of a few revisions
    on this scale) is inside their time: a nightly run that starts its workers pays it too. Also
    printed: each check's share of the inline run (from the recorded figures' own timings).

    ms-swift's load check spawns one ms-swift process per validate job (about 8 s of imports each):
    --swift includes it (then the batch size decides how many such processes run), the default
    leaves it out so the figure is the registry's own work.

Run (from the repository root; PostgreSQL with --database-url postgresql://...):
    .venv/bin/python bench/validate.py
    .venv/bin/python bench/validate.py --repeat 3 --batch-size 2

Reading it
    Each revision here is tiny (a 2-layer, 32-wide model): its checks take about 0.25 s, so the fixed
    costs of a job (claim, record, the driver's 0.2 s polling) and of a process (imports) are a large
    share, and two workers on two cores cannot reach 2x. Real models make the per-revision work
    dominate; the same queue then spreads it over as many workers (or Ray nodes) as there are.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _env(home: Path, database_url: str, swift: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
    env.update(SWIFTREG_HOME=str(home), SWIFTREG_DATABASE_URL=database_url, OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if swift and os.environ.get("SWIFTREG_SWIFT_PYTHON"):
        env["SWIFTREG_SWIFT_PYTHON"] = os.environ["SWIFTREG_SWIFT_PYTHON"]
    return env


def _validate_all(env: dict[str, str], backend: str, batch_size: int, swift: bool) -> tuple[float, dict]:
    args = [sys.executable, "-m", "registry.cli", "validate-all", "--backend", backend, "--batch-size",
            str(batch_size), "--json", "--swift" if swift else "--no-swift"]
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"validate-all ({backend}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return elapsed, json.loads(done.stdout)


def run_inline(env: dict[str, str], batch_size: int, swift: bool) -> tuple[float, dict]:
    return _validate_all(env, "inline", batch_size, swift)


def run_workers(env: dict[str, str], workers: int, batch_size: int, swift: bool) -> tuple[float, float, dict]:
    """(cold: workers started with the run, warm: the same workers' second run, the warm report)."""
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "registry.cli", "worker", "--poll", "0.1", "--heartbeat", "5",
                               "--kind", "validate"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(workers)]
    try:
        _, report = _validate_all(env, "worker", batch_size, swift)
        assert report["failed"] == 0, report
        cold = time.perf_counter() - started
        # warm: the same workers again, driven from this (warm) process as the warm inline run is
        from registry.service import Registry

        reg = Registry(home=env["SWIFTREG_HOME"], database_url=env["SWIFTREG_DATABASE_URL"])
        try:
            started = time.perf_counter()
            result = reg.validate_all(backend="worker", batch_size=batch_size, swift=swift)
            warm = time.perf_counter() - started
        finally:
            reg.close()
        report = result.to_dict()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=120)
    return cold, warm, report


def run_inline_warm(home: Path, database_url: str, swift: bool) -> float:
    """A second inline run in a process that has imported everything (what a long-lived caller pays)."""
    from registry.service import Registry

    reg = Registry(home=home, database_url=database_url)
    try:
        reg.validate_all(batch_size=16, swift=swift)
        started = time.perf_counter()
        report = reg.validate_all(batch_size=16, swift=swift)
        assert not report.failures
        return time.perf_counter() - started
    finally:
        reg.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="default: SQLite in a temporary registry home")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side (the median is reported)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1, help="revisions per validate job with workers")
    parser.add_argument("--swift", action="store_true", help="include ms-swift's load check (SWIFTREG_SWIFT_PYTHON)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from registry.service import Registry
    from tests.helpers.seeded import seed_registry

    with tempfile.TemporaryDirectory(prefix="swiftreg-bench-validate-") as tmp:
        home = Path(tmp) / "home"
        database_url = args.database_url or f"sqlite:///{home / 'registry.db'}"
        reg = Registry(home=home, database_url=database_url)
        started = time.perf_counter()
        revisions = seed_registry(reg, Path(tmp) / "seed")
        reg.close()
        print(f"load average {os.getloadavg()[0]:.2f} (a busy machine shares its cores with the workers)")
        print(f"seeded {len(revisions)} adapter revisions on 2 base models in {time.perf_counter() - started:.1f} s "
              f"({database_url.split(':')[0]}, {os.cpu_count()} CPUs, ms-swift check "
              f"{'on' if args.swift else 'off'})")
        env = _env(home, database_url, args.swift)
        if args.swift:
            os.environ["SWIFTREG_SWIFT_PYTHON"] = env.get("SWIFTREG_SWIFT_PYTHON", "")
        else:
            os.environ.pop("SWIFTREG_SWIFT_PYTHON", None)
        runs: dict[str, list[float]] = {"inline_cold": [], "inline_warm": [], "workers_cold": [], "workers_warm": []}
        for _ in range(args.repeat):
            seconds, report = run_inline(env, 16, args.swift)
            assert report["failed"] == 0 and report["revisions"] == len(revisions), report
            runs["inline_cold"].append(seconds)
            runs["inline_warm"].append(run_inline_warm(home, database_url, args.swift))
            cold, warm, report = run_workers(env, args.workers, args.batch_size, args.swift)
            assert report["failed"] == 0 and report["revisions"] == len(revisions), report
            assert len({j["worker"] for j in report["jobs"]}) == min(args.workers, len(report["jobs"]))
            runs["workers_cold"].append(cold)
            runs["workers_warm"].append(warm)
        n = len(revisions)
        m = {k: statistics.median(v) for k, v in runs.items()}
        w = f"{args.workers} workers, batches of {args.batch_size}"
        print(f"{'backend':<52} {'wall s':>8} {'s / revision':>13}")
        for key, label in (("inline_cold", "inline: `swiftreg validate-all` as a fresh process"),
                           ("workers_cold", f"{w}: workers started with the run"),
                           ("inline_warm", "inline: a second run in a warm process"),
                           ("workers_warm", f"{w}: long-running (warm) workers")):
            print(f"{label:<52} {m[key]:>8.2f} {m[key] / n:>13.3f}")
        print(f"speed-up of {args.workers} workers over inline: {m['inline_warm'] / m['workers_warm']:.2f}x warm "
              f"(steady state), {m['inline_cold'] / m['workers_cold']:.2f}x cold (each worker imports torch, "
              f"transformers and peft itself); {report['checks'] // n if n else 0} checks per revision; "
              f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
