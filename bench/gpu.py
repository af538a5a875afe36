"""The GPU bench (issue 19): `swiftreg merge` at 7B on one GPU against PEFT as its users run it and against the disk.

    .venv/bin/python bench/gpu.py [--cpu] [--rounds 3] [--json out.json] [--workdir DIR]

(`scripts/gpu-check` runs it after the `gpu` test tier and prints the one table.) What it does:

1. builds its own base and adapters, nothing downloaded (tests/helpers/llama_shapes.py): a Llama-shaped base of
   6.74 billion parameters in bf16 (13.5 GB, shards of at most 2 GiB) drawn on the GPU, a rank-16 LoRA on every
   linear layer, and 4 rank-16 LoRAs on the first block for the combination;
2. times three whole processes, interleaved (the order rotates every round), each followed by `sync` and
   preceded by a dropped page cache where the kernel lets root do it (said in the table):
   - swiftreg: `swiftreg merge ADAPTER --base BASE -o OUT --device cuda --dtype bf16` (the command users run,
     its output check included; `python -m registry.cli` is the console script's own entry point);
   - peft: load the base on the GPU (`device_map="cuda"`, bf16), `PeftModel.from_pretrained`,
     `merge_and_unload()`, `save_pretrained()`, as PEFT's users do;
   - disk: the same bytes read and written by `dd` (never a reflink), the limit any merge has;
   and each one's peak GPU memory (device-wide used memory sampled every 5 ms, minus what was used before)
   and peak host memory (the child's own maxrss, from wait4);
3. combines 2 and 4 adapters by SVD to rank 16, with swiftreg's engine and with PEFT's
   `add_weighted_adapter(combination_type="svd", svd_rank=16)` on the same GPU, on the 7 modules of the first
   block (7B shapes), interleaved; the 7B figure is the per-block time times 32 (said so); and each one's
   error against the float64 truncated SVD of the exact weighted sum.

Targets (issue 19): swiftreg >= 2x faster than PEFT whole process, <= 1.5x the disk limit; peak GPU memory
within the largest shard + the adapter + the check's model; combination no less accurate than PEFT.

Disk: the base (13.5 GB) stays; each output (13.5 GB, and the registry's scratch copy while `swiftreg merge`
writes it) is deleted right after its run, so the peak is about 3 x 13.5 GB of the 64 GiB.
`--cpu` runs every step at tiny sizes on the CPU (seconds), so CI proves the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # for tests.helpers; an installed swiftreg (a fresh `pip install`) comes first
    sys.path.append(str(ROOT))

#: the blocks the combination runs on at 7B shapes (PEFT's dense SVD of 224 modules would take minutes)
COMBINE_LAYERS = 1
#: seconds kept for the combination after the merge rounds (a GPU run)
COMBINE_RESERVE = 75.0
PEFT_MERGE = r"""
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out, device = sys.argv[1:5]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if device != "cpu" else None,
                                             device_map=device)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
"""


@dataclass
class Run:
    side: str
    seconds: float
    returncode: int
    peak_gpu_bytes: int | None
    peak_rss_bytes: int
    output_tail: str = ""


@dataclass
class Figures:
    device: dict[str, Any] = field(default_factory=dict)
    shape: dict[str, Any] = field(default_factory=dict)
    merge: dict[str, Any] = field(default_factory=dict)
    combine: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class GpuMemory(threading.Thread):
    """Peak device-wide used memory while a child runs (torch.cuda.mem_get_info every 5 ms), minus the used
    memory before it started: what the child (and its CUDA context) took."""

    def __init__(self, device: str) -> None:
        super().__init__(daemon=True)
        self.device, self.stop, self.peak, self.before = device, threading.Event(), 0, 0

    def used(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info(self.device)
        return int(total - free)

    def __enter__(self) -> "GpuMemory":
        self.before = self.peak = self.used()
        self.start()
        return self

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.used())

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()
        self.peak = max(self.peak, self.used())

    @property
    def taken(self) -> int:
        return max(0, self.peak - self.before)


def drop_caches() -> bool:
    """Empty the page cache (root only; a no-op elsewhere): each side then reads the base from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(side: str, cmd: list[str], env: dict[str, str], gpu: str | None, log: Path, limit: float = 600.0) -> Run:
    """One whole process, `sync` included; its peak GPU and host memory. Killed after `limit` seconds (a run that
    would take the device machine's whole call is a result too: "timed out")."""
    start = time.perf_counter()
    with log.open("w") as out:
        monitor = GpuMemory(gpu) if gpu else None
        if monitor is not None:
            monitor.__enter__()
        try:
            # run from the work folder: `python -m registry.cli` is then the swiftreg this Python has installed
            # (or the checkout, where PYTHONPATH names it), never the checkout by accident of the cwd
            process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
            killer = threading.Timer(limit, process.kill)
            killer.start()
            try:
                _, status, usage = os.wait4(process.pid, 0)
            finally:
                killer.cancel()
            process.returncode = os.waitstatus_to_exitcode(status)
            os.sync()
        finally:
            if monitor is not None:
                monitor.__exit__()
    seconds = time.perf_counter() - start
    tail = log.read_text()[-2000:]
    if seconds >= limit:
        tail += f"\n(killed after {limit:.0f} s)"
    return Run(side, seconds, process.returncode, monitor.taken if monitor else None, usage.ru_maxrss * 1024, tail)


def dd_command(src: Path, dst: Path) -> list[str]:
    return ["bash", "-c", f'mkdir -p "{dst}" && for f in "{src}"/*; do dd if="$f" of="{dst}/$(basename "$f")" '
                          'bs=16M status=none || exit 1; done']


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def bench_merge(work: Path, base: Path, adapter: Path, device: str, rounds: int, deadline: float,
                figures: Figures) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTREG_")}
    env.update(SWIFTREG_HOME=str(work / "home"), PYTHONUNBUFFERED="1")
    gpu = device if device.startswith("cuda") else None
    dtype = ["--dtype", "bf16"] if gpu else []
    sides = {
        "swiftreg": lambda out: [sys.executable, "-m", "registry.cli", "merge", str(adapter), "--base", str(base),
                                 "-o", str(out), "--device", device, *dtype, "--json"],
        "peft": lambda out: [sys.executable, "-c", PEFT_MERGE, str(base), str(adapter), str(out), device],
        "disk": lambda out: dd_command(base, out),
    }
    order = list(sides)
    runs: list[Run] = []
    dropped = []
    swiftreg_json: dict[str, Any] | None = None
    last = 0.0
    for round_no in range(rounds):
        if round_no and time.monotonic() + last > deadline:
            figures.notes.append(f"merge: {round_no} round(s) of {rounds}: another would overrun the time budget")
            break
        began = time.monotonic()
        for side in order[round_no % 3:] + order[:round_no % 3]:
            out = work / f"out-{side}"
            dropped.append(drop_caches() if gpu else False)  # not on a shared CPU machine: pointless there
            limit = max(60.0, deadline - time.monotonic()) if gpu else 900.0
            run = timed(side, sides[side](out), env, gpu, work / f"{side}.log", limit)
            runs.append(run)
            if run.returncode != 0:
                figures.notes.append(f"{side} failed (exit {run.returncode}): {run.output_tail[-800:]}")
            elif side == "swiftreg" and swiftreg_json is None:
                swiftreg_json = _last_json(run.output_tail if len(run.output_tail) < 2000
                                           else (work / f"{side}.log").read_text())
            if side == "disk" and out.exists():
                figures.merge["bytes"] = folder_bytes(out)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(work / "home" / "tmp", ignore_errors=True)
        last = time.monotonic() - began
    ok = {s: [r for r in runs if r.side == s and r.returncode == 0] for s in sides}
    merge: dict[str, Any] = figures.merge
    for side, done in ok.items():
        if done:
            merge[side] = summary([r.seconds for r in done]) | {
                "peak_gpu_bytes": max((r.peak_gpu_bytes or 0) for r in done) if gpu else None,
                "peak_rss_bytes": max(r.peak_rss_bytes for r in done)}
        merge[side + "_failures"] = sum(1 for r in runs if r.side == side and r.returncode != 0)
    merge["page_cache_dropped"] = all(dropped) if dropped else False
    if "swiftreg" in merge and "peft" in merge:
        merge["speedup_vs_peft"] = merge["peft"]["median"] / merge["swiftreg"]["median"]
    if "swiftreg" in merge and "disk" in merge:
        merge["vs_disk"] = merge["swiftreg"]["median"] / merge["disk"]["median"]
    shards = sorted(base.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    merge["largest_shard_bytes"] = shards[-1].stat().st_size if shards else 0
    merge["adapter_bytes"] = folder_bytes(adapter)
    if swiftreg_json is not None:
        merge["swiftreg_report"] = _report_figures(swiftreg_json)


def _last_json(text: str) -> dict[str, Any] | None:
    """The JSON object `swiftreg merge --json` printed (the last top-level `{` to the end)."""
    for start in [i for i, c in enumerate(text) if c == "{" and (i == 0 or text[i - 1] == "\n")][::-1]:
        try:
            value = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _report_figures(result: dict[str, Any]) -> dict[str, Any]:
    report = ((result.get("figures") or {}).get("report")) or result.get("report") or {}
    keep = ("peak_gpu_bytes", "peak_rss_bytes", "stage_seconds", "seconds", "device", "verify", "check_gpu_bytes")
    return {"passed": result.get("passed"), **{k: report.get(k) for k in keep if k in report},
            "comparisons": [{k: c.get(k) for k in ("name", "max_abs", "rel_err", "passed")}
                            for c in result.get("comparisons") or []]}


# ----- combination ----------------------------------------------------------------------------------------------

def _truncated_reference(terms: list[tuple[Any, Any, float]], rank: int) -> tuple[Any, Any]:
    """The float64 best rank-`rank` approximation of sum w s B A, as factors (exact: QR of the stacked factors
    and the SVD of the small core, DESIGN.md section 6)."""
    import torch

    B = torch.cat([w * b.double() for b, _, w in terms], dim=1)
    A = torch.cat([a.double() for _, a, _ in terms], dim=0)
    qb, rb = torch.linalg.qr(B)
    qa, ra = torch.linalg.qr(A.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    k = min(rank, s.numel())
    return qb @ (u[:, :k] * s[:k]), (vh[:k] @ qa.T)


def _rel_error(delta: Any, reference: tuple[Any, Any]) -> float:
    ref = reference[0] @ reference[1]
    return float((delta.double() - ref).norm() / ref.norm())


def bench_combine(work: Path, shape: Any, adapters: list[Path], device: str, rounds: int, deadline: float,
                  figures: Figures) -> None:
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from registry.tensors.adapter_tensors import load_adapter
    from registry.tensors.combine import combine
    from tests.helpers.llama_shapes import TARGETS

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    config = LlamaConfig(vocab_size=64, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=COMBINE_LAYERS, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, tie_word_embeddings=False)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    skeleton = skeleton.to_empty(device=dev)
    names = [f"a{i}" for i in range(len(adapters))]
    peft_model = get_peft_model(skeleton, LoraConfig(r=16, lora_alpha=32, target_modules=list(TARGETS)),
                                adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, LoraConfig(r=16, lora_alpha=32, target_modules=list(TARGETS)))
    states = [load_file(str(a / "adapter_model.safetensors")) for a in adapters]
    for name, state in zip(names, states):
        set_peft_model_state_dict(peft_model, {k: v.to(dev) for k, v in state.items()}, adapter_name=name)
    ours_in = [load_adapter(a) for a in adapters]
    scale = 32 / 16
    result: dict[str, Any] = {"layers_timed": COMBINE_LAYERS, "layers_7b": shape.layers, "rank": 16}
    # one untimed call of each first: kernels loaded, caches warm, lazy imports done (for both sides alike)
    combine(ours_in[:2], [0.5, 0.5], "svd", rank=16, device=dev)
    peft_model.add_weighted_adapter(names[:2], [0.5, 0.5], "combo", combination_type="svd", svd_rank=16)
    peft_model.delete_adapter("combo")
    sync()
    for n in (2, 4):
        weights = [1.0 / n] * n
        times: dict[str, list[float]] = {"swiftreg": [], "peft": []}
        errors: dict[str, float] = {}
        for round_no in range(rounds):
            if round_no and time.monotonic() > deadline:
                break
            for side in (["swiftreg", "peft"] if round_no % 2 == 0 else ["peft", "swiftreg"]):
                sync()
                start = time.perf_counter()
                if side == "swiftreg":
                    combined = combine(ours_in[:n], weights, "svd", rank=16, device=dev)
                    sync()
                    times[side].append(time.perf_counter() - start)
                    if "swiftreg" not in errors:
                        errors["swiftreg"] = _combine_error(
                            {m.module: (m.B, m.A, m.scaling) for m in combined.adapter.modules.values()},
                            states[:n], weights, scale, dev)
                else:
                    peft_model.add_weighted_adapter(names[:n], weights, "combo", combination_type="svd",
                                                    svd_rank=16)
                    sync()
                    times[side].append(time.perf_counter() - start)
                    if "peft" not in errors:
                        errors["peft"] = _combine_error(_peft_factors(peft_model, "combo"), states[:n], weights,
                                                        scale, dev)
                    peft_model.delete_adapter("combo")
        row: dict[str, Any] = {}
        for side, values in times.items():
            if values:
                row[side] = summary(values) | {"per_7b": statistics.median(values) * shape.layers / COMBINE_LAYERS,
                                               "rel_error_vs_float64": errors.get(side)}
        if row.get("swiftreg") and row.get("peft"):
            row["speedup_vs_peft"] = row["peft"]["median"] / row["swiftreg"]["median"]
        result[f"{n}_adapters"] = row
    figures.combine = result


def _peft_factors(model: Any, name: str) -> dict[str, tuple[Any, Any, float]]:
    out = {}
    for module_name, module in model.named_modules():
        if hasattr(module, "lora_A") and name in module.lora_A:
            stem = module_name.removeprefix("base_model.model.")
            out[stem] = (module.lora_B[name].weight, module.lora_A[name].weight, module.scaling[name])
    return out


def _combine_error(factors: dict[str, tuple[Any, Any, float]], states: list[dict[str, Any]], weights: list[float],
                   scale: float, dev: Any) -> float:
    """The worst relative error, over modules, of the combined delta against the float64 truncated reference."""
    worst = 0.0
    for module, (B, A, s) in factors.items():
        key = f"base_model.model.{module}"
        terms = [(st[key + ".lora_B.weight"].to(dev), st[key + ".lora_A.weight"].to(dev), w * scale)
                 for st, w in zip(states, weights)]
        reference = _truncated_reference(terms, 16)
        worst = max(worst, _rel_error(s * (B.double() @ A.double()), reference))
    return worst


# ----- the table ------------------------------------------------------------------------------------------------

def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def table(figures: Figures) -> str:
    d, m, c = figures.device, figures.merge, figures.combine
    lines = [f"GPU check: {d.get('name')}  torch {d.get('torch')}  CUDA {d.get('cuda')}  "
             f"({figures.shape.get('name')} shape: {figures.shape.get('parameters', 0) / 1e9:.2f} B parameters, "
             f"{figures.shape.get('shards')} shards, {gib(m.get('bytes'))}; disk: {d.get('workdir_filesystem')})",
             f"{'figure':<52} {'value':>22}  {'target':<26} ok"]

    def row(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
        mark = "" if ok is None else ("yes" if ok else "NO")
        lines.append(f"{name:<52} {value:>22}  {target:<26} {mark}".rstrip())

    def secs(side: str) -> str:
        s = m.get(side)
        return "failed" if not s else f"{s['median']:.1f} s ({s['min']:.1f}-{s['max']:.1f}, n={s['runs']})"

    row("swiftreg merge, whole command, check included", secs("swiftreg"))
    row("PEFT load + merge_and_unload + save_pretrained", secs("peft"))
    row("disk limit: the same bytes by dd", secs("disk"))
    if "speedup_vs_peft" in m:
        row("  PEFT / swiftreg", f"{m['speedup_vs_peft']:.2f}x", ">= 2x", m["speedup_vs_peft"] >= 2)
    if "vs_disk" in m:
        row("  swiftreg / disk", f"{m['vs_disk']:.2f}x", "<= 1.5x", m["vs_disk"] <= 1.5)
    if m.get("swiftreg"):
        bound = m.get("gpu_bound_bytes")
        peak = m["swiftreg"].get("peak_gpu_bytes")
        within = (peak <= bound) if bound and peak is not None else None
        row("peak GPU memory, swiftreg (device-wide, sampled)", gib(peak),
            f"<= {gib(bound)}" if bound else "bound: see notes", within)
        if m.get("peft"):
            row("peak GPU memory, PEFT", gib(m["peft"].get("peak_gpu_bytes")))
        row("peak host memory, swiftreg (maxrss)", gib(m["swiftreg"]["peak_rss_bytes"]),
            f"<= {gib(m.get('host_bound_bytes'))}",
            m["swiftreg"]["peak_rss_bytes"] <= m.get("host_bound_bytes", 0) if m.get("host_bound_bytes") else None)
        if m.get("peft"):
            row("peak host memory, PEFT (maxrss)", gib(m["peft"]["peak_rss_bytes"]))
        report = m.get("swiftreg_report") or {}
        if report.get("peak_gpu_bytes") is not None:
            row("  swiftreg's own report: torch peak allocated (merge)", gib(report["peak_gpu_bytes"]))
        if report.get("comparisons"):
            row("swiftreg's output check", "passed" if report.get("passed") else "FAILED", "passed",
                bool(report.get("passed")))
    row("page cache dropped before each run", "yes" if m.get("page_cache_dropped") else "no")
    for n in (2, 4):
        r = c.get(f"{n}_adapters") or {}
        for side in ("swiftreg", "peft"):
            s = r.get(side)
            if s:
                row(f"combine {n} adapters, SVD to rank 16, {side}",
                    f"{s['median'] * 1000:.1f} ms / {c['layers_timed']} block(s)", f"7B: ~{s['per_7b']:.1f} s")
        if r.get("speedup_vs_peft"):
            row(f"  PEFT / swiftreg ({n} adapters)", f"{r['speedup_vs_peft']:.1f}x", "> 1x", r["speedup_vs_peft"] > 1)
        if r.get("swiftreg") and r.get("peft"):
            ours, theirs = r["swiftreg"]["rel_error_vs_float64"], r["peft"]["rel_error_vs_float64"]
            row(f"  error vs float64, swiftreg / PEFT ({n})", f"{ours:.1e} / {theirs:.1e}", "swiftreg <= PEFT",
                ours <= theirs * 1.01 + 1e-12)
    return "\n".join(lines + [f"note: {n}" for n in figures.notes])


def filesystem_of(path: Path) -> str:
    """The mount under `path` and its type (from /proc/mounts): ext4, xfs, tmpfs, overlay..."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path.resolve()).startswith(parts[1]) and len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return f"{kind} at {best or '?'}"


def device_facts(device: str) -> dict[str, Any]:
    import torch

    import registry

    facts: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                             "python": platform.python_version(), "swiftreg": str(Path(registry.__file__).parent)}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        facts.update(name=props.name, memory_bytes=props.total_memory)
    else:
        facts["name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return facts


def run(args: argparse.Namespace) -> Figures:
    import torch

    from tests.helpers.llama_shapes import SEVEN_B, TINY, build_base, build_lora

    started = time.monotonic()
    device = "cpu" if args.cpu else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"bench/gpu.py: {device} asked for, but torch {torch.__version__} sees no CUDA device "
                         "(use --cpu for the small CPU run)")
    shape = TINY if args.cpu else SEVEN_B
    figures = Figures(device=device_facts(device))
    deadline = started + args.budget
    # on the GPU machine the checkout's own disk (its /tmp may be memory: a "disk limit" there would be RAM's)
    workdir = args.workdir or (None if args.cpu else str(ROOT / ".gpu-work"))
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="swiftreg-gpu-check-", dir=workdir))
    figures.device["workdir_filesystem"] = filesystem_of(work)
    try:
        need = 3.2 * shape.parameters() * 2
        free = shutil.disk_usage(work).free
        if free < need:
            raise SystemExit(f"bench/gpu.py: {work} has {free / 1e9:.1f} GB free; the {shape.name} run needs about "
                             f"{need / 1e9:.0f} GB (base, one output, the registry's scratch copy)")
        t = time.perf_counter()
        base = build_base(work / "base", shape, device=device, dtype=torch.bfloat16)
        adapter = build_lora(work / "adapter", shape, device=device, base_name=str(base))
        parts = [build_lora(work / f"part-{i}", shape, device=device, seed=10 + i, layers=COMBINE_LAYERS)
                 for i in range(4)]
        figures.shape = {"name": shape.name, "parameters": shape.parameters(), "hidden": shape.hidden,
                         "layers": shape.layers, "shards": len(list(base.glob("*.safetensors"))),
                         "build_seconds": round(time.perf_counter() - t, 1)}
        bench_merge(work, base, adapter, device, args.rounds, deadline - (0 if args.cpu else COMBINE_RESERVE), figures)
        m = figures.merge
        # the bound: the largest shard in its storage dtype plus its float32 working copy, the adapter on the
        # device, and the check's model; a CUDA context is ~0.5 GiB of what the sampler sees
        check = (m.get("swiftreg_report") or {}).get("check_gpu_bytes")
        if device.startswith("cuda"):
            m["gpu_bound_bytes"] = int(m["largest_shard_bytes"] * 3 + m["adapter_bytes"] + 2**29 + (check or 0))
            if check is None:
                figures.notes.append("the output check's GPU memory is not reported by swiftreg merge: the bound "
                                     "counts only the shard (bf16 + float32 copy), the adapter and a CUDA context")
        m["host_bound_bytes"] = int(m["largest_shard_bytes"] * 3 + m["adapter_bytes"] + 3 * 2**30)
        bench_combine(work, shape, parts, device, args.rounds if args.cpu else 2, deadline, figures)
        figures.shape["seconds"] = round(time.monotonic() - started, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="Tiny sizes on the CPU (what CI runs).")
    parser.add_argument("--device", default="cuda", help="The GPU (default cuda).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of the three merge sides.")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="Seconds this bench may take: no round starts that would overrun it (at least one "
                             "of each runs; gpu-check gives it what is left of 8 minutes).")
    parser.add_argument("--workdir", default=None, help="Where base and outputs go (default: the temp dir).")
    parser.add_argument("--json", type=Path, help="Also write the figures as JSON here.")
    args = parser.parse_args(argv)
    figures = run(args)
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(asdict(figures), indent=2, default=str) + "\n")
    failed = [k for k in ("swiftreg", "peft", "disk") if figures.merge.get(k + "_failures")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
