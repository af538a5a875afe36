"""Benchmark: the registry at team scale, 10 to 10,000 revisions, on SQLite and PostgreSQL (issue 18).

What it measures
    For each database, each shape (wide: N repositories of one revision; deep: one repository of N revisions)
    and each size N, on a registry grown to that size:
      push            `swiftreg push` of a new adapter into that registry, the whole command as a process
                      (median of --runs), and the library call Registry.push beside it
      resolve cold    a fresh `python -c "import registry; registry.resolve(ID)"` process, the whole process,
                      for a revision number already cached on disk (@N) and for a tag (@prod)
      resolve warm    registry.resolve in one process, per call: an immutable number, and a tag
      log page 1      GET /api/v1/repos/NS/NAME/revisions?limit=50 on a real `swiftreg serve` (the deep repository;
                      wide: a one-revision repository), median of --requests requests, client-side time
      ls page 1       GET /api/v1/repos?limit=50 (the same server)
      gc              Registry.gc(dry_run=True): every blob against every reference
      validate-all    `swiftreg validate-all --check integrity` as a process, divided by the revisions it checked
                      (sizes up to --validate-max only: it visits every revision)
      push flatness   at the end, per database: `swiftreg push` into a deep repository of the smallest and of the
                      largest size, interleaved in alternating order: the push target's verdict that load drift
                      between the sizes (measured one after another above) cannot decide
      validate ratio  last, per size from 1,000: `swiftreg validate-all --check integrity` over a deep registry of
                      that size on SQLite and on PostgreSQL, interleaved, per revision: the validate-all target's
                      verdict
    The machine's load average is printed before each database; every figure is a median with its spread
    (min-max) where it is repeated.

How the registries are grown
    Each registry starts with real pushes (a PEFT LoRA made by tests/helpers/checkpoints.py), then its history is
    grown to N by copying that revision's database rows (new numbers and digests; every 10th copy tagged, every
    7th given a provenance record) rather than by N pushes: what is measured depends on rows, not on how they
    came. A push measured afterwards is a real push of new bytes.

Targets (README "Performance")
    log and ls first page under 20 ms through the API at every size; warm tag resolve under 10 us on both
    databases; validate-all per revision on PostgreSQL within 1.3x of SQLite; push (the command) flat within
    1.5x from the smallest to the largest size. Exit code 0 either way: a benchmark, not a test.

Run (from the repository root, after scripts/test has built .venv)
    .venv/bin/python bench/scale.py                          # 10, 100, 1000, 10000; SQLite and PostgreSQL
    .venv/bin/python bench/scale.py --sizes 10,1000 --no-postgres
PostgreSQL: SWIFTREG_TEST_DATABASE_URL or postgresql+psycopg://postgres@127.0.0.1:5432/postgres (a database is
created per registry and dropped after).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import timing  # noqa: E402  (bench/timing.py)

from registry import Registry  # noqa: E402
from tests.helpers.checkpoints import write_peft_lora  # noqa: E402
from tests.helpers.history import grow_deep, grow_wide  # noqa: E402
from tests.helpers.databases import create_postgres_database, drop_postgres_database  # noqa: E402
from tests.helpers.server import registry_env, running_server  # noqa: E402

PAGE = 50


def median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(values: list[float], unit: str, scale: float) -> str:
    med, lo, hi = median_spread(values)
    return f"{med * scale:8.2f} {unit} ({lo * scale:.2f}-{hi * scale:.2f})"


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# ----- one registry at one size ------------------------------------------------------------------------------

def measure(work: Path, database_url: str, shape: str, size: int, args: argparse.Namespace,
            seeds: Iterator[int]) -> dict[str, list[float]]:
    home = work / "home"
    reg = Registry(home=home, database_url=database_url)
    env = registry_env(home, database_url)
    out: dict[str, list[float]] = {}
    target = "deep/x" if shape == "deep" else "wide/a00000"
    if not reg.list("deep") and not reg.list("wide"):
        reg.push(write_peft_lora(work / "first", seed=0), target)
        reg.tag(target, "prod")
    if shape == "deep":
        grow_deep(reg, target, size)
    else:
        grow_wide(reg, "wide", target, size)
    grown = sum(r.revisions for r in reg.list())

    def new_push() -> tuple[Path, str]:  # a new adapter and where it goes, written before the timer starts
        folder = write_peft_lora(work / f"push-{next(seeds)}", seed=next(seeds))
        return folder, "deep/x" if shape == "deep" else f"wide/new{next(seeds)}"

    cli, lib = [], []
    for _ in range(args.runs):  # interleaved: the command, then the library call
        folder, repo = new_push()
        timing.sync()
        cli.append(timing.run_process([sys.executable, "-m", "registry.cli", "push", str(folder), repo], env))
        folder, repo = new_push()
        timing.sync()
        lib += timed(lambda folder=folder, repo=repo: reg.push(folder, repo), 1)
    out["push (command)"], out["push (library)"] = cli, lib

    number = reg.show(target).number
    reg.resolve(f"{target}@{number}")
    reg.resolve(f"{target}@prod")
    for label, ref in (("resolve cold @N", f"{target}@{number}"), ("resolve cold @prod", f"{target}@prod")):
        out[label] = [timing.run_process([sys.executable, "-c", f"import registry; registry.resolve({ref!r})"], env)
                      for _ in range(args.runs)]
    for label, ref in (("resolve warm @N", f"{target}@{number}"), ("resolve warm @prod", f"{target}@prod")):
        calls = 2000
        out[label] = [t / calls for t in timeit.repeat(lambda ref=ref: reg.resolve(ref), number=calls,
                                                       repeat=args.runs)]

    with running_server(work / "server", database_url, anonymous_read=True) as srv, \
            httpx.Client(base_url=srv.url) as http:
        ns, name = target.split("/")
        for label, url in (("log page 1 (API)", f"/api/v1/repos/{ns}/{name}/revisions?limit={PAGE}"),
                           ("ls page 1 (API)", f"/api/v1/repos?limit={PAGE}")):
            assert http.get(url).status_code == 200
            out[label] = timed(lambda url=url: http.get(url).raise_for_status(), args.requests)

    out["gc dry run"] = timed(lambda: reg.gc(dry_run=True), max(1, args.runs // 2))
    if size <= args.validate_max:
        checked = sum(r.revisions for r in reg.list())
        seconds = timing.run_process([sys.executable, "-m", "registry.cli", "validate-all", "--check", "integrity",
                                      "--fail-on", "regression"], env)
        out["validate-all / revision"] = [seconds / checked]
    reg.close()
    print(f"    ({shape} registry grown to {grown} revisions)")
    return out


UNITS = {"resolve warm": ("us", 1e6), "validate-all": ("ms", 1e3)}


def show(results: dict[str, list[float]]) -> None:
    for label, values in results.items():
        unit, scale = next((u for prefix, u in UNITS.items() if label.startswith(prefix)), ("ms", 1e3))
        print(f"    {label:<26} {fmt(values, unit, scale)}")


@contextmanager
def database(kind: str, work: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{work / 'registry.db'}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--shapes", default="deep,wide")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--validate-max", type=int, default=10_000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("SWIFTREG_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    sizes = [int(s) for s in args.sizes.split(",")]
    databases = ["sqlite"] + ([] if args.no_postgres else ["postgresql"])
    table: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    seeds = iter(range(1000, 10**9))
    for db in databases:
        print(f"== {db}   {timing.load_average()}", flush=True)
        for shape in args.shapes.split(","):
            work = Path(tempfile.mkdtemp(prefix=f"swiftreg-scale-{db}-{shape}-"))
            try:
                with database(db, work) as url:
                    for size in sizes:  # one registry per shape, grown from size to size
                        print(f"  {shape}, {size} revisions ({timing.load_average()})", flush=True)
                        table[(db, shape, size)] = result = measure(work, url, shape, size, args, seeds)
                        show(result)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    verdicts(table, databases, args.shapes.split(","), sizes)
    for db in databases:
        push_flatness(db, sizes[0], sizes[-1], max(args.runs, timing.MIN_RUNS), seeds)
    if "postgresql" in databases:
        for size in sizes:
            if 1000 <= size <= args.validate_max:  # below, a run is mostly the process's start, the same on both
                for shape in args.shapes.split(","):
                    validate_ratio(size, max(args.runs, timing.MIN_RUNS), shape)


@contextmanager
def grown_registries(db: str, sizes: tuple[int, ...], work: Path,
                     shape: str = "deep") -> Iterator[dict[int, dict[str, str]]]:
    """One registry per size on `db`, grown to that many revisions (deep: one repository `deep/x`; wide: that many
    one-revision repositories `wide/a00000`...); the environment a `swiftreg` process needs to use each
    (SWIFTREG_HOME, SWIFTREG_DATABASE_URL)."""
    envs: dict[int, dict[str, str]] = {}
    urls: list[str] = []
    try:
        for size in sizes:
            home = work / f"home-{db}-{shape}-{size}"
            url = f"sqlite:///{home / 'registry.db'}" if db == "sqlite" else create_postgres_database()
            if db != "sqlite":
                urls.append(url)
            reg = Registry(home=home, database_url=url)
            first = "deep/x" if shape == "deep" else "wide/a00000"
            reg.push(write_peft_lora(work / f"first-{db}-{shape}-{size}", seed=0), first)
            if shape == "deep":
                grow_deep(reg, first, size)
            else:
                grow_wide(reg, "wide", first, size)
            reg.close()
            envs[size] = registry_env(home, url)
        yield envs
    finally:
        for url in urls:
            drop_postgres_database(url)


def push_flatness(db: str, small: int, large: int, runs: int, seeds: Iterator[int]) -> None:
    """The push target judged fairly: `swiftreg push` into a deep repository of `small` and of `large` revisions,
    interleaved in alternating order (bench/timing.py), so load drift between the sizes above cannot decide it."""
    work = Path(tempfile.mkdtemp(prefix=f"swiftreg-scale-flat-{db}-"))
    try:
        with grown_registries(db, (small, large), work) as envs:
            folders: dict[int, Path] = {}

            def prepare(size: int) -> None:  # the adapter is written before the timer starts
                folders[size] = write_peft_lora(work / f"push-{next(seeds)}", seed=next(seeds))

            def push(size: int) -> None:
                timing.run_process([sys.executable, "-m", "registry.cli", "push", str(folders[size]), "deep/x"],
                                   envs[size])

            cases = [timing.Case(f"push into {n}", lambda n=n: push(n), before=lambda n=n: prepare(n))
                     for n in (small, large)]
            results = timing.interleaved(cases, runs)
        print(f"\n== push flatness, {db}, interleaved ({timing.load_average()})")
        for case in cases:
            print(f"  {case.name:<20} {results.spread(case.name)}")
        print("  " + timing.verdict(f"push command {db} deep, {large} / {small} revisions",
                                    results.median(cases[1].name) / results.median(cases[0].name), 1.5))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def validate_ratio(size: int, runs: int, shape: str) -> None:
    """The validate-all target judged fairly: `swiftreg validate-all --check integrity` as a whole process over
    the same registry of `size` revisions (deep or wide) on SQLite and on PostgreSQL, interleaved in alternating
    order, per revision checked, so load drift between the two databases' halves above cannot decide it."""
    work = Path(tempfile.mkdtemp(prefix="swiftreg-scale-validate-"))
    try:
        with grown_registries("sqlite", (size,), work, shape) as lite, \
                grown_registries("postgresql", (size,), work, shape) as pg:
            envs = {"sqlite": lite[size], "postgresql": pg[size]}

            def validate(db: str) -> None:
                timing.run_process([sys.executable, "-m", "registry.cli", "validate-all", "--check", "integrity",
                                    "--fail-on", "regression"], envs[db])

            cases = [timing.Case(f"validate-all {db}", lambda db=db: validate(db)) for db in envs]
            results = timing.interleaved(cases, runs)
        print(f"\n== validate-all --check integrity, {shape}, {size} revisions, interleaved ({timing.load_average()})")
        for case in cases:
            med = results.median(case.name)
            print(f"  {case.name:<26} {results.spread(case.name)}  = {med / size * 1e3:.3f} ms per revision")
        print("  " + timing.verdict(f"validate-all per revision PostgreSQL / SQLite, {shape}, {size} revisions",
                                    results.median(cases[1].name) / results.median(cases[0].name), 1.3))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def verdicts(table: dict[tuple[str, str, int], dict[str, list[float]]], databases: list[str], shapes: list[str],
             sizes: list[int]) -> None:
    def med(key: tuple[str, str, int], label: str) -> float:
        return statistics.median(table[key][label])

    print("\n== targets")
    keys = list(table)
    worst_page = max(max(med(k, "log page 1 (API)"), med(k, "ls page 1 (API)")) for k in keys)
    print(f"  log/ls first page through the API, slowest median: {worst_page * 1e3:.2f} ms (target < 20 ms): "
          f"{'MET' if worst_page < 0.020 else 'MISSED'}")
    worst_tag = max(med(k, "resolve warm @prod") for k in keys)
    print(f"  warm tag resolve, slowest median: {worst_tag * 1e6:.2f} us (target < 10 us): "
          f"{'MET' if worst_tag < 10e-6 else 'MISSED'}")
    for db in databases:
        for shape in shapes:
            first, last = med((db, shape, sizes[0]), "push (command)"), med((db, shape, sizes[-1]), "push (command)")
            print(f"  push command {db} {shape}: {first * 1e3:.0f} ms at {sizes[0]} -> {last * 1e3:.0f} ms at "
                  f"{sizes[-1]} = {last / first:.2f}x (target <= 1.5x): {'MET' if last / first <= 1.5 else 'MISSED'}")
    if "postgresql" in databases:
        for shape in shapes:
            for size in sizes:
                if "validate-all / revision" in table.get(("sqlite", shape, size), {}):
                    ratio = med(("postgresql", shape, size), "validate-all / revision") / \
                        med(("sqlite", shape, size), "validate-all / revision")
                    print(f"  validate-all per revision PostgreSQL/SQLite {shape} {size}, one run each, minutes "
                          f"apart: {ratio:.2f}x (the target is judged interleaved, below)")


if __name__ == "__main__":
    main()
