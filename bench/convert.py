"""Benchmark: Swift -> PEFT conversion of a 7B-scale LoRA adapter, three ways, each a whole process.

What it measures
    Wall time of one complete process (start-up, imports, I/O, exit) for each of
      1. swiftreg      `swiftreg convert SRC OUT --to peft`           (our converter, main .venv)
      2. ms-swift      `python -c "from swift.tuners import Swift; Swift.save_to_peft_format(SRC, OUT)"`
                                                                      (ms-swift 4.6.0's own converter, oracle venv)
      3. cp -r         `cp -r SRC OUT`                                (the floor: copying the same folder)
    beside the library call `converters.convert(SRC, OUT, "peft")` in this process (no start-up), and, for
    reference only (no target), `swiftreg convert --fsync` against `cp -r` followed by `sync` of every copied
    file: by default swiftreg, like `cp -r`, does NOT fsync its output (it is written to a temp folder and
    renamed into place, so it appears whole or not at all, but a power cut may lose it); `--fsync` makes it
    durable. Everything is on the same source checkpoint, with a fresh OUT each time and the page cache warm for
    all (one warm-up read of SRC and one untimed warm-up run of every method first). The sides run interleaved
    (bench/timing.py): once each per round, in alternating order, with `sync` before every run outside the
    timer, so no run pays for another's dirty pages; median and min-max spread of --runs rounds (at least 5),
    and the load average. Python processes run with their bytecode cached (PYTHONPYCACHEPREFIX under the work
    dir, PYTHONDONTWRITEBYTECODE unset), as after any pip install.

Targets (judged on the medians; README "Benchmarks", issue 18)
    swiftreg at least 20x faster than ms-swift, and at most 1.5x the time of `cp -r`.
    The exit code is 0 whether or not they are met (a benchmark, not a test); each line says MET / MISSED.

Equal work
    The untimed warm-up outputs of swiftreg and ms-swift are compared tensor by tensor (same keys under
    canonical PEFT names, same dtype, same values, both equal to the source), so the timings compare
    the same conversion.

The source checkpoint
    Llama-7B shapes (hidden 4096, intermediate 11008, 32 layers, no GQA), LoRA r=64, lora_alpha=128 on
    q/k/v/o/gate/up/down_proj, bf16: 448 tensors, 160 M parameters, about 306 MiB. Building a 7B model
    is too heavy here, so the folder is written exactly as ms-swift's SwiftModel.save_pretrained would:
      SRC/configuration.json                   "{}"
      SRC/README.md                            by ms-swift's own SwiftModel.create_or_update_model_card
      SRC/default/adapter_config.json          by ms-swift's own LoRAConfig(...).save_pretrained
      SRC/default/adapter_model.safetensors    keys model.layers.{i}.<proj>.lora_{A,B}.default.weight,
                                               metadata {"format": "pt"}, seeded random bf16 values,
                                               streamed one tensor at a time (bounded memory) by a writer
                                               checked byte for byte against safetensors.torch.save_file
    and checked against a real tiny checkpoint that ms-swift saves (Swift.prepare_model(LlamaForCausalLM
    (tiny), {"default": LoRAConfig(...)}).save_pretrained): same key pattern modulo layer count, same
    shape formula, dtype and metadata, same config fields, same README and configuration.json.
    Everything is cached under the work dir (default $TMPDIR/swiftreg-bench/) and reused.

Run (from the repository root; the first run also builds the environments if missing):
    source scripts/_env.sh && ensure_main_env && ensure_oracle_env && python bench/convert.py
    ... python bench/convert.py --layers 2 --runs 5        # quick smoke run

Needs: the main venv (torch, safetensors, swiftreg installed) to run this file, and the ms-swift
venv's interpreter in $SWIFTREG_SWIFT_PYTHON (scripts/_env.sh's ensure_oracle_env exports it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import timing  # noqa: E402  (bench/timing.py: the interleaving every bench shares)

# Llama-7B
HIDDEN = 4096
INTERMEDIATE = 11008
RANK = 64
LORA_ALPHA = 128
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED = 1234
#: Bumped whenever the generated checkpoint would change; part of the cache key.
GENERATOR_VERSION = 1

# The tiny model ms-swift really saves, for the layout check. Odd, distinct sizes so that a swapped
# dimension cannot pass; kv heads == heads (no GQA), as in Llama-7B.
TINY = {"hidden": 48, "intermediate": 80, "layers": 2, "heads": 4, "r": 8, "lora_alpha": 16, "vocab": 64}

SPEEDUP_VS_SWIFT = 20.0   # swiftreg must be at least this many times faster than ms-swift
MAX_RATIO_VS_CP = 1.5     # and take at most this many times as long as cp -r (issue 18)

ADAPTER = "default"
WEIGHTS = "adapter_model.safetensors"


# --------------------------------------------------------------------------- environment

def swift_python() -> str:
    path = os.environ.get("SWIFTREG_SWIFT_PYTHON")
    if not path:
        sys.exit("error: SWIFTREG_SWIFT_PYTHON is not set; it must name the ms-swift venv's python.\n"
                 "  run: source scripts/_env.sh && ensure_main_env && ensure_oracle_env && python bench/convert.py")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        sys.exit(f"error: SWIFTREG_SWIFT_PYTHON={path} is not an executable file")
    return path


def swiftreg_script() -> str:
    """The console script of the main venv (the one a user runs), not whatever is first on PATH."""
    for candidate in (ROOT / ".venv" / "bin" / "swiftreg", Path(sys.executable).parent / "swiftreg"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("swiftreg")
    if not found:
        sys.exit("error: no `swiftreg` console script: run `source scripts/_env.sh && ensure_main_env` first")
    return found


def main_python(swiftreg: str) -> str:
    """The interpreter named in the console script's shebang."""
    with open(swiftreg, encoding="utf-8") as f:
        first = f.readline()
    return first[2:].strip() if first.startswith("#!") else sys.executable


# --------------------------------------------------------------------------- checkpoint spec

def lora_shapes(hidden: int, intermediate: int, r: int) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """(lora_A shape, lora_B shape) per target module of a Llama decoder layer without GQA."""
    io = {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden),
          "o_proj": (hidden, hidden), "gate_proj": (hidden, intermediate), "up_proj": (hidden, intermediate),
          "down_proj": (intermediate, hidden)}
    return {m: ((r, fan_in), (fan_out, r)) for m, (fan_in, fan_out) in io.items()}


def module_path(layer: int, module: str) -> str:
    block = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{block}.{module}"


def tensor_specs(layers: int, hidden: int, intermediate: int, r: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Swift checkpoint: key -> shape (all bf16)."""
    specs: dict[str, tuple[int, ...]] = {}
    shapes = lora_shapes(hidden, intermediate, r)
    for layer in range(layers):
        for module in TARGETS:
            a, b = shapes[module]
            specs[f"{module_path(layer, module)}.lora_A.{ADAPTER}.weight"] = a
            specs[f"{module_path(layer, module)}.lora_B.{ADAPTER}.weight"] = b
    return specs


def key_pattern(keys: Iterable[str]) -> set[str]:
    return {re.sub(r"\.layers\.\d+\.", ".layers.{i}.", k) for k in keys}


def make_tensor(name: str, shape: Sequence[int]):
    import torch

    g = torch.Generator().manual_seed(SEED * 1_000_003 + zlib.crc32(name.encode()))
    return (torch.randn(tuple(shape), generator=g) * 0.02).to(torch.bfloat16)


# --------------------------------------------------------------------------- safetensors writer

def read_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def write_safetensors_streaming(path: Path, specs: dict[str, tuple[int, ...]],
                                produce: Callable[[str, tuple[int, ...]], object],
                                metadata: dict[str, str]) -> None:
    """Write a bf16-only safetensors file one tensor at a time, laid out as safetensors.torch.save_file
    lays it out (data sorted by dtype alignment, then name; header in data order; padded with spaces
    to 8 bytes), so memory stays at one tensor however large the file is."""
    import torch

    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    order = sorted(specs)
    for name in order:
        nbytes = 2
        for d in specs[name]:
            nbytes *= d
        header[name] = {"dtype": "BF16", "shape": list(specs[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            t = produce(name, specs[name])
            assert t.dtype == torch.bfloat16 and tuple(t.shape) == tuple(specs[name]), name
            f.write(t.contiguous().view(torch.int16).numpy().tobytes())


def check_writer(scratch: Path) -> None:
    """The streaming writer must produce the very bytes safetensors.torch.save_file does (11 layers so
    that lexicographic key order, 10 before 2, is exercised)."""
    from safetensors.torch import save_file

    specs = tensor_specs(11, 24, 40, 4)
    ours, theirs = scratch / "ours.safetensors", scratch / "theirs.safetensors"
    write_safetensors_streaming(ours, specs, make_tensor, {"format": "pt"})
    save_file({k: make_tensor(k, s) for k, s in specs.items()}, str(theirs), metadata={"format": "pt"})
    if ours.read_bytes() != theirs.read_bytes():
        raise SystemExit("error: the streaming safetensors writer does not match safetensors.torch.save_file")


# --------------------------------------------------------------------------- source checkpoint

#: Runs in the ms-swift venv: writes the 7B adapter's config and README with ms-swift's own code, and
#: saves a real tiny Llama checkpoint for the layout check.
SWIFT_HELPER = r'''
import json, os, sys
spec = json.loads(sys.argv[1])
from swift.tuners import LoRAConfig, Swift
from swift.tuners.base import SwiftModel

src = spec["src"]
LoRAConfig(r=spec["r"], lora_alpha=spec["lora_alpha"], target_modules=spec["targets"]).save_pretrained(
    os.path.join(src, "default"))

class LlamaForCausalLM:          # the class name is all the model card reads
    pass

class Card:
    base_model = LlamaForCausalLM()

SwiftModel.create_or_update_model_card(Card(), src)

import torch
from transformers import LlamaConfig
from transformers import LlamaForCausalLM as RealLlama
t = spec["tiny"]
torch.manual_seed(0)
model = RealLlama(LlamaConfig(hidden_size=t["hidden"], intermediate_size=t["intermediate"],
                              num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                              num_key_value_heads=t["heads"], vocab_size=t["vocab"])).to(torch.bfloat16)
lora = LoRAConfig(r=t["r"], lora_alpha=t["lora_alpha"], target_modules=spec["targets"])
Swift.prepare_model(model, {"default": lora}).save_pretrained(t["dir"])
'''


def build_source(src: Path, tiny_dir: Path, layers: int, swift_py: str) -> None:
    tmp = src.with_name(src.name + f".tmp-{os.getpid()}")
    tiny_tmp = tiny_dir.with_name(tiny_dir.name + f".tmp-{os.getpid()}")
    for p in (tmp, tiny_tmp):
        shutil.rmtree(p, ignore_errors=True)
    (tmp / ADAPTER).mkdir(parents=True)
    started = time.perf_counter()
    spec = {"src": str(tmp), "r": RANK, "lora_alpha": LORA_ALPHA, "targets": TARGETS,
            "tiny": dict(TINY, dir=str(tiny_tmp))}
    env = dict(os.environ, PYTHONHASHSEED="0")  # target_modules is a set: fix its order
    proc = subprocess.run([swift_py, "-c", SWIFT_HELPER, json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: ms-swift helper failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    # configuration.json: SwiftModel.save_pretrained writes exactly this.
    (tmp / "configuration.json").write_text("{}", encoding="utf-8")
    with tempfile.TemporaryDirectory(dir=src.parent) as scratch:
        check_writer(Path(scratch))
    write_safetensors_streaming(tmp / ADAPTER / WEIGHTS, tensor_specs(layers, HIDDEN, INTERMEDIATE, RANK),
                                make_tensor, {"format": "pt"})
    for final, built in ((tiny_dir, tiny_tmp), (src, tmp)):
        shutil.rmtree(final, ignore_errors=True)
        built.rename(final)
    print(f"  built in {time.perf_counter() - started:.1f} s (ms-swift helper, writer self-check, "
          f"{layers} layers)")


def check_layout(src: Path, tiny: Path, layers: int) -> None:
    """The generated checkpoint has what a real ms-swift save of the tiny Llama has, scaled up."""
    problems: list[str] = []
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    if files(src) != files(tiny):
        problems.append(f"files differ: {files(src)} vs real {files(tiny)}")
    for name in ("configuration.json", "README.md"):
        if (src / name).read_bytes() != (tiny / name).read_bytes():
            problems.append(f"{name} differs from the one ms-swift saved")

    ours_h, _ = read_header(src / ADAPTER / WEIGHTS)
    real_h, _ = read_header(tiny / ADAPTER / WEIGHTS)
    if ours_h.pop("__metadata__", None) != real_h.pop("__metadata__", None):
        problems.append("safetensors metadata differs")
    if key_pattern(ours_h) != key_pattern(real_h):
        problems.append(f"key pattern differs: only ours {sorted(key_pattern(ours_h) - key_pattern(real_h))[:3]}, "
                        f"only real {sorted(key_pattern(real_h) - key_pattern(ours_h))[:3]}")
    real_specs = tensor_specs(TINY["layers"], TINY["hidden"], TINY["intermediate"], TINY["r"])
    real_shapes = {k: tuple(v["shape"]) for k, v in real_h.items()}
    if real_shapes != real_specs:
        problems.append("the shape formula does not reproduce the tiny checkpoint's shapes")
    if {v["dtype"] for v in real_h.values()} != {"BF16"} or {v["dtype"] for v in ours_h.values()} != {"BF16"}:
        problems.append("dtypes are not all BF16")
    if {k: tuple(v["shape"]) for k, v in ours_h.items()} != tensor_specs(layers, HIDDEN, INTERMEDIATE, RANK):
        problems.append("generated shapes differ from the spec")

    ours_c = json.loads((src / ADAPTER / "adapter_config.json").read_text())
    real_c = json.loads((tiny / ADAPTER / "adapter_config.json").read_text())
    if (ours_c["r"], ours_c["lora_alpha"]) != (RANK, LORA_ALPHA):
        problems.append("config r/lora_alpha wrong")
    for c in (ours_c, real_c):
        c["target_modules"] = sorted(c["target_modules"])
        c.pop("r"), c.pop("lora_alpha")
    if ours_c != real_c:
        diff = sorted(k for k in ours_c.keys() | real_c.keys() if ours_c.get(k) != real_c.get(k))
        problems.append(f"adapter_config.json fields differ from ms-swift's: {diff}")
    if problems:
        raise SystemExit("error: generated checkpoint does not match ms-swift's layout:\n  " + "\n  ".join(problems))


def ensure_source(workdir: Path, layers: int, swift_py: str, regenerate: bool) -> Path:
    spec = {"generator": GENERATOR_VERSION, "layers": layers, "hidden": HIDDEN, "intermediate": INTERMEDIATE,
            "r": RANK, "lora_alpha": LORA_ALPHA, "targets": TARGETS, "seed": SEED, "tiny": TINY}
    src = workdir / f"swift-llama7b-lora-r{RANK}-L{layers}"
    tiny = workdir / f"tiny-reference-L{layers}"
    stamp = workdir / f"{src.name}.spec.json"
    if regenerate or not src.is_dir() or not tiny.is_dir() or not stamp.is_file() \
            or json.loads(stamp.read_text()) != spec:
        print(f"generating source checkpoint {src}")
        stamp.unlink(missing_ok=True)
        build_source(src, tiny, layers, swift_py)
        stamp.write_text(json.dumps(spec))
    else:
        print(f"reusing source checkpoint {src}")
    check_layout(src, tiny, layers)
    return src


# --------------------------------------------------------------------------- benchmark

def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def warm_read(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


def run_timed(cmd: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return elapsed


def canonical(key: str) -> str:
    """The name PEFT's get_peft_model_state_dict gives a key (no adapter name, no .weight on DoRA)."""
    if not key.startswith("base_model.model."):
        key = "base_model.model." + key
    key = re.sub(rf"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.{ADAPTER}(?=\.|$)",
                 r".\1", key)
    return re.sub(r"\.lora_magnitude_vector\.weight$", ".lora_magnitude_vector", key)


def verify_equal_work(src: Path, ours: Path, swift: Path) -> str:
    """Both outputs hold exactly the source's tensors under canonical PEFT keys."""
    import torch
    from safetensors import safe_open

    files = [src / ADAPTER / WEIGHTS, ours / WEIGHTS, swift / WEIGHTS]
    for f in files:
        if not f.is_file():
            raise SystemExit(f"error: missing {f}")
    with safe_open(str(files[0]), "pt") as s, safe_open(str(files[1]), "pt") as a, \
            safe_open(str(files[2]), "pt") as b:
        src_keys = {canonical(k): k for k in s.keys()}
        a_keys = {canonical(k): k for k in a.keys()}
        b_keys = {canonical(k): k for k in b.keys()}
        if not (set(src_keys) == set(a_keys) == set(b_keys)):
            raise SystemExit("error: outputs hold different tensors:\n"
                             f"  only swiftreg: {sorted(set(a_keys) - set(b_keys))[:5]}\n"
                             f"  only ms-swift: {sorted(set(b_keys) - set(a_keys))[:5]}\n"
                             f"  missing from swiftreg vs source: {sorted(set(src_keys) - set(a_keys))[:5]}")
        if set(a_keys) != set(a.keys()):
            raise SystemExit("error: swiftreg's keys are not canonical PEFT names")
        for key, name in src_keys.items():
            t = s.get_tensor(name)
            for label, handle, keys in (("swiftreg", a, a_keys), ("ms-swift", b, b_keys)):
                u = handle.get_tensor(keys[key])
                if u.dtype != t.dtype or u.shape != t.shape or not torch.equal(u, t):
                    raise SystemExit(f"error: {label} output differs from the source at {key}")
    ours_c = json.loads((ours / "adapter_config.json").read_text())
    swift_c = json.loads((swift / "adapter_config.json").read_text())
    for c in (ours_c, swift_c):  # a set in ms-swift: its order is the hash seed's
        if isinstance(c.get("target_modules"), list):
            c["target_modules"] = sorted(c["target_modules"])
    diff = sorted(k for k in ours_c.keys() | swift_c.keys() if ours_c.get(k) != swift_c.get(k))
    ours_f = sorted(str(p.relative_to(ours)) for p in ours.rglob("*") if p.is_file())
    swift_f = sorted(str(p.relative_to(swift)) for p in swift.rglob("*") if p.is_file())
    note = (f"equal work: both outputs hold the source's {len(src_keys)} tensors under identical canonical PEFT "
            f"keys, same dtype, bit-identical values")
    if diff:
        note += f"\n  (adapter_config.json fields that differ: {', '.join(diff)})"
    if ours_f != swift_f:
        note += (f"\n  (files: swiftreg {', '.join(ours_f)}; ms-swift {', '.join(swift_f)})")
    return note


def fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 10 else f"{x:.2f} s"


def convert_profile(py: str, swiftreg: str, src: Path, workdir: Path) -> tuple[list[str], float]:
    """One swiftreg conversion under cProfile: the big items of its own process."""
    import pstats

    out, prof = workdir / "out-profile", workdir / "convert.prof"
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    subprocess.run([py, "-m", "cProfile", "-o", str(prof), swiftreg, "convert", str(src), str(out), "--to", "peft"],
                   capture_output=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    prof.unlink()
    total = max(v[3] for v in stats.values())
    def tottime(*names: str) -> tuple[float, int]:
        hits = [v for (_, _, fn), v in stats.items() if any(n in fn for n in names)]
        return sum(v[2] for v in hits), sum(v[1] for v in hits)
    rows = [("os.fsync (none without --fsync)", tottime("posix.fsync")),
            ("os.copy_file_range (the data copy)", tottime("posix.copy_file_range")),
            ("builtins.compile (dataclasses' generated methods; .py sources without cached .pyc)",
             tottime("builtins.compile")),
            ("unmarshal of cached .pyc", tottime("marshal.loads"))]
    lines = [f"  cProfile of one convert (interpreter start not included): {fmt_s(total)} in all"]
    for label, (t, n) in rows:
        lines.append(f"      {t * 1e3:7.1f} ms  {label} [{n} calls]")
    return lines, tottime("posix.fsync")[0]


def median_time(cmd: list[str], runs: int, env: dict[str, str] | None = None,
                before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(runs):
        if before:
            before()
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def startup_profile(py: str, swiftreg: str, src: Path, workdir: Path, runs: int) -> list[str]:
    """Where a swiftreg process spends its time when it is not converting."""
    def med(cmd: list[str]) -> float:
        return median_time(cmd, runs)

    lines = [f"  python -c pass (main venv)               {fmt_s(med([py, '-c', 'pass']))}",
             f"  python -S -c pass (no site)              {fmt_s(med([py, '-S', '-c', 'pass']))}",
             f"  swiftreg --help (start-up + imports)     {fmt_s(med([swiftreg, '--help']))}"]
    proc = subprocess.run([py, "-X", "importtime", swiftreg, "--help"], capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    top = [r for r in rows if r[1] <= 1]
    total = sum(r[0] for r in rows if r[1] == 1)
    lines.append(f"  -X importtime, top-level imports of `swiftreg --help`: {total / 1e3:.0f} ms in all")
    for cum, _, name in sorted(top, reverse=True)[:4]:
        lines.append(f"      {cum / 1e3:6.1f} ms  {name}")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # The editable install's sources then get compiled in every process (site-packages keep the
        # .pyc pip wrote). Show what a normal install pays, caching bytecode outside the checkout.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        out = workdir / "out-pyc"
        cmd = [swiftreg, "convert", str(src), str(out), "--to", "peft"]
        clean = lambda: (shutil.rmtree(out, ignore_errors=True), os.sync())  # noqa: E731
        median_time(cmd, 1, env, clean)  # populate the cache
        t = median_time(cmd, runs, env, clean)
        shutil.rmtree(out, ignore_errors=True)
        lines.append(f"  PYTHONDONTWRITEBYTECODE is set here; convert with cached .pyc "
                     f"(PYTHONPYCACHEPREFIX): {fmt_s(t)} median")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring for details.")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per method (default 5)")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "swiftreg-bench",
                        help="where the source checkpoint is cached and outputs go (default $TMPDIR/swiftreg-bench)")
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (default 32; e.g. 2 for a smoke run)")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the cached source checkpoint")
    args = parser.parse_args()
    if args.runs < 1 or args.layers < 1:
        parser.error("--runs and --layers must be at least 1")

    swift_py = swift_python()
    swiftreg = swiftreg_script()
    py = main_python(swiftreg)
    cp = shutil.which("cp") or "/bin/cp"
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bench_started = time.perf_counter()

    src = ensure_source(workdir, args.layers, swift_py, args.regenerate)
    size = folder_bytes(src)
    n_params = sum(a[0] * a[1] + b[0] * b[1] for a, b in lora_shapes(HIDDEN, INTERMEDIATE, RANK).values()) * args.layers
    print(f"source: {args.layers} layers x {len(TARGETS)} projections, r={RANK}, alpha={LORA_ALPHA}, bf16: "
          f"{n_params / 1e6:.1f} M params, {size / 2**20:.1f} MiB")

    outdir = workdir / "out"
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir()
    # Bytecode cached as after a pip install (this checkout's environment sets PYTHONDONTWRITEBYTECODE).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    methods: dict[str, Callable[[Path], list[str]]] = {
        "swiftreg convert --to peft": lambda out: [swiftreg, "convert", str(src), str(out), "--to", "peft"],
        "ms-swift save_to_peft_format": lambda out: [
            swift_py, "-c", "import sys; from swift.tuners import Swift; "
                            "Swift.save_to_peft_format(sys.argv[1], sys.argv[2])", str(src), str(out)],
        "cp -r": lambda out: [cp, "-r", str(src), str(out)],
        "(ref) swiftreg convert --fsync": lambda out: [swiftreg, "convert", str(src), str(out), "--to", "peft",
                                                       "--fsync"],
        "(ref) cp -r + sync of the copy": lambda out: [
            "sh", "-c", 'cp -r "$0" "$1" && find "$1" -exec sync -- {} +', str(src), str(out)],
        "(ref) python -c pass": lambda out: [py, "-c", "pass"],  # the interpreter's start: the floor's first part
    }
    names = list(methods)
    library = "converters.convert (library, in process)"

    warm_read(src)
    print("warm-up: one read of the source and one untimed run of each method ...")
    warm_outs = {}
    for name in names[:3]:
        warm_outs[name] = outdir / f"warmup-{names.index(name)}"
        shutil.rmtree(warm_outs[name], ignore_errors=True)
        timing.run_process(methods[name](warm_outs[name]), env)
    print(verify_equal_work(src, warm_outs[names[0]], warm_outs[names[1]]))
    for out in warm_outs.values():
        shutil.rmtree(out, ignore_errors=True)

    import converters

    out = outdir / "run"
    clear = lambda: shutil.rmtree(out, ignore_errors=True)  # noqa: E731
    cases = [timing.Case(name, (lambda name=name: timing.run_process(methods[name](out), env)),
                         before=clear, after=clear) for name in names]
    cases.insert(1, timing.Case(library, lambda: converters.convert(src, out, "peft"), before=clear, after=clear))
    print(timing.load_average())
    results = timing.interleaved(cases, args.runs, progress=print)
    times = results.times
    shutil.rmtree(outdir, ignore_errors=True)

    # One more swiftreg run with --json for the library's own (in-process) conversion time.
    jout = workdir / "out-json"
    shutil.rmtree(jout, ignore_errors=True)
    proc = subprocess.run([swiftreg, "convert", str(src), str(jout), "--to", "peft", "--json"],
                          capture_output=True, text=True, check=True)
    in_process = json.loads(proc.stdout)["seconds"]
    shutil.rmtree(jout, ignore_errors=True)
    profile, _ = convert_profile(py, swiftreg, src, workdir)
    profile += startup_profile(py, swiftreg, src, workdir, max(3, args.runs))

    med = {n: statistics.median(t) for n, t in times.items()}
    ours, swift, copy = names[0], names[1], names[2]
    print()
    print(f"Swift -> PEFT, {size / 2**20:.1f} MiB adapter, {args.runs} interleaved rounds (warm page cache, sync "
          f"before each run); {timing.load_average()}")
    width = max(len(n) for n in times)
    print(f"  {'method':<{width}}  {'median s (min-max)':>24}  {'MB/s (med)':>10}")
    for n in times:
        print(f"  {n:<{width}}  {results.spread(n):>24}  {size / 1e6 / med[n]:10.0f}")
    print()
    print("  " + timing.verdict("ms-swift / swiftreg convert (whole processes)", med[swift] / med[ours],
                                SPEEDUP_VS_SWIFT, at_most=False))
    print("  " + timing.verdict("swiftreg convert / cp -r (whole processes)", med[ours] / med[copy], MAX_RATIO_VS_CP))
    print(f"  library call / cp -r: {med[library] / med[copy]:.2f}x; ms-swift / library call: "
          f"{med[swift] / med[library]:.1f}x; start-up and exit of a swiftreg process: about "
          f"{fmt_s(med[ours] - med[library])}")
    floor = med["(ref) python -c pass"] + med[library]
    print(f"  floor of any Python process that converts (python -c pass + the library call, no import): "
          f"{fmt_s(floor)} = {floor / med[copy]:.2f}x cp -r; the target leaves "
          f"{(MAX_RATIO_VS_CP * med[copy] - floor) * 1e3:.0f} ms for every import (click and the converters)")
    print()
    print("where a swiftreg process spends its time (medians):")
    print(f"  convert, whole process                   {fmt_s(med[ours])}")
    print(f"  converters.convert inside it (--json)    {fmt_s(in_process)}")
    print("\n".join(profile))
    if args.layers != 32:
        print(f"\nnote: --layers {args.layers} is not the 7B-scale size; targets are meant for 32 layers.")
    print(f"\nbenchmark took {time.perf_counter() - bench_started:.0f} s; source cached in {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
