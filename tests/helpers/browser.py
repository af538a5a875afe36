"""The web tier's fixtures: a registry seeded with what the pages show, and a headless Chromium.

`seed_web` fills a registry (in this process, before or beside a `swiftreg serve` on it) with adapters on a
base model, a second revision, a merge and a combination (their lineage recorded as `ops.py` records it),
an import (its provenance recorded as `swiftreg import` does), validation runs (one of them a regression)
and jobs, plus a model card carrying a `<script>` and a `javascript:` link. Checkpoints are written
directly (tests/helpers/checkpoints.py): no model is built, so seeding takes well under a second.

`chromium` starts Debian's chromium through /usr/bin/chromedriver with Selenium (selenium-manager is never
asked to download anything); a missing browser is a skip, and in the full suite (SWIFTREG_FULL_SUITE=1)
a failure.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.helpers.checkpoints import write_peft_lora

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
EVIL_CARD = """# Evil card

Hello <script>document.title = "pwned"; window.__pwned = 1;</script> world.

[click me](javascript:window.__pwned=2) and <a href="javascript:window.__pwned=3" id="raw">raw link</a>
<img src="x" onerror="window.__pwned=4">

| a | b |
|---|---|
| 1 | 2 |
"""
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128, "hidden_size": 32,
         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 64, "tie_word_embeddings": False, "torch_dtype": "float32"}


def write_base(folder: Path, seed: int = 0) -> Path:
    """A tiny Llama folder (config.json + model.safetensors) with the shapes tests/helpers/checkpoints.py's
    adapters target, written without transformers."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(LLAMA, indent=2))
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((128, 32), dtype=np.float32),
                                "lm_head.weight": rng.standard_normal((128, 32), dtype=np.float32),
                                "model.norm.weight": np.ones(32, dtype=np.float32)}
    for i in range(2):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (32, 32)), ("self_attn.k_proj", (16, 32)),
                            ("self_attn.v_proj", (16, 32)), ("self_attn.o_proj", (32, 32)),
                            ("mlp.gate_proj", (64, 32)), ("mlp.up_proj", (64, 32)), ("mlp.down_proj", (32, 64))):
            t[p + name + ".weight"] = rng.standard_normal(shape, dtype=np.float32)
        t[p + "input_layernorm.weight"] = np.ones(32, dtype=np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(32, dtype=np.float32)
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _changed(src: Path, dst: Path, *, scale_module: str | None = None, drop_module: str | None = None,
             rank: int | None = None) -> Path:
    """A copy of a PEFT folder with one module's B scaled, one module dropped, or every rank changed."""
    from safetensors.numpy import load_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "adapter_model.safetensors"))
    out = {}
    for key, value in tensors.items():
        if drop_module and drop_module in key:
            continue
        if scale_module and scale_module in key and "lora_B" in key:
            value = value * 3.0
        out[key] = value
    save_file(out, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    return dst


def seed_web(reg: Any, work: Path) -> dict[str, Any]:
    """Seed `reg` (see the module docstring); what was made, by name."""
    from registry.jobs.api import queue_of

    made: dict[str, Any] = {}
    reg.push_base(write_base(work / "base"), "meta/llama-tiny", tag="v1", message="the tiny llama")
    base = "meta/llama-tiny@v1"
    # team/plain: three revisions (v1, a changed module, a dropped module) and a README card
    one = write_peft_lora(work / "plain-1", seed=1)
    (one / "README.md").write_text("# Plain adapter\n\nA **plain** LoRA for `q_proj` and `v_proj`.\n")
    made["plain1"] = reg.push(one, "team/plain", tag="v1", message="first <b>cut</b>", author="alice",
                              base_model=base).revision
    two = _changed(one, work / "plain-2", scale_module="layers.0.self_attn.q_proj")
    made["plain2"] = reg.push(two, "team/plain", tag="v2", message="scaled q_proj of layer 0", author="bob",
                              base_model=base).revision
    three = _changed(two, work / "plain-3", drop_module="layers.1.self_attn.v_proj")
    made["plain3"] = reg.push(three, "team/plain", message="dropped v_proj of layer 1", author="bob",
                              base_model=base).revision
    # team/rank8: another rank; team/evil: a hostile card
    made["rank8"] = reg.push(write_peft_lora(work / "rank8", seed=2, r=8), "team/rank8", tag="v1",
                             base_model=base).revision
    evil = write_peft_lora(work / "evil", seed=3)
    (evil / "README.md").write_text(EVIL_CARD)
    made["evil"] = reg.push(evil, "team/evil", tag="v1", message="<script>alert(1)</script>",
                            base_model=base).revision
    # lab: a merge result (a base-model revision with lineage) and a combination (an adapter with lineage)
    def record(info: Any, role: str) -> dict[str, Any]:
        return {"role": role, "repo": info.repo, "kind": info.kind, "number": info.number, "digest": info.digest}

    base_info = reg.show(base)
    made["merged"] = reg.push_base(write_base(work / "merged", seed=9), "lab/llama-merged", message="merged",
                                   parents=[record(base_info, "base"), record(made["plain1"], "adapter"),
                                            {"role": "operation", "op": "merge", "scaling": 1.0}]).revision
    made["combined"] = reg.push(write_peft_lora(work / "combined", seed=4), "lab/combined", tag="v1",
                                message="combined", base_model=base,
                                parents=[record(made["plain1"], "adapter"), record(made["rank8"], "adapter"),
                                         {"role": "operation", "op": "combine", "combination_type": "cat",
                                          "weights": [0.5, 0.5]}]).revision
    # ext: an import from a hub, with its provenance
    made["imported"] = reg.push(write_peft_lora(work / "imported", seed=5), "ext/imported", tag="v1",
                                message="imported from hf://someone/lora",
                                provenance={"hub": "hf", "endpoint": "https://huggingface.co",
                                            "repo": "someone/lora", "requested_revision": "main",
                                            "commit": "0123456789abcdef0123456789abcdef01234567"}).revision
    # validation runs: team/plain@1 passes twice then regresses; a vLLM verdict on team/plain@2
    versions = {"torch": "2.13.0", "peft": "0.21.2", "transformers": "5.23.0"}
    for passed, diff in ((True, 1e-6), (True, 2e-6), (False, 0.5)):
        reg.record_validation("team/plain@1", "equivalence", passed=passed,
                              metrics={"max_abs_diff": diff, "reason": "" if passed else "max_abs_diff 0.5 > 1e-4"},
                              library_versions=versions)
    reg.record_validation("team/plain@2", "serve:vllm", passed=True,
                          metrics={"reasons": [], "notes": ["rank 4 <= 16"], "max_lora_rank": 16},
                          library_versions=versions)
    reg.record_validation("team/rank8@1", "equivalence", passed=True, metrics={"max_abs_diff": 3e-7},
                          library_versions=versions)
    # jobs: queued ones (no worker runs here)
    queue = queue_of(reg)
    made["job_team"] = queue.submit("sleep", {"seconds": 60}, namespace="team")[0]
    made["job_lab"] = queue.submit("sleep", {"seconds": 60}, namespace="lab")[0]
    return made


def chromium_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements/dev.txt)"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by Selenium through Debian's chromedriver."""
    missing = chromium_missing()
    if missing:
        if os.environ.get("SWIFTREG_FULL_SUITE") == "1":
            pytest.fail(f"the web tier needs Chromium: {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def artifacts_dir(tmp: Path) -> Path:
    """Where screenshots go: $SWIFTREG_ARTIFACTS/web if set, else a folder of the test's tmp dir."""
    root = os.environ.get("SWIFTREG_ARTIFACTS")
    folder = Path(root) / "web" if root else tmp / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
