"""Runs inside ms-swift's own environment: make Swift LoRA checkpoints and their greedy tokens, in one process.

    python tests/helpers/swift_greedy.py JOBS.json RESULTS.json

Jobs: {"op": "make", ...} exactly as registry/interop/swift_side.py's make (its function is reused);
{"op": "greedy", "base", "checkpoint", "prompts", "max_tokens"}: Swift.from_pretrained on a fresh
base, then greedy decoding (argmax of the full forward, one token at a time, EOS ignored), the
reference vLLM's tokens are compared with in tests/test_vllm.py.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import traceback
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "swift_side", Path(__file__).resolve().parents[2] / "registry" / "interop" / "swift_side.py")
swift_side = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(swift_side)  # type: ignore[union-attr]


def greedy(job: dict) -> dict:
    import torch
    from swift.tuners import Swift

    model = Swift.from_pretrained(swift_side._load_base(job), job["checkpoint"]).eval()
    tokens = []
    with torch.no_grad():
        for prompt in job["prompts"]:
            ids = list(prompt)
            for _ in range(job["max_tokens"]):
                logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0, -1]
                ids.append(int(torch.argmax(logits)))
            tokens.append(ids[len(prompt):])
    return {"tokens": tokens}


def main() -> int:
    swift_side._quiet()
    import torch

    torch.set_num_threads(1)
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    results = []
    for job in jobs:
        try:
            op = {"make": swift_side.make, "greedy": greedy}[job["op"]]
            results.append({"id": job.get("id"), "ok": True, **op(job)})
        except Exception as exc:
            results.append({"id": job.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()[-4000:]})
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
