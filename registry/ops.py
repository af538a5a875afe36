"""Merge, unmerge and combine on registry revisions (or local folders), checked and recorded.

Each operation takes its inputs from the registry (or local paths), does the tensor work in a
temporary folder, runs the equivalence checks on real models, and then either pushes the result
as a new revision whose `parents` record the lineage (input revisions, operation, parameters,
library versions, equivalence figures) or writes it to a folder.
"""
from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

import converters
from converters.source_files import copy_folder

from .api import RegistryAPI, RevisionInfo
from .atomic import new_folder
from .errors import RegistryError
from .tensors import equivalence as eq
from .tensors.adapter_tensors import AdapterTensors, load_adapter
from .tensors.errors import NotInvertibleError
from .versions import library_versions


@dataclass
class OpResult:
    operation: str
    comparisons: list[eq.Comparison]
    output: Path | None = None
    pushed: RevisionInfo | None = None
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)


@dataclass
class Source:
    """An input: its local folder and how lineage names it."""

    folder: Path
    record: dict[str, Any]


def source(reg: RegistryAPI, ref: str, role: str, fmt: str | None, scratch: Path) -> Source:
    """A registry id (`ns/name@ref`) or a local folder; adapters are brought to PEFT form."""
    local = Path(ref)
    if local.exists():
        folder = local
        if fmt == "peft" and converters.detect(local).format != "peft":
            folder = converters.convert(local, scratch / f"{role}-{len(list(scratch.iterdir()))}", "peft").destination
        return Source(folder, {"role": role, "path": str(local.resolve())})
    info = reg.show(ref)
    return Source(reg.resolve(ref, format=fmt), {"role": role, "repo": info.repo, "kind": info.kind,
                                                  "number": info.number, "digest": info.digest})


#: Told each stage of a long operation as it starts ("loading the base model", "checking equivalence"), so a
#: command can say where it is (the CLI: one line per stage off a terminal).
Stage = Callable[[str], None]


def _say(stage: Stage | None, message: str) -> None:
    if stage is not None:
        stage(message)


def _finish(reg: RegistryAPI, result: OpResult, built: Path, *, kind: str, push: str | None, output: Path | None,
            lineage: list[dict[str, Any]], message: str, tag: str | None = None,
            base_model: str | None = None, before_push: Callable[[], None] | None = None,
            stage: Stage | None = None) -> OpResult:
    lineage = lineage + [{"role": "operation", "op": result.operation, **result.figures,
                          "versions": library_versions(),
                          "equivalence": [c.to_dict() for c in result.comparisons]}]
    if not result.passed:
        result.notes.append("equivalence check failed: nothing was pushed or written")
        return result
    if push:
        if before_push is not None:  # e.g. a job runner refusing to push for a cancelled job
            before_push()
        _say(stage, f"pushing the result as {push}")
        pushed = (reg.push_base(built, push, tag=tag, message=message, parents=lineage) if kind == "base"
                  else reg.push(built, push, tag=tag, message=message, parents=lineage, base_model=base_model))
        result.pushed = pushed.revision
    if output is not None:
        output = Path(output).absolute()
        if output.exists():
            raise RegistryError(f"{output} already exists; choose a new path")
        output.parent.mkdir(parents=True, exist_ok=True)
        _say(stage, f"writing the result to {output}")
        _place(built, output)
        result.output = output
    return result


def _place(built: Path, output: Path) -> None:
    """Publish `built` as `output`: renamed when both are on one filesystem (the merge builds its result
    beside the destination for that), copied whole-or-nothing otherwise (a registry revision, say)."""
    if built.parent.parent == output.parent and not output.exists():
        try:
            os.rename(built, output)  # one directory entry: whole or not at all, no byte copied
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOTEMPTY, errno.EEXIST):
                raise
    with new_folder(output) as tmp:  # whole or not at all; files and folders with the umask's modes
        copy_folder(built, tmp)


def _scratch_root(reg: RegistryAPI, output: Path | None) -> Path:
    """Where an operation builds its result: beside `output` when one is asked for, so that publishing it is a
    rename (never a copy of gigabytes); in the registry's home otherwise."""
    if output is None:
        return Path(reg.home)
    parent = Path(output).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def merge(reg: RegistryAPI, adapter_ref: str, base_ref: str, *, push: str | None = None, output: Path | None = None,
          dtype: str | None = None, device: str = "auto", precision: str = "float32", safe: bool = False,
          check: bool = True, check_outputs: str = "auto", tag: str | None = None,
          progress: Callable[[int], None] | None = None,
          before_push: Callable[[], None] | None = None, stage: Stage | None = None) -> OpResult:
    """Merge, check, then push and/or publish. The check has two halves, both on the merge's device:

    * per tensor, fused into the merge pass, always (with `check`): every LoRA tensor within half a storage
      ulp (plus the float32 accumulation bound) of W + delta, every module merged once (tensor_check.py);
    * on outputs (`check_outputs`): the merged model against PEFT's own merge_and_unload() in the storage
      dtype (equivalence.check_merge_outputs). "auto" runs it when some changed tensor is outside the
      per-tensor rule (DoRA, SHiRA, other PEFT types, lora_bias, replaced tensors); "full" always; "off" never.
      For plain LoRA the per-tensor proof is the stronger statement (an output tolerance cannot see a
      module left out in half precision), and the output check costs what PEFT's own load and merge cost.

    The result is built beside `output` and renamed into place once checked."""
    from .tensors.device import pick_device
    from .tensors.merge import merge_checkpoint

    with tempfile.TemporaryDirectory(prefix=".swiftreg-merge-", dir=_scratch_root(reg, output)) as tmp:
        scratch = Path(tmp)
        _say(stage, f"fetching the base model {base_ref} and the adapter {adapter_ref}")
        base = source(reg, base_ref, "base", None, scratch)
        adapter = source(reg, adapter_ref, "adapter", "peft", scratch)
        merged = scratch / "merged"
        _say(stage, "merging, one shard of the base at a time" + (", each merged tensor checked" if check else ""))
        report = merge_checkpoint(base.folder, load_adapter(adapter.folder, base_dir=base.folder), merged, dtype=dtype,
                                  device=device, precision=precision, safe=safe, progress=progress, verify=check)
        comparisons: list[eq.Comparison] = []
        if check:
            comparisons.append(_tensor_row(report.verify, report.dtype or _stored_dtype(merged)))
            if check_outputs == "full" or (check_outputs == "auto" and report.verify and report.verify["not_checked"]):
                _say(stage, "checking equivalence: the merged model against PEFT's merge on a probe batch")
                comparisons += eq.check_merge_outputs(base.folder, adapter.folder, merged, device=pick_device(device))
        result = OpResult("merge", comparisons, figures={"params": {"dtype": dtype, "device": device,
                                                                    "precision": precision, "safe": safe},
                                                         "report": _plain(report)})
        return _finish(reg, result, merged, kind="base", push=push, output=output,
                       lineage=[base.record, adapter.record], tag=tag,
                       message=f"merge of {adapter_ref} into {base_ref}", before_push=before_push, stage=stage)


def _stored_dtype(folder: Path) -> str:
    """The dtype config.json states for a checkpoint (torch_dtype or dtype), for labels only."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "-"
    return str(config.get("torch_dtype") or config.get("dtype") or "-")


def _tensor_row(verify: dict[str, Any] | None, dtype: str) -> eq.Comparison:
    """The per-tensor check as a row of the equivalence table: worst |error| / bound over every element."""
    assert verify is not None
    worst = float(verify["worst_ratio"])
    return eq.Comparison(f"merged vs base+adapter, per tensor: worst error/rounding bound ({verify['tensors_checked']} "
                         "tensors)", dtype, worst, worst, None, 1.0)


def unmerge(reg: RegistryAPI, merged_ref: str, adapter_ref: str, *, push: str | None = None,
            output: Path | None = None, device: str = "auto", precision: str = "float32",
            tag: str | None = None, before_push: Callable[[], None] | None = None,
            stage: Stage | None = None) -> OpResult:
    """The original base, bit for bit, when lineage knows it; the numerical unmerge otherwise.

    Either way the numerical unmerge is computed and its drift from the original reported: with
    bf16 weights, subtracting the delta does not give back the bits merge started from.
    """
    from .tensors.device import pick_device
    from .tensors.merge import unmerge_checkpoint

    with tempfile.TemporaryDirectory(prefix="swiftreg-unmerge-", dir=reg.home) as tmp:
        scratch = Path(tmp)
        _say(stage, f"fetching the merged model {merged_ref} and the adapter {adapter_ref}")
        merged = source(reg, merged_ref, "merged", None, scratch)
        adapter = source(reg, adapter_ref, "adapter", "peft", scratch)
        numeric = scratch / "unmerged"
        original = _original_base(reg, merged.record, adapter.record)
        _say(stage, "unmerging, one shard at a time")
        tensors = load_adapter(adapter.folder, base_dir=merged.folder)
        try:
            unmerge_checkpoint(merged.folder, tensors, numeric, device=device, precision=precision)
        except NotInvertibleError as exc:
            if original is None:
                raise
            numeric_refusal: str | None = str(exc)  # lineage still knows the original: that is the answer
        else:
            numeric_refusal = None
        _say(stage, "checking the result on the model")
        result = OpResult("unmerge", [], figures={"params": {"device": device, "precision": precision}})
        if original is not None:
            result.notes.append(f"lineage: {merged_ref} is the merge of this adapter into {original[1]}; "
                                "returning that base revision bit for bit")
            if numeric_refusal is not None:
                result.notes.append(f"no numerical unmerge to compare with: {numeric_refusal}")
            else:
                drift = _tensor_drift(numeric, original[0])
                result.figures["numerical_unmerge_drift"] = drift
                result.comparisons.append(eq.check_same_model("numerical unmerge vs original base", numeric,
                                                              original[0], device=pick_device(device)))
                result.comparisons[-1] = _as_info(result.comparisons[-1])
            built = original[0]
        else:
            result.notes.append("no lineage for this merge: the result is the numerical unmerge")
            remerged = scratch / "remerged"
            from .tensors.merge import merge_checkpoint

            merge_checkpoint(numeric, tensors, remerged, device=device, precision=precision)
            result.comparisons.append(eq.check_same_model("merge(unmerge(M)) vs M", remerged, merged.folder,
                                                          device=pick_device(device)))
            built = numeric
        return _finish(reg, result, built, kind="base", push=push, output=output,
                       lineage=[merged.record, adapter.record], tag=tag,
                       message=f"unmerge of {adapter_ref} from {merged_ref}", before_push=before_push, stage=stage)


def combine(reg: RegistryAPI, refs: list[str], weights: list[float], method: str, *, semantics: str = "exact",
            rank: int | None = None, svd_clamp: float | None = None, density: float | None = None,
            majority_sign_method: str = "total", seed: int | None = None, base_ref: str | None = None,
            push: str | None = None, output: Path | None = None, device: str = "auto",
            tag: str | None = None, before_push: Callable[[], None] | None = None,
            stage: Stage | None = None) -> OpResult:
    from .tensors.adapter_io import save_adapter
    from .tensors.combine import combine as combine_tensors
    from .tensors.device import pick_device

    if not refs:
        raise RegistryError("combine needs an adapter")
    if len(refs) == 1 and method != "svd":
        raise RegistryError(f"combining one adapter reduces its rank: use --method svd --rank R (not {method}), "
                            "or give two or more adapters")
    if len(weights) != len(refs):
        raise RegistryError(f"{len(refs)} adapters but {len(weights)} weights")
    with tempfile.TemporaryDirectory(prefix="swiftreg-combine-", dir=reg.home) as tmp:
        scratch = Path(tmp)
        _say(stage, f"fetching {len(refs)} adapter{'s' if len(refs) > 1 else ''}")
        sources = [source(reg, ref, f"source{i}", "peft", scratch) for i, ref in enumerate(refs)]
        base = source(reg, base_ref, "base", None, scratch) if base_ref is not None else None
        if _refuse_uncombinable(sources, refs) == "IA3":
            return _combine_ia3(reg, refs, sources, weights, method, base, scratch, push=push, output=output, tag=tag,
                                device=device, before_push=before_push, stage=stage)
        tensors = [load_adapter(s.folder) for s in sources]
        _say(stage, f"combining ({method})")
        params = {"weights": weights, "method": method, "semantics": semantics, "rank": rank, "svd_clamp": svd_clamp,
                  "density": density, "majority_sign_method": majority_sign_method, "seed": seed}
        shapes = _weight_shapes(base.folder, tensors) if base is not None else None
        combined = combine_tensors(tensors, weights, method, semantics=semantics, rank=rank, svd_clamp=svd_clamp,
                                   density=density, majority_sign_method=majority_sign_method, seed=seed,
                                   device=device, shapes=shapes)
        built = scratch / "combined"
        save_adapter(combined.adapter, built)
        result = OpResult("combine", [], notes=list(combined.notes), figures={"params": params})
        lineage = [s.record for s in sources]
        base_model = None
        if base is not None:
            _say(stage, f"checking the result on the base model {base_ref}")
            result.comparisons.extend(_combine_checks(base.folder, built, [s.folder for s in sources], tensors,
                                                      weights, params, pick_device(device)))
            lineage.append(base.record)
            if "repo" in base.record:  # a registered base: the pushed adapter records it, pinned to that revision
                base_model = f"{base.record['repo']}@{base.record['number']}"
        else:
            result.notes.append("no --base-model given: the combined adapter was not run on a model")
        return _finish(reg, result, built, kind="adapter", push=push, output=output, lineage=lineage, tag=tag,
                       message=f"{method} ({semantics}) of {', '.join(refs)} with weights {weights}",
                       base_model=base_model, before_push=before_push, stage=stage)


def _refuse_uncombinable(sources: list[Source], refs: list[str]) -> str | None:
    """Combination is for the LoRA family, SHiRA (fusion) and IA3 (peft's own weighted sum, all sources IA3):
    any other type is refused, naming it. Returns "IA3" when every source is IA3."""
    from converters.config import CONFIG_NAME, read_json

    from .tensors.errors import CombineError

    types = []
    for ref, src in zip(refs, sources):
        config_path = src.folder / CONFIG_NAME
        peft_type = read_json(config_path).get("peft_type") if config_path.is_file() else None
        types.append(peft_type)
        if peft_type not in (None, "LORA", "SHIRA", "IA3"):
            raise CombineError(f"{ref} is a {peft_type} adapter: swiftreg combines LoRA-family adapters (every PEFT "
                               "combination type), SHiRA adapters (fusion over the union of their masks) and IA3 "
                               f"adapters (peft's weighted sum); a weighted sum of {peft_type} adapters is not one "
                               f"{peft_type} adapter in general")
    if "IA3" in types and set(types) != {"IA3"}:
        raise CombineError("IA3 adapters combine only with IA3 adapters (peft's weighted sum of their scaling vectors)")
    return "IA3" if types and set(types) == {"IA3"} else None


def _combine_ia3(reg: RegistryAPI, refs: list[str], sources: list[Source], weights: list[float], method: str,
                 base: Source | None, scratch: Path, *, push: str | None, output: Path | None, tag: str | None,
                 device: str, before_push: Callable[[], None] | None, stage: Stage | None) -> OpResult:
    """IA3: peft's own add_weighted_adapter (ia3_l = sum_i w_i l_i per module), saved, reloaded and checked."""
    import shutil as _shutil

    from peft import PeftModel

    from .tensors.device import pick_device
    from .tensors.errors import CombineError

    if method != "linear":
        raise CombineError(f"IA3 adapters combine by linear only (peft's weighted sum of the ia3_l vectors), not "
                           f"{method!r}")
    if base is None:
        raise CombineError("combining IA3 adapters runs peft's add_weighted_adapter on the base model: pass "
                           "--base-model")
    dev = pick_device(device)
    _say(stage, "combining (peft's IA3 add_weighted_adapter)")
    model = PeftModel.from_pretrained(eq.load_model(base.folder, torch.float32, dev), sources[0].folder,
                                      adapter_name="src0")
    for i, src in enumerate(sources[1:], start=1):
        model.load_adapter(src.folder, adapter_name=f"src{i}")
    model.add_weighted_adapter([f"src{i}" for i in range(len(sources))], list(weights), "combined")
    model.set_adapter("combined")
    inputs = eq.probe_inputs(base.folder)
    expected = eq.outputs(model.eval(), inputs)
    saved = scratch / "ia3-saved"
    model.save_pretrained(saved, selected_adapters=["combined"])
    built = scratch / "combined"
    _shutil.move(str(saved / "combined"), built)
    del model
    ours = eq.peft_outputs(base.folder, built, inputs, device=dev)
    comparison = eq.compare("combined (reloaded) vs peft add_weighted_adapter", ours, expected, "float32",
                            logits=eq.is_causal_lm(base.folder))
    params = {"weights": weights, "method": method, "semantics": "peft"}
    result = OpResult("combine", [comparison], figures={"params": params},
                      notes=["IA3: peft's weighted sum of the scaling vectors (ia3_l = sum_i w_i l_i); this is peft's "
                             "definition, not the sum of the adapters' effects"])
    base_model = f"{base.record['repo']}@{base.record['number']}" if "repo" in base.record else None
    return _finish(reg, result, built, kind="adapter", push=push, output=output,
                   lineage=[s.record for s in sources] + [base.record], tag=tag,
                   message=f"{method} (peft) of {', '.join(refs)} with weights {weights}", base_model=base_model,
                   before_push=before_push, stage=stage)


def _weight_shapes(base_dir: Path, tensors: list[AdapterTensors]) -> dict[str, tuple[int, int]]:
    """(out, in) of each base weight a source's SHiRA module names, read from the base's headers."""
    from converters.base_model import BaseModel

    base = BaseModel.open(base_dir)
    shapes: dict[str, tuple[int, int]] = {}
    for adapter in tensors:
        for module, entry in adapter.modules.items():
            weight = base.weight_of(module) if entry.kind == "shira" else None
            if weight is not None and len(weight.shape) == 2:
                shapes[module] = (int(weight.shape[0]), int(weight.shape[1]))
    return shapes


def _combine_checks(base_dir: Path, combined_dir: Path, source_dirs: list[Path], tensors: list[AdapterTensors],
                    weights: list[float], params: dict[str, Any], device: torch.device) -> list[eq.Comparison]:
    from .tensors.lora_math import lora_delta, shira_dense

    inputs = eq.probe_inputs(base_dir)
    ours = eq.peft_outputs(base_dir, combined_dir, inputs, device=device)
    intended: dict[str, torch.Tensor] = {}
    shapes = _weight_shapes(base_dir, tensors)
    for weight, adapter in zip(weights, tensors):
        for module, entry in adapter.modules.items():
            if entry.kind == "shira":
                delta = weight * shira_dense(entry, shapes[module], dtype=torch.float64)
            elif entry.kind != "linear":
                continue
            else:
                delta = weight * lora_delta(entry, dtype=torch.float64)
            intended[module] = intended[module] + delta if module in intended else delta
    shira = any(t.peft_type == "SHIRA" for t in tensors)
    lossless = shira or params["method"] == "cat" or (
        params["method"] == "svd" and params["semantics"] == "exact" and params["rank"] is not None
        and params["rank"] >= sum(max((m.r for m in t.modules.values()), default=0) for t in tensors))
    reference = eq.outputs_with_deltas(base_dir, intended, inputs, device=device)
    logits = eq.is_causal_lm(base_dir)
    checks = [eq.compare("combined vs base + intended delta (float64)", ours, reference, "float32",
                         informational=not (lossless and params["semantics"] == "exact"), logits=logits)]
    if params["semantics"] == "peft":
        # PEFT draws DARE masks from the global RNG, interleaved with its own layer creation: from
        # outside they cannot be matched mask for mask (tests/test_worker_combine.py proves equality
        # by seeding PEFT per module). For those methods the figure is reported, not judged.
        random_masks = params["method"].startswith("dare")
        checks.append(eq.compare("combined vs peft add_weighted_adapter", ours,
                                 _peft_weighted_outputs(base_dir, source_dirs, weights, params, inputs, device),
                                 "float32", informational=random_masks, logits=logits))
    return checks


def _peft_weighted_outputs(base_dir: Path, source_dirs: list[Path], weights: list[float], params: dict[str, Any],
                           inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(eq.load_model(base_dir, torch.float32, device), source_dirs[0],
                                      adapter_name="src0")
    for i, folder in enumerate(source_dirs[1:], start=1):
        model.load_adapter(folder, adapter_name=f"src{i}")
    kwargs: dict[str, Any] = {"combination_type": params["method"]}
    for key in ("density", "majority_sign_method", "svd_clamp"):
        if params.get(key) is not None:
            kwargs[key] = params[key]
    if params.get("rank") is not None:
        kwargs["svd_rank"] = params["rank"]
    if params.get("seed") is not None:
        torch.manual_seed(params["seed"])
    model.add_weighted_adapter([f"src{i}" for i in range(len(source_dirs))], list(weights), "combined", **kwargs)
    model.set_adapter("combined")
    return eq.outputs(model.eval(), inputs)


def check(reg: RegistryAPI, adapter_ref: str, base_ref: str, merged_ref: str | None = None, *,
          device: str = "auto", stage: Stage | None = None) -> OpResult:
    """`swiftreg check-equivalence`: a merged model (or a fresh merge) against base + adapter and PEFT."""
    from .tensors.device import pick_device
    from .tensors.merge import merge_checkpoint

    with tempfile.TemporaryDirectory(prefix="swiftreg-check-", dir=reg.home) as tmp:
        scratch = Path(tmp)
        _say(stage, f"fetching the base model {base_ref} and the adapter {adapter_ref}")
        base = source(reg, base_ref, "base", None, scratch)
        adapter = source(reg, adapter_ref, "adapter", "peft", scratch)
        if merged_ref is None:
            _say(stage, "merging")
            merged = scratch / "merged"
            merge_checkpoint(base.folder, load_adapter(adapter.folder, base_dir=base.folder), merged, device=device)
        else:
            merged = source(reg, merged_ref, "merged", None, scratch).folder
        _say(stage, "running base + adapter, the merged model and PEFT's merge on a probe batch")
        return OpResult("check", eq.check_merge(base.folder, adapter.folder, merged, device=pick_device(device)))


def _original_base(reg: RegistryAPI, merged: dict[str, Any], adapter: dict[str, Any]) -> tuple[Path, str] | None:
    if "repo" not in merged:
        return None
    info = reg.show(f"{merged['repo']}@{merged['number']}")
    ops = [p for p in info.parents if p.get("role") == "operation" and p.get("op") == "merge"]
    bases = [p for p in info.parents if p.get("role") == "base" and "repo" in p]
    adapters = [p for p in info.parents if p.get("role") == "adapter"]
    if not ops or not bases or not adapters:
        return None
    if adapter.get("digest") and adapters[0].get("digest") and adapter["digest"] != adapters[0]["digest"]:
        raise RegistryError(f"{merged['repo']}@{merged['number']} was merged with {adapters[0].get('repo')}@"
                            f"{adapters[0].get('number')}, not with the adapter given")
    ref = f"{bases[0]['repo']}@{bases[0]['digest']}"
    return reg.resolve(ref), ref


def _tensor_drift(left: Path, right: Path) -> dict[str, Any]:
    """How far a numerical unmerge lands from the original: elements that differ, max abs diff."""
    from safetensors import safe_open

    differing = total = 0
    worst = 0.0
    for shard in sorted(right.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as ref, safe_open(str(left / shard.name), "pt") as ours:
            for key in ref.keys():
                a, b = ours.get_tensor(key), ref.get_tensor(key)
                if a.dtype != b.dtype:
                    a = a.to(b.dtype)
                diff = a.to(torch.float64) - b.to(torch.float64)
                differing += int((a != b).sum())
                total += b.numel()
                worst = max(worst, diff.abs().max().item() if b.numel() else 0.0)
    return {"elements_differing": differing, "elements": total, "max_abs_diff": worst}


def _as_info(c: eq.Comparison) -> eq.Comparison:
    return replace(c, informational=True)


def _plain(report: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(report) and not isinstance(report, type):
        return {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list, dict)) else v)
                for k, v in asdict(report).items()}
    return {"report": str(report)}
