"""Shared timing for the benches: interleaved cases in alternating order, whole processes, median and spread.

Every bench that compares sides (ours against cp, curl, sha256, the hub clients, ms-swift, PEFT) times them the
same way, so a ratio means the same thing in every bench:
  - the sides run interleaved, once each per round, in forward order on even rounds and reversed on odd ones,
    so drift in machine load and cache warmth hits every side alike;
  - `sync` runs before every case that writes (dirty pages of one case are not flushed on the next one's time);
  - a user's command is timed as the whole process (interpreter start and imports included) beside the
    library call, and output always goes to a file (never /dev/null);
  - results are the median with the min-max spread of at least five rounds, and the machine's load average is
    printed with them (numbers taken under load say so).
Beside them, what every bench script needs: `say` (a line out at once, as a long bench goes) and `load_bench`
(another bench script as a module: the transfer benches share their sources and servers).
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

MIN_RUNS = 5
BENCH = Path(__file__).resolve().parent
PYCACHE = Path(tempfile.gettempdir()) / "swiftreg-bench-pycache"


def say(message: str = "") -> None:
    """Print a line now (a bench's output is read while it runs, often through a pipe)."""
    print(message, flush=True)


def load_bench(name: str) -> Any:
    """bench/NAME.py as a module (the bench folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_swiftreg_bench_{name}", BENCH / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"bench/{name}.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def load_average() -> str:
    """The machine's load average and core count, printed beside every table."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def sync() -> None:
    """Flush every dirty page to disk, so the next case does not pay for the previous one's writes."""
    os.sync()


def as_installed(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) for a Python process run as after a pip install: with its bytecode cached.

    pip writes the .pyc of what it installs, so a user's `swiftreg` never compiles its sources; this checkout is
    installed editable, and where PYTHONDONTWRITEBYTECODE is set (as in the sandbox the benches were written in)
    every process would compile registry/ and converters/ again, 0.1 s a start. The bytecode goes to a cache
    under the temp folder instead (PYTHONPYCACHEPREFIX), written by the first run and read by the rest."""
    out = dict(os.environ if env is None else env)
    if out.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        out.setdefault("PYTHONPYCACHEPREFIX", str(PYCACHE))
    return out


def run_process(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> float:
    """Seconds one whole process takes (start to exit), run as installed (`as_installed`); a failure stops the
    bench with its output."""
    env = as_installed(env)
    start = time.perf_counter()
    done = subprocess.run(list(cmd), env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return elapsed


@dataclass
class Case:
    """One side of a comparison. `run` does the timed work; `before` and `after` (untimed) prepare and clean up
    (an empty output folder, an empty cache); `check` (untimed) verifies the result of `run`. `writes`: sync first."""

    name: str
    run: Callable[[], Any]
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    check: Callable[[Any], None] | None = None
    writes: bool = True


@dataclass
class Results:
    times: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def spread(self, name: str) -> str:
        values = self.times[name]
        return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"

    def __contains__(self, name: str) -> bool:
        return bool(self.times.get(name))


def interleaved(cases: Sequence[Case], runs: int, results: Results | None = None,
                progress: Callable[[str], None] | None = None, start: int = 0) -> Results:
    """Run every case once per round for `runs` rounds, alternating the order; returns (or adds to) `results`.
    `start`: the number of the first round (a bench that calls this once per round passes its round number)."""
    results = results if results is not None else Results()
    for case in cases:
        results.times.setdefault(case.name, [])
    for round_ in range(start, start + runs):
        order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
        for case in order:
            if case.before is not None:
                case.before()
            if case.writes:
                sync()
            began = time.perf_counter()
            out = case.run()
            results.times[case.name].append(time.perf_counter() - began)
            if case.check is not None:
                case.check(out)
            if case.after is not None:
                case.after()
        if progress is not None:
            progress(f"  round {round_ + 1 - start}/{runs} done ({load_average()})")
    return results


def process(cmd: Sequence[str], env: dict[str, str] | None = None) -> Callable[[], float]:
    """A Case.run that runs `cmd` as a whole process (run_process: a failure stops the bench)."""
    return lambda: run_process(cmd, env)


def verdict(label: str, value: float, target: float, *, at_most: bool = True, unit: str = "x") -> str:
    """One target line: the measured value against the README's target, MET or MISSED."""
    ok = value <= target if at_most else value >= target
    sign = "<=" if at_most else ">="
    return f"{label}: {value:.2f}{unit} (target {sign} {target:g}{unit}): {'MET' if ok else 'MISSED'}"
