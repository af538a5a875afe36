"""Comparing two adapter revisions: config differences, and per module what changed and by how much.

Both revisions are read in PEFT form (a Swift revision is converted once, as resolve() does), so two
formats of one adapter compare module by module. Per module (a tensor path without its `lora_A` /
`lora_B` part): added, removed, or changed (tensor bytes differ), with its shapes, its rank and the
Frobenius norm of its delta, ``s * ||B A||_F`` with ``s`` the module's scaling (alpha / r, or
alpha / sqrt(r) with rsLoRA, patterns applied). The norm never forms the ``out x in`` product:
``||B A||_F^2 = sum((B^T B) * (A A^T))``, two ``r x r`` Gram matrices. Tensors are read straight from
the safetensors bytes with numpy (no torch, no model); without numpy the page says so and lists the
modules and shapes only. The result is cached once per pair of revision digests, on disk under the
registry's home (`cache/compare/`).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import atomic
from ..errors import RegistryError

if TYPE_CHECKING:
    from . import Registry

#: Bumped when the comparison's figures could change for the same two revisions (the cache key has it).
VERSION = "1"
_PAIR = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.[^.]+)?\.weight$")
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U8": "u1", "BOOL": "?"}


def _header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 << 20:
            raise RegistryError(f"{path.name}: safetensors header of {n} bytes is not plausible")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _tensors(folder: Path) -> dict[str, dict[str, Any]]:
    """Every tensor of a PEFT folder: `adapter/key` (or `key` for the default adapter) -> dtype, shape,
    a digest of its bytes, and where its bytes lie."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*.safetensors")):
        prefix = str(path.parent.relative_to(folder))
        header, start = _header(path)
        with open(path, "rb") as f:
            for key, t in header.items():
                begin, end = t["data_offsets"]
                f.seek(start + begin)
                data = f.read(end - begin)
                name = key if prefix == "." else f"{prefix}/{key}"
                out[name] = {"dtype": t["dtype"], "shape": list(t["shape"]), "sha": hashlib.sha256(data).hexdigest(),
                             "file": str(path), "offset": start + begin, "length": end - begin}
    return out


def _configs(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(folder.rglob("adapter_config.json")):
        prefix = str(path.parent.relative_to(folder))
        out["" if prefix == "." else prefix] = json.loads(path.read_text())
    return out


def _array(t: dict[str, Any]) -> Any:
    import numpy as np

    with open(t["file"], "rb") as f:
        f.seek(t["offset"])
        data = f.read(t["length"])
    if t["dtype"] == "BF16":
        raw = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32).reshape(t["shape"]).astype(np.float64)
    if t["dtype"] not in _DTYPES:
        raise RegistryError(f"cannot read tensors of dtype {t['dtype']}")
    return np.frombuffer(data, dtype=_DTYPES[t["dtype"]]).reshape(t["shape"]).astype(np.float64)


def _pattern(patterns: dict[str, Any], module: str, default: Any) -> Any:
    for key, value in (patterns or {}).items():
        if re.search(rf"(^|\.){re.escape(key)}$", module) or re.fullmatch(key, module):
            return value
    return default


def _scaling(config: dict[str, Any], module: str, rank: int) -> float:
    r = _pattern(config.get("rank_pattern") or {}, module, config.get("r") or rank) or rank
    alpha = _pattern(config.get("alpha_pattern") or {}, module, config.get("lora_alpha") or r)
    return float(alpha) / (math.sqrt(r) if config.get("use_rslora") else float(r))


def _modules(tensors: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Tensors grouped by module: LoRA pairs under their module path, any other tensor on its own."""
    out: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        m = _PAIR.match(name)
        module, part = (m["module"], m["part"]) if m else (name, "T")
        folder, sep, key = module.rpartition("/")
        out.setdefault(folder + sep + key.removeprefix("base_model.model."), {})[part] = t
    return out


def _norm(parts: dict[str, Any], config: dict[str, Any], module: str) -> float | None:
    """The Frobenius norm of a module's delta (s * B A for a LoRA pair, the tensor itself otherwise)."""
    import numpy as np

    if "A" in parts and "B" in parts:
        a, b = _array(parts["A"]), _array(parts["B"])
        a = a.reshape(a.shape[0], -1)
        b = b.reshape(b.shape[0], -1)
        if a.shape[0] != b.shape[1]:
            return None
        gram = float(np.sum((b.T @ b) * (a @ a.T)))
        return _scaling(config, module.split("/")[-1], a.shape[0]) * math.sqrt(max(gram, 0.0))
    t = parts.get("T") or parts.get("A") or parts.get("B")
    return float(np.linalg.norm(_array(t).ravel())) if t is not None else None


def _describe(parts: dict[str, Any]) -> dict[str, Any]:
    shapes = {p: parts[p]["shape"] for p in sorted(parts)}
    rank = parts["A"]["shape"][0] if "A" in parts and parts["A"]["shape"] else None
    return {"shapes": shapes, "rank": rank}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k in sorted(d):
            out.update(_flat(d[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def compare_folders(left: Path, right: Path) -> dict[str, Any]:
    """The comparison of two PEFT folders (see the module docstring)."""
    try:
        import numpy  # noqa: F401

        norms = True
    except ImportError:
        norms = False
    lconf, rconf = _configs(left), _configs(right)
    lflat, rflat = _flat(lconf), _flat(rconf)
    config = [{"key": k, "left": lflat.get(k), "right": rflat.get(k)}
              for k in sorted(set(lflat) | set(rflat)) if lflat.get(k) != rflat.get(k)]
    lmods, rmods = _modules(_tensors(left)), _modules(_tensors(right))

    def conf(side: dict[str, dict[str, Any]], module: str) -> dict[str, Any]:
        return side.get(module.split("/")[0] if "/" in module else "", next(iter(side.values()), {}))

    modules = []
    for module in sorted(set(lmods) | set(rmods)):
        lp, rp = lmods.get(module), rmods.get(module)
        if lp is not None and rp is not None and {p: t["sha"] for p, t in lp.items()} == \
                {p: t["sha"] for p, t in rp.items()}:
            continue
        entry: dict[str, Any] = {"module": module,
                                 "change": "added" if lp is None else "removed" if rp is None else "changed",
                                 "left": _describe(lp) if lp else None, "right": _describe(rp) if rp else None}
        if lp and rp:
            entry["shape_changed"] = entry["left"]["shapes"] != entry["right"]["shapes"]
            entry["rank_changed"] = entry["left"]["rank"] != entry["right"]["rank"]
        if norms:
            entry["left_norm"] = _norm(lp, conf(lconf, module), module) if lp else None
            entry["right_norm"] = _norm(rp, conf(rconf, module), module) if rp else None
            if entry["left_norm"] is not None and entry["right_norm"] is not None:
                entry["norm_change"] = entry["right_norm"] - entry["left_norm"]
        modules.append(entry)
    unchanged = len(set(lmods) & set(rmods)) - sum(1 for m in modules if m["change"] == "changed")
    return {"config": config, "modules": modules, "unchanged": unchanged, "norms": norms,
            "note": None if norms else "numpy is not installed: delta norms are not computed "
                                       "(pip install numpy, or swiftreg[ml])"}


def compare(reg: Registry, left_id: str, right_id: str) -> dict[str, Any]:
    """Compare two adapter revisions (ids with refs); cached once per pair of digests."""
    left, right = reg.show(left_id), reg.show(right_id)
    for info in (left, right):
        if info.kind != "adapter":
            raise RegistryError(f"{info.repo} is a base model: compare compares adapter revisions")
    key = hashlib.sha256(f"{VERSION}|{left.digest}|{right.digest}".encode()).hexdigest()
    cache = reg.home / "cache" / "compare" / f"{key}.json"
    try:
        result: dict[str, Any] = json.loads(cache.read_text())
        result["cached"] = True
    except (OSError, ValueError):
        result = compare_folders(reg.resolve(f"{left.repo}@{left.number}", "peft"),
                                 reg.resolve(f"{right.repo}@{right.number}", "peft"))
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_file(str(cache), json.dumps(result).encode())
        result["cached"] = False
    result["left"] = f"{left.repo}@{left.number}"
    result["right"] = f"{right.repo}@{right.number}"
    return result
