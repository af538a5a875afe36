"""Runs inside ms-swift's own virtual environment (ms-swift pins an older peft), never imported by
swiftreg itself: `python swift_side.py JOBS.json RESULTS.json`.

One process runs a whole batch of jobs, because importing ms-swift alone takes seconds:
  make  build a model from a base folder, wrap it with Swift tuners, randomise the tuner weights,
        save it with SwiftModel.save_pretrained, and record outputs with each adapter active
        (optionally also run Swift.save_to_peft_format on the result);
  load  load a checkpoint with Swift.from_pretrained and record outputs per adapter;
  expect  build each stored tuner config with Swift.prepare_model on the base, save it, and report the
        tensor names, dtypes and shapes ms-swift writes (how ms-swift's own tuners are validated).

Outputs are saved as safetensors: `<adapter>` -> logits (or last hidden state), `__base__` -> the
base model's output. Only the standard library, torch, transformers, safetensors and ms-swift are
used here.
"""
from __future__ import annotations

import json
import sys
import traceback
from typing import Any


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)


def _load_base(job):
    import torch
    import transformers

    cls = getattr(transformers, job.get("model_class", "AutoModelForCausalLM"))
    model = cls.from_pretrained(job["base"], dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def _tuner_config(spec):
    import swift.tuners
    from swift.tuners import AdapterConfig, LoRAConfig, PromptConfig, SideConfig

    if spec.get("class"):  # any config class ms-swift exports: its own (LLaMAProConfig) or peft's (LoHaConfig)
        return getattr(swift.tuners, spec["class"])(**spec["config"])
    classes = {"LORA": LoRAConfig, "ADAPTER": AdapterConfig, "PROMPT": PromptConfig, "SIDE": SideConfig}
    return classes[spec.get("type", "LORA")](**spec["config"])


def _forward(model, probe, attention_mask: bool = False):
    import torch

    ids = torch.tensor(probe, dtype=torch.long)
    with torch.no_grad():  # ms-swift's Prompt tuner extends the attention mask it is given
        out = model(input_ids=ids, **({"attention_mask": torch.ones_like(ids)} if attention_mask else {}))
    tensor = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return tensor.detach().float().contiguous().clone()


def _randomise(model, seed: int) -> None:
    """Give every trainable tuner weight a non-trivial value: fresh LoRA B is zero and proves nothing."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if "lora_magnitude_vector" in name:
                param.copy_((param.float() * (1 + 0.1 * noise)).to(param.dtype))
            elif "modules_to_save" in name:
                param.add_((0.02 * noise).to(param.dtype))
            else:
                param.copy_((0.1 * noise).to(param.dtype))


def _save_outputs(path, outputs) -> None:
    from safetensors.torch import save_file

    save_file(outputs, path)


def make(job) -> dict:
    import torch
    from swift.tuners import Swift

    torch.manual_seed(job.get("seed", 0))
    model = _load_base(job)
    outputs = {}
    if job.get("probe") is not None:
        outputs["__base__"] = _forward(model, job["probe"], job.get("attention_mask", False))
    tuners = {spec["name"]: _tuner_config(spec) for spec in job["adapters"]}
    first = next(iter(tuners.values()))
    # peft's own config class (LoHa, VeRA, AdaLoRA, BOFT, ...; not ms-swift's LoRAConfig, which subclasses peft's):
    # ms-swift hands it to peft, which saves PEFT format
    peft_native = len(tuners) == 1 and (type(first).__module__.startswith("peft.")
                                        or type(first).__module__ == "swift.tuners.peft")
    swift_model = Swift.prepare_model(model, first if peft_native else tuners)
    _randomise(swift_model, job.get("seed", 0))
    swift_model.eval()
    swift_model.save_pretrained(job["out"], safe_serialization=job.get("safe_serialization", True))
    if job.get("probe") is not None:
        # Each adapter's reference output comes from a model holding that adapter alone, with the
        # weights copied over. Switching adapters in the multi-adapter model is not trustworthy:
        # ms-swift 4.6 keeps using the first adapter's modules_to_save copy whichever is active.
        full_state = swift_model.base_model.state_dict()
        if peft_native:
            outputs[job["adapters"][0]["name"]] = _forward(swift_model, job["probe"],
                                                           job.get("attention_mask", False))
        for spec in ([] if peft_native else job["adapters"]):
            single = Swift.prepare_model(_load_base(job), {spec["name"]: _tuner_config(spec)})
            with torch.no_grad():
                for key, value in single.base_model.state_dict().items():
                    if key in full_state:
                        value.copy_(full_state[key])
            single.eval()
            outputs[spec["name"]] = _forward(single, job["probe"], job.get("attention_mask", False))
        _save_outputs(job["outputs"], outputs)
    result: dict[str, Any] = {"adapters": list(tuners)}
    if job.get("save_to_peft"):
        try:
            Swift.save_to_peft_format(job["out"], job["save_to_peft"])
            result["save_to_peft"] = "ok"
        except Exception as exc:  # the peer's own failures are data here, not crashes
            result["save_to_peft"] = f"{type(exc).__name__}: {exc}"
    return result


def load(job) -> dict:
    """Each adapter is loaded alone on a fresh base (see make() on adapter switching in ms-swift)."""
    import os

    from swift.tuners import Swift

    names = job.get("adapters") or sorted(
        d for d in os.listdir(job["checkpoint"])
        if os.path.isfile(os.path.join(job["checkpoint"], d, "adapter_config.json")))
    outputs, kinds, forward_errors = {}, set(), {}
    for name in names:
        # checkpoint: a folder, or a hub id downloaded by ms-swift itself (modelscope, `revision`)
        loaded = Swift.from_pretrained(_load_base(job), job["checkpoint"], adapter_name=[name],
                                       revision=job.get("revision"))
        kinds.add(type(loaded).__name__)
        try:
            outputs[name] = _forward(loaded.eval(), job["probe"], job.get("attention_mask", False))
        except Exception as exc:  # loaded, but ms-swift's own forward fails (its Prompt tuner on Llama): data
            if not job.get("forward_errors_ok"):
                raise
            forward_errors[name] = f"{type(exc).__name__}: {exc}"
    _save_outputs(job["outputs"], outputs)
    result = {"adapters": names, "kind": sorted(kinds), "forward_errors": forward_errors}
    if job.get("report_modelscope"):
        import modelscope

        result["modelscope"] = modelscope.__version__
    return result


def expect(job) -> dict:
    """What ms-swift saves for each stored tuner config on this base: {adapter: {key: [dtype, shape]}}.

    ms-swift builds the tuner from the checkpoint's own config (SwiftConfig.from_pretrained) on a fresh base
    and saves it; the names and shapes it writes are what the stored file must hold."""
    import os
    import tempfile

    from safetensors import safe_open
    from swift.tuners import Swift
    from swift.tuners.utils import SwiftConfig

    expected = {}
    for name in job["adapters"]:
        config = SwiftConfig.from_pretrained(os.path.join(job["checkpoint"], name))
        model = Swift.prepare_model(_load_base(job), {name: config})
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            path = os.path.join(tmp, name, "adapter_model.safetensors")
            keys = {}
            if os.path.isfile(path):
                with safe_open(path, "pt") as f:
                    for key in f.keys():
                        t = f.get_slice(key)
                        keys[key] = [t.get_dtype(), list(t.get_shape())]
        expected[name] = keys
    return {"adapters": list(job["adapters"]), "expected": expected}


def main() -> int:
    _quiet()
    import torch

    torch.set_num_threads(1)  # identical kernels on both sides of an equivalence check
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    results = []
    for job in jobs:
        try:
            run = {"make": make, "load": load, "expect": expect}[job["op"]]
            results.append({"id": job.get("id"), "ok": True, **run(job)})
        except Exception as exc:
            results.append({"id": job.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()[-4000:]})
    with open(sys.argv[2], "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
