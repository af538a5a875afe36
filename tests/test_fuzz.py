"""Property-based robustness tests: corrupt inputs must give a FormatError, never a crash.

(a) `read_header` on mutated safetensors files: it returns a valid SafetensorsFile or raises
    SafetensorsHeaderError, nothing else; and whatever it accepts, the real safetensors library
    accepts too, with the same names, dtypes, shapes and metadata.
(b) `detect`, `inspect`, `validate` and `convert` on mutated PEFT and Swift checkpoints (configs,
    sidecars, safetensors headers, folder layout): the only exceptions allowed are FormatError
    subclasses; a failed conversion leaves no destination and no `*.partial` folder; a successful
    one writes a checkpoint that reads back, and the source is never modified.
(c) The CLI turns corrupt inputs into `error: ...` on stderr and exit code 1, not a traceback.

Each bug the fuzzers found also has a minimal regression test below them (`test_*` with "BUG" in
its docstring). SWIFTREG_FUZZ_SCALE=N multiplies every max_examples for a longer hunt.

The PEFT checkpoint is a real one, saved by peft from a tiny LlamaForCausalLM; the Swift one is
written by hand in the layout FORMATS.md documents (no ms-swift in this environment).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import converters
from converters import FormatError, SafetensorsHeaderError
from converters.safetensors_io import DTYPE_BITS, SafetensorsFile, read_header
from registry.cli import main as cli_main

Draw = Callable[[st.SearchStrategy], Any]


def api(name: str) -> Callable[..., Any]:
    """`converters.<name>`, the function, even where `import converters.<name>` has replaced the
    lazily exported function by the submodule of the same name (a bug of its own, shown by
    test_public_functions_survive_submodule_imports): each fuzz test should fail for its own bug."""
    value = getattr(converters, name)
    return getattr(value, name) if isinstance(value, types.ModuleType) else value


#: SWIFTREG_FUZZ_SCALE=20 runs twenty times as many examples (a longer bug hunt than CI's).
SCALE = float(os.environ.get("SWIFTREG_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


#: Shrink only the first failure found and skip the explain phase: a checkpoint example costs a
#: copy and six calls, so shrinking several distinct failures would take minutes.
SETTINGS = dict(deadline=None, report_multiple_bugs=False,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --------------------------------------------------------------------------------------------
# strategies: arbitrary JSON, with a dictionary of values that mean something to the code

INTERESTING_TEXT = [
    "", "LORA", "SHIRA", "DORA", "ADAPTER", "PROMPT", "longlora", "lora", "default", "second", "none", "all",
    "lora_only", "q_proj", "v_proj", ".*", "(", ")", "[", "*", "+", "\\", "(?P<", "q_proj|(", "__metadata__",
    "base_model.model.", "float32", "bfloat16", "F32", "BF16", "model.layers.0", "..", "/", "../x", "\x00",
]
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=70), st.integers(), st.sampled_from([0, -1, 1, 2, 2**31, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(INTERESTING_TEXT),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(INTERESTING_TEXT)), children, max_size=4),
    max_leaves=10,
)

DTYPES = sorted(DTYPE_BITS)
DTYPE_VALUES = st.one_of(st.sampled_from(DTYPES), st.sampled_from(["f32", "F128", "", "BF16 ", "float32"]), JSON_VALUES)
DIM = st.one_of(st.integers(min_value=0, max_value=4), st.integers(min_value=-3, max_value=2**66),
                st.sampled_from([2**32, 2**63, 2**64 - 1, 2**64]))
SHAPE_VALUES = st.one_of(st.lists(DIM, max_size=4), st.lists(st.integers(0, 4), max_size=3), JSON_VALUES)
TENSOR_KEYS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(INTERESTING_TEXT),
    st.sampled_from([
        "base_model.model.__metadata__", "base_model.model.x.lora_A.weight", "base_model.model.x.lora_B.weight",
        "x.lora_A.default.weight", "x.lora_A.second.weight", "x.lora_A.weight",
        "lm_head.modules_to_save.default.weight",
        "base_model.model.model.embed_tokens.lora_embedding_A", "x.loramodule_default.lora_A",
        "model.layers.0.self_attn.q_proj.lora_A.default.weight", "model.layers.0.self_attn.q_proj.lora_B.other.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", "x.shira_weight", "x.shira_indices",
        "base_model.model.x.lora_A.default.weight", "a" * 5000,
    ]),
)


# --------------------------------------------------------------------------------------------
# safetensors mutations


def split(raw: bytes) -> tuple[int, bytes, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return n, raw[8:8 + n], raw[8 + n:]


def pack(header_bytes: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def _json_mutation(draw: Draw, header: dict, data: bytes) -> tuple[dict | list, bytes]:
    """One JSON-level edit of a parsed header (a dict), and maybe of the data length."""
    names = [k for k in header if k != "__metadata__"]
    op = draw(st.sampled_from(["dtype", "shape", "data_offsets", "del_field", "add_field", "entry", "del_tensor",
                               "dup_tensor", "rename", "metadata", "data_len", "offsets_shift", "swap_offsets"]))
    note(f"json op {op}")
    if not names and op not in ("metadata", "data_len", "add_field"):
        op = "metadata"
    if op in ("dtype", "shape", "data_offsets", "del_field", "entry", "offsets_shift"):
        name = draw(st.sampled_from(names))
        info = header[name] if isinstance(header[name], dict) else {}
        if op == "dtype":
            info["dtype"] = draw(DTYPE_VALUES)
        elif op == "shape":
            info["shape"] = draw(SHAPE_VALUES)
        elif op == "data_offsets":
            info["data_offsets"] = draw(st.one_of(
                st.lists(st.integers(min_value=-8, max_value=2**65), max_size=3),
                st.lists(st.integers(min_value=0, max_value=len(data) + 8), min_size=2, max_size=2),
                JSON_VALUES))
        elif op == "offsets_shift":
            offsets = info.get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
                delta = draw(st.integers(-8, 8))
                which = draw(st.sampled_from([0, 1, 2]))
                info["data_offsets"] = [offsets[0] + (delta if which != 1 else 0),
                                        offsets[1] + (delta if which != 0 else 0)]
        elif op == "del_field":
            if info:
                info.pop(draw(st.sampled_from(sorted(info))))
        elif op == "entry":
            header[name] = draw(JSON_VALUES)
            return header, data
        header[name] = info
    elif op == "add_field":
        target = header
        if names and draw(st.booleans()) and isinstance(header[names[0]], dict):
            target = header[draw(st.sampled_from(names))]
        if isinstance(target, dict):
            target[draw(st.one_of(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]), TENSOR_KEYS))] = \
                draw(JSON_VALUES)
    elif op == "del_tensor":
        header.pop(draw(st.sampled_from(names)))
    elif op == "dup_tensor":
        name = draw(st.sampled_from(names))
        header[draw(TENSOR_KEYS)] = json.loads(json.dumps(header[name]))
    elif op == "rename":
        name = draw(st.sampled_from(names))
        new = draw(TENSOR_KEYS)
        items = [(new if k == name else k, v) for k, v in header.items()]
        header = dict(items)
    elif op == "metadata":
        header["__metadata__"] = draw(st.one_of(JSON_VALUES, st.dictionaries(st.text(max_size=5), st.text(max_size=5))))
    elif op == "data_len":
        delta = draw(st.integers(-16, 16))
        data = data[:max(0, len(data) + delta)] if delta < 0 else data + b"\0" * delta
    elif op == "swap_offsets" and len(names) >= 2:
        a, b = draw(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True))
        if isinstance(header[a], dict) and isinstance(header[b], dict):
            header[a]["data_offsets"], header[b]["data_offsets"] = \
                header[b].get("data_offsets"), header[a].get("data_offsets")
    if draw(st.integers(0, 9)) == 0:  # sometimes the whole header is not an object
        return draw(st.sampled_from([[header], list(header)])), data
    return header, data


def _rebuild_valid(draw: Draw, header: dict, data: bytes) -> tuple[dict, bytes]:
    """Change some tensors' dtypes and shapes (scalars, zero-size, 1-D, 3-D...) but keep the file valid."""
    out: dict = {}
    if isinstance(header.get("__metadata__"), dict):
        out["__metadata__"] = header["__metadata__"]
    chunks, cursor = [], 0
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        dtype, shape = info.get("dtype"), info.get("shape")
        small = isinstance(shape, list) and len(shape) <= 4 and all(
            type(d) is int and 0 <= d <= 16 for d in shape)
        if draw(st.booleans()) or not isinstance(dtype, str) or dtype not in DTYPE_BITS or not small:
            dtype = draw(st.sampled_from(["F32", "BF16", "F16", "I32", "BOOL", "U8", "I64", "F64", "F8_E4M3"]))
            shape = draw(st.lists(st.integers(0, 5), max_size=3))
        numel = 1
        for d in shape:
            numel *= d
        if numel * DTYPE_BITS[dtype] % 8:  # F4/F6 with an odd count: no valid byte size
            dtype = "U8"
        nbytes = numel * DTYPE_BITS[dtype] // 8
        out[name] = {"dtype": dtype, "shape": shape, "data_offsets": [cursor, cursor + nbytes]}
        chunks.append(bytes(draw(st.binary(min_size=nbytes, max_size=nbytes))) if nbytes <= 64 else b"\1" * nbytes)
        cursor += nbytes
    return out, b"".join(chunks)


def mutate_safetensors(draw: Draw, raw: bytes) -> bytes:
    """1 to 3 mutations of a valid safetensors file, header bytes mostly."""
    for _ in range(draw(st.integers(1, 3))):
        if len(raw) < 8:
            break
        n, hbytes, data = split(raw)
        hend = min(8 + n, len(raw))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "length", "json", "json", "json",
                                     "rebuild", "rebuild", "rename", "raw_header", "dup_keys"]))
        note(f"mutation {kind}")
        if kind == "flip":
            b = bytearray(raw)
            for _ in range(draw(st.integers(1, 8))):
                i = draw(st.integers(0, hend - 1))
                b[i] ^= draw(st.integers(1, 255))
            raw = bytes(b)
        elif kind == "truncate":
            raw = raw[:draw(st.integers(0, len(raw) - 1))] if raw else raw
        elif kind == "insert":
            i = draw(st.integers(0, hend))
            raw = raw[:i] + draw(st.binary(min_size=1, max_size=16)) + raw[i:]
        elif kind == "delete":
            i = draw(st.integers(0, hend - 1))
            raw = raw[:i] + raw[i + draw(st.integers(1, 16)):]
        elif kind == "length":
            value = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(n - 16, n + 16).filter(lambda v: v >= 0),
                                   st.sampled_from([0, 1, 100 * 1024 * 1024, 100 * 1024 * 1024 + 1, 2**63])))
            raw = struct.pack("<Q", value) + raw[8:]
        elif kind == "raw_header":
            body = draw(st.one_of(
                st.binary(max_size=64),
                st.text(max_size=64).map(str.encode),
                JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                st.integers(1, 3000).map(lambda k: b'{"a":' + b"[" * k),
                st.integers(1, 3000).map(lambda k: b'{"a":' * k),
            ))
            raw = pack(body, data)
        elif kind == "dup_keys":
            if hbytes.startswith(b"{") and len(hbytes) > 2:
                try:
                    header = json.loads(hbytes)
                except (ValueError, RecursionError):
                    continue
                if isinstance(header, dict) and header:
                    name = draw(st.sampled_from(sorted(header)))
                    extra = json.dumps({name: header[name]})[1:-1].encode()
                    raw = pack(b"{" + extra + b"," + hbytes.strip()[1:], data)
        else:
            try:
                header = json.loads(hbytes.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue
            if not isinstance(header, dict):
                continue
            if kind == "json":
                header, data = _json_mutation(draw, header, data)
            elif kind == "rename":  # the file stays valid, only a tensor name changes
                names = [k for k in header if k != "__metadata__"]
                if names:
                    old_name, new_name = draw(st.sampled_from(names)), draw(TENSOR_KEYS)
                    if new_name and new_name not in header:
                        header = {new_name if k == old_name else k: v for k, v in header.items()}
            else:
                header, data = _rebuild_valid(draw, header, data)
            body = json.dumps(header, ensure_ascii=draw(st.booleans())).encode("utf-8")
            body += b" " * draw(st.integers(0, 8))
            raw = pack(body, data)
    return raw


# --------------------------------------------------------------------------------------------
# (a) read_header on mutated files


def _small_files() -> list[bytes]:
    files = []
    with tempfile.TemporaryDirectory() as td:
        specs = [
            ({"w": torch.randn(2, 3), "b": torch.randn(4).bfloat16(), "s": torch.tensor(7, dtype=torch.int32),
              "z": torch.zeros(0, 2), "m": torch.tensor([True, False])}, {"format": "pt"}),
            ({"x.lora_A.weight": torch.randn(2, 4).half(), "x.lora_B.weight": torch.randn(4, 2).half()}, None),
            ({}, {"k": "v"}),
        ]
        for i, (tensors, metadata) in enumerate(specs):
            path = Path(td) / f"{i}.safetensors"
            save_file(tensors, str(path), metadata=metadata)
            files.append(path.read_bytes())
    return files


SMALL_FILES = _small_files()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "f.safetensors"


def test_small_files_are_valid(scratch):
    """The seeds the mutations start from are valid files (else every mutation trivially fails)."""
    for raw in SMALL_FILES:
        scratch.write_bytes(raw)
        assert isinstance(read_header(scratch), SafetensorsFile)


def _check_accepted(parsed: SafetensorsFile, path: Path) -> None:
    assert isinstance(parsed, SafetensorsFile)
    assert parsed.file_size == path.stat().st_size
    assert sum(t.nbytes for t in parsed.tensors) == parsed.data_size
    assert len({t.name for t in parsed.tensors}) == len(parsed.tensors)
    for t in parsed.tensors:
        assert t.dtype in DTYPE_BITS and all(isinstance(d, int) and d >= 0 for d in t.shape)
        assert t.numel * DTYPE_BITS[t.dtype] == 8 * t.nbytes


@settings(max_examples=examples(600), **SETTINGS)
@given(data=st.data())
def test_read_header_on_mutated_files_raises_only_header_errors(scratch, data):
    raw = mutate_safetensors(data.draw, data.draw(st.sampled_from(SMALL_FILES)))
    scratch.write_bytes(raw)
    try:
        parsed = read_header(scratch)
    except SafetensorsHeaderError as exc:
        assert exc.path == scratch
        return
    _check_accepted(parsed, scratch)


def _reference_view(path: Path) -> tuple[dict, dict | None]:
    with safe_open(str(path), framework="pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}, f.metadata()


@settings(max_examples=examples(400), **SETTINGS)
@given(data=st.data())
def test_what_read_header_accepts_the_reference_reads_the_same_way(scratch, data):
    raw = mutate_safetensors(data.draw, data.draw(st.sampled_from(SMALL_FILES)))
    scratch.write_bytes(raw)
    try:
        parsed = read_header(scratch)
    except SafetensorsHeaderError:
        return
    tensors, metadata = _reference_view(scratch)  # raises if the reference refuses the file
    assert tensors == {t.name: (t.dtype, t.shape) for t in parsed.tensors}
    assert metadata == parsed.metadata


@settings(max_examples=examples(150), **SETTINGS)
@given(data=st.data())
def test_rebuilt_valid_files_are_accepted(scratch, data):
    """The positive side: files kept valid by construction (odd dtypes and shapes) are accepted."""
    n, hbytes, payload = split(data.draw(st.sampled_from(SMALL_FILES)))
    header, payload = _rebuild_valid(data.draw, json.loads(hbytes), payload)
    scratch.write_bytes(pack(json.dumps(header).encode(), payload))
    parsed = read_header(scratch)
    _check_accepted(parsed, scratch)
    assert {t.name: (t.dtype, t.shape) for t in parsed.tensors} == {
        k: (v["dtype"], tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}
    assert _reference_view(scratch)[0] == {t.name: (t.dtype, t.shape) for t in parsed.tensors}


# --------------------------------------------------------------------------------------------
# (b) checkpoints

SWIFT_EXTRA_FIELDS = {"lora_dtype": None, "lorap_lr_ratio": 16.0, "lorap_emb_lr": 1e-06, "use_qa_lora": False,
                      "use_merged_linear": False, "enable_lora": None, "model_key_mapping": None}


def _build_peft(root: Path) -> None:
    """A real PEFT LoRA checkpoint (linear + embedding LoRA + modules_to_save) from a tiny Llama."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=32, max_position_embeddings=32))
    peft_model = get_peft_model(model, LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "embed_tokens"], modules_to_save=["lm_head"],
        init_lora_weights=False))
    peft_model.save_pretrained(str(root))


def _swift_config(peft_config: dict, target_modules: list[str]) -> dict:
    config = {k: v for k, v in peft_config.items() if k not in ("auto_mapping", "peft_version")}
    config.update(SWIFT_EXTRA_FIELDS, swift_type="LORA", peft_type="LORA", target_modules=target_modules,
                  modules_to_save=None)
    return config


def _build_swift(root: Path, peft_config: dict) -> None:
    """A Swift LoRA checkpoint with adapters `default` (bf16, q/v + embedding) and `second` (f32, q only)."""
    root.mkdir()
    (root / "configuration.json").write_text("{}")
    (root / "README.md").write_text("swift checkpoint\n")
    g = torch.Generator().manual_seed(1)
    layer = "model.layers.0.self_attn"
    default = {}
    for proj in ("q_proj", "v_proj"):
        default[f"{layer}.{proj}.lora_A.default.weight"] = torch.randn(2, 16, generator=g).bfloat16()
        default[f"{layer}.{proj}.lora_B.default.weight"] = torch.randn(16, 2, generator=g).bfloat16()
    default["model.embed_tokens.lora_embedding_A.default"] = torch.randn(2, 32, generator=g).bfloat16()
    default["model.embed_tokens.lora_embedding_B.default"] = torch.randn(16, 2, generator=g).bfloat16()
    second = {f"{layer}.q_proj.lora_A.second.weight": torch.randn(4, 16, generator=g),
              f"{layer}.q_proj.lora_B.second.weight": torch.randn(16, 4, generator=g)}
    for name, tensors, targets, r in (("default", default, ["q_proj", "v_proj", "embed_tokens"], 2),
                                      ("second", second, ["q_proj"], 4)):
        folder = root / name
        folder.mkdir()
        config = _swift_config(peft_config, targets)
        config.update(r=r, lora_alpha=2 * r, lora_dtype="bfloat16" if name == "default" else None)
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("seeds")
    _build_peft(base / "peft")
    _build_swift(base / "swift", json.loads((base / "peft" / "adapter_config.json").read_text()))
    return {"peft": base / "peft", "swift": base / "swift"}


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(root.rglob("*"))}


def _reference_reads(path: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            f.get_slice(k).get_shape()


def check_converted(dst: Path, target: str, result: converters.ConversionResult) -> None:
    """A conversion that reported success wrote a checkpoint of the target format that reads back."""
    assert result.destination == dst.absolute()
    assert not [p for p in dst.rglob("*") if p.name.endswith(".partial")]
    try:
        ckpt = api("detect")(dst)
    except FormatError as exc:
        pytest.fail(f"convert wrote a checkpoint that detect refuses: {exc}")
    assert ckpt.format == target
    assert [a.name for a in ckpt.adapters] and sorted(a.name for a in ckpt.adapters) == sorted(result.adapters)
    tensors = 0
    for adapter in ckpt.adapters:
        assert adapter.weights is not None and adapter.weights.name == "adapter_model.safetensors"
        try:
            parsed = read_header(adapter.weights)
        except SafetensorsHeaderError as exc:
            pytest.fail(f"convert wrote a weights file that read_header refuses: {exc}")
        tensors += len(parsed.tensors)
        _reference_reads(adapter.weights)
    assert tensors == result.tensors


def _leftovers(parent: Path) -> list[str]:
    return [n for n in os.listdir(parent) if n.endswith(".partial")]


def _assert_nothing_left(dst: Path) -> None:
    assert not dst.exists(), "a failed conversion left its destination"
    if dst.parent.exists():
        assert not _leftovers(dst.parent), "a failed conversion left a *.partial folder"


def exercise(src: Path, work: Path) -> None:
    """Every entry point on `src`: only FormatErrors may come out."""
    before = snapshot(src)
    for name in ("detect", "inspect", "validate"):
        try:
            outcome = api(name)(src)
        except FormatError as exc:
            event(f"{name}: {type(exc).__name__}")
            continue
        if name == "validate":
            event(f"validate: {'ok' if outcome.ok else 'problems'}")
    for target in ("peft", "swift"):
        dst = work / "out" / f"to-{target}"
        try:
            result = api("convert")(src, dst, target)
        except FormatError as exc:
            event(f"convert to {target}: {type(exc).__name__}")
            _assert_nothing_left(dst)
            continue
        except BaseException:
            _assert_nothing_left(dst)  # even on a crash, nothing may be left behind
            raise
        event(f"convert to {target}: ok")
        check_converted(dst, target, result)
    assert snapshot(src) == before, "the source checkpoint was modified"


def test_seed_checkpoints_are_valid_and_convert(seeds, tmp_path):
    """The unmutated seeds pass every check, so the mutations below start from good checkpoints."""
    for kind, path in seeds.items():
        ckpt = api("detect")(path)
        assert ckpt.format == kind
        report = api("validate")(path)
        assert report.ok, report.problems
        assert api("inspect")(path).adapters
        for target in ("peft", "swift"):
            dst = tmp_path / f"{kind}-to-{target}"
            check_converted(dst, target, api("convert")(path, dst, target))
    assert [a.name for a in api("detect")(seeds["swift"]).adapters] == ["default", "second"]


def _config_paths(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("adapter_config.json") if p.is_file())


def _weights_paths(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("adapter_model.safetensors") if p.is_file())


CONFIG_KEYS = ["peft_type", "swift_type", "r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern",
               "modules_to_save", "use_dora", "use_rslora", "bias", "lora_bias", "fan_in_fan_out", "use_qa_lora",
               "use_merged_linear", "lora_dtype", "enable_lora", "task_type", "peft_version", "layers_to_transform"]


def mutate_config_text(draw: Draw, raw: bytes) -> bytes:
    """Field-level edits of a config, or a whole file that is not a JSON object."""
    text = raw.decode("utf-8", "replace")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        config = None
    if draw(st.integers(0, 7)) == 0 or not isinstance(config, dict):
        return draw(st.one_of(
            st.binary(max_size=40),
            st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
            st.just(text[: len(text) // 2].encode()),
            st.lists(JSON_VALUES, max_size=3).map(lambda v: json.dumps(v).encode()),
            JSON_SCALARS.map(lambda v: json.dumps(v).encode()),
            st.integers(1, 5000).map(lambda k: b"[" * k),
            st.integers(1, 5000).map(lambda k: b'{"r":' * k),
        ))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "set", "set", "del", "add"]))
        if op == "set":
            key = draw(st.one_of(st.sampled_from(CONFIG_KEYS), st.sampled_from(sorted(config) or ["r"])))
            config[key] = draw(JSON_VALUES)
        elif op == "del" and config:
            config.pop(draw(st.sampled_from(sorted(config))))
        else:
            config[draw(st.one_of(st.text(max_size=10), st.sampled_from(INTERESTING_TEXT)))] = draw(JSON_VALUES)
        note(f"config {op}")
    return json.dumps(config, indent=2).encode()


def mutate_config(draw: Draw, src: Path) -> None:
    path = draw(st.sampled_from(_config_paths(src)))
    note(f"mutating {path.relative_to(src)}")
    path.write_bytes(mutate_config_text(draw, path.read_bytes()))


def mutate_sidecar(draw: Draw, src: Path) -> None:
    folder = draw(st.sampled_from([p.parent for p in _config_paths(src)]))
    value = draw(st.one_of(
        st.dictionaries(st.sampled_from(["lora_dtype", "lorap_lr_ratio", "lorap_emb_lr", "use_qa_lora",
                                         "use_merged_linear", "swift_type", "peft_type", "r"]), JSON_VALUES, max_size=3)
        .map(lambda d: json.dumps(d).encode()),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=20)))
    note(f"sidecar in {folder.name}: {value[:80]!r}")
    (folder / "additional_config.json").write_bytes(value)


def mutate_weights(draw: Draw, src: Path) -> None:
    paths = _weights_paths(src)
    if not paths:
        return
    path = draw(st.sampled_from(paths))
    note(f"mutating {path.relative_to(src)}")
    path.write_bytes(mutate_safetensors(draw, path.read_bytes()))


def mutate_layout(draw: Draw, src: Path) -> None:
    op = draw(st.sampled_from(["delete_weights", "weights_dir", "garbage_bin", "extra_states", "root_file_default",
                               "odd_subfolder", "delete_marker", "swift_default_to_root", "empty_subfolder_config"]))
    note(f"layout {op}")
    weights = _weights_paths(src)
    if op == "delete_weights" and weights:
        draw(st.sampled_from(weights)).unlink()
    elif op == "weights_dir" and weights:
        w = draw(st.sampled_from(weights))
        w.unlink()
        w.mkdir()
    elif op == "garbage_bin" and weights:
        w = draw(st.sampled_from(weights))
        w.unlink()
        w.with_suffix(".bin").write_bytes(draw(st.binary(max_size=64)))
    elif op == "extra_states":
        (src / "extra_states").mkdir(exist_ok=True)
        (src / "extra_states" / "adapter_model.safetensors").write_bytes(b"junk")
    elif op == "root_file_default":
        if not (src / "default").exists():
            (src / "default").write_text("a file where an adapter folder would go")
    elif op == "odd_subfolder":
        name = draw(st.sampled_from(["-x", ".hidden", "weight", "model", "a b", "x" * 200, "ok_name", "default"]))
        folder = src / name
        if not folder.exists():
            folder.mkdir()
            donor = _config_paths(src)
            if donor:
                shutil.copy(donor[0], folder / "adapter_config.json")
    elif op == "delete_marker":
        marker = src / "configuration.json"
        if marker.exists():
            marker.unlink()
    elif op == "swift_default_to_root":
        if (src / "default" / "adapter_config.json").exists() and not (src / "adapter_config.json").exists():
            shutil.copy(src / "default" / "adapter_config.json", src / "adapter_config.json")
    elif op == "empty_subfolder_config":
        (src / "extra").mkdir(exist_ok=True)
        (src / "extra" / "adapter_config.json").write_text("{}")


def _run_case(seeds: dict[str, Path], data: st.DataObject, mutators: list[Callable[[Draw, Path], None]]) -> None:
    kind = data.draw(st.sampled_from(sorted(seeds)))
    note(f"seed {kind}")
    with tempfile.TemporaryDirectory() as td:
        work = Path(td)
        src = work / "src"
        shutil.copytree(seeds[kind], src)
        for _ in range(data.draw(st.integers(1, 3))):
            data.draw(st.sampled_from(mutators))(data.draw, src)
        exercise(src, work)


@settings(max_examples=examples(250), **SETTINGS)
@given(data=st.data())
def test_config_mutations_give_only_format_errors(seeds, data):
    _run_case(seeds, data, [mutate_config, mutate_config, mutate_sidecar])


@settings(max_examples=examples(200), **SETTINGS)
@given(data=st.data())
def test_weights_mutations_give_only_format_errors(seeds, data):
    _run_case(seeds, data, [mutate_weights])


@settings(max_examples=examples(250), **SETTINGS)
@given(data=st.data())
def test_mixed_mutations_give_only_format_errors(seeds, data):
    _run_case(seeds, data, [mutate_config, mutate_sidecar, mutate_weights, mutate_layout])


# --------------------------------------------------------------------------------------------
# regression tests for what the fuzzers found (each is a minimal reproduction)


def _peft_with(root: Path, config_updates: dict, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    root.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "bias": "none"}
    config.update(config_updates)
    (root / "adapter_config.json").write_text(json.dumps(config))
    if tensors is None:
        tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8),
                   "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 2)}
    save_file(tensors, str(root / "adapter_model.safetensors"))
    return root


def _expect_unknown_type_handled(src: Path, dst: Path, func: str, target: str) -> None:
    """An adapter whose type is not a usable name: convert refuses it, validate reports it, inspect
    may summarise it or refuse it; none of them may crash."""
    if func == "convert":
        with pytest.raises(FormatError):
            api("convert")(src, dst, target)
        assert not dst.exists()
    elif func == "validate":
        try:
            report = api("validate")(src)
        except FormatError:
            return
        assert not report.ok
    else:
        try:
            api("inspect")(src)
        except FormatError:
            pass


@pytest.mark.parametrize("func", ["inspect", "validate", "convert"])
@pytest.mark.parametrize("value", [["LORA"], {"a": 1}])
def test_unhashable_peft_type_is_handled(tmp_path, func, value):
    """BUG: Adapter.method does BY_PEFT_TYPE.get(config["peft_type"]): TypeError (unhashable) for a
    list or object, from inspect, validate and convert alike."""
    src = _peft_with(tmp_path / "src", {"peft_type": value})
    _expect_unknown_type_handled(src, tmp_path / "dst", func, "swift")


@pytest.mark.parametrize("func", ["inspect", "validate", "convert"])
def test_unhashable_swift_type_is_handled(tmp_path, seeds, func):
    """BUG: Adapter.method does BY_SWIFT_TYPE.get(config["swift_type"]): TypeError for a list."""
    src = tmp_path / "src"
    shutil.copytree(seeds["swift"], src)
    config_path = src / "second" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["swift_type"] = ["LORA"]
    config_path.write_text(json.dumps(config))
    _expect_unknown_type_handled(src, tmp_path / "dst", func, "peft")


@pytest.mark.parametrize("updates", [{"rank_pattern": {"(": 4}}, {"target_modules": "q_proj|("},
                                     {"rank_pattern": {"q_proj[": 4}}])
def test_invalid_regex_in_config_is_reported_not_raised(tmp_path, updates):
    """BUG: validate feeds rank_pattern keys and a string target_modules to re.match/fullmatch
    unchecked; an invalid pattern raises re.error instead of a Problem."""
    src = _peft_with(tmp_path / "src", updates)
    report = api("validate")(src)
    assert not report.ok
    assert any(p.where.startswith("config.") for p in report.errors)


@pytest.mark.parametrize("value", [[1, 2], "ab", 5, True])
def test_non_dict_rank_pattern_does_not_crash_inspect(tmp_path, value):
    """BUG: summarize_adapter does dict(c.get("rank_pattern") or {}): TypeError/ValueError otherwise."""
    src = _peft_with(tmp_path / "src", {"rank_pattern": value})
    try:
        summary = api("inspect")(src)
    except FormatError:
        return
    assert summary.adapters[0].name == "default"


@pytest.mark.parametrize("shape_b", [(), ])
def test_scalar_lora_b_is_a_problem_not_a_crash(tmp_path, shape_b):
    """BUG: _check_lora reads b.shape[0] after _check_rank reported a non-matrix: IndexError for a scalar."""
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(shape_b)}
    src = _peft_with(tmp_path / "src", {}, tensors)
    report = api("validate")(src)
    assert not report.ok
    assert any("matrices" in p.message for p in report.errors)


@pytest.mark.parametrize("key", ["base_model.model.__metadata__", "base_model.model."])
def test_convert_never_writes_an_unreadable_file(tmp_path, key):
    """BUG: a PEFT plain key `base_model.model.__metadata__` (or `base_model.model.`) becomes the Swift
    key `__metadata__` (or ``): convert succeeds and writes a weights file whose header read_header
    (and, for __metadata__, every reader) refuses. It must refuse the key instead."""
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 2),
               key: torch.zeros(3)}
    src = _peft_with(tmp_path / "src", {}, tensors)
    dst = tmp_path / "dst"
    try:
        result = api("convert")(src, dst, "swift")
    except FormatError:
        assert not dst.exists()
        return
    check_converted(dst, "swift", result)


def test_root_file_named_default_is_a_format_error(tmp_path):
    """BUG: PEFT -> Swift puts the root adapter into `default/`; a root *file* named `default` is
    then copied onto that folder and convert raises IsADirectoryError (an OSError, not a FormatError)."""
    src = _peft_with(tmp_path / "src", {})
    (src / "default").write_text("notes")
    dst = tmp_path / "dst"
    with pytest.raises(FormatError):
        api("convert")(src, dst, "swift")
    assert not dst.exists()
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("name", ["validate", "inspect", "convert", "detect"])
def test_public_functions_survive_submodule_imports(name):
    """Regression: the lazily exported functions once shared names with their submodules, so importing
    the submodule (registry/service.py imported `converters.validate`) replaced the function with the
    module. Checked in a fresh interpreter, so test order cannot hide or cause it."""
    code = ("import converters, converters.validation, converters.inspection, converters.conversion, "
            "converters.layout\n"
            f"assert callable(converters.{name}), type(converters.{name})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]


def test_cli_validate_after_the_registry_service_is_imported(seeds):
    """The same regression as the CLI would meet it: a process that has imported registry.service first."""
    code = ("import sys\nimport registry.service\nfrom registry.cli import main\n"
            "main(['validate', sys.argv[1]])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(seeds["peft"])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert "valid" in proc.stdout


# --------------------------------------------------------------------------------------------
# (c) the CLI


def _cli(*args: str):
    result = CliRunner().invoke(cli_main, list(args))
    return result


def _corrupt_cases(seeds: dict[str, Path], root: Path) -> dict[str, Path]:
    cases = {}
    for kind in ("peft", "swift"):
        config = root / f"{kind}-nonjson"
        shutil.copytree(seeds[kind], config)
        _config_paths(config)[0].write_text("{not json")
        cases[config.name] = config
        deep = root / f"{kind}-deep"
        shutil.copytree(seeds[kind], deep)
        _config_paths(deep)[0].write_text('{"r": ' + "[" * 100_000)
        cases[deep.name] = deep
        as_list = root / f"{kind}-list"
        shutil.copytree(seeds[kind], as_list)
        _config_paths(as_list)[0].write_text("[1, 2, 3]")
        cases[as_list.name] = as_list
        header = root / f"{kind}-header"
        shutil.copytree(seeds[kind], header)
        w = _weights_paths(header)[0]
        w.write_bytes(w.read_bytes()[:-5])  # truncated data
        cases[header.name] = header
    missing = root / "missing"
    cases["missing"] = missing
    return cases


@pytest.mark.parametrize("command", ["inspect", "convert-peft", "convert-swift", "validate"])
def test_cli_corrupt_inputs_exit_1_with_error_line(seeds, tmp_path, command):
    for name, src in _corrupt_cases(seeds, tmp_path / command).items():
        if command == "validate" and name.endswith("-header"):
            continue  # validate reports a bad weights file as a problem: tested below
        if command.startswith("convert"):
            dst = tmp_path / command / f"{name}-out"
            result = _cli("convert", str(src), str(dst), "--to", command.split("-")[1])
            assert not dst.exists()
        else:
            result = _cli(command, str(src))
        assert result.exit_code == 1, (name, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), (name, result.exception)
        assert result.stderr.startswith("error: "), (name, result.stderr)
        assert "Traceback" not in result.output


def test_cli_validate_reports_a_corrupt_header_as_a_problem(seeds, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(seeds["peft"], src)
    w = _weights_paths(src)[0]
    w.write_bytes(w.read_bytes()[:-5])
    result = _cli("validate", str(src))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "[error]" in result.stdout and "truncated" in result.stdout and "INVALID" in result.stdout


def test_cli_good_inputs_exit_0(seeds, tmp_path):
    for kind, src in seeds.items():
        for command in (["inspect", str(src)], ["inspect", "--json", str(src)], ["validate", str(src)],
                        ["convert", str(src), str(tmp_path / f"{kind}-out"), "--to", "peft"]):
            result = _cli(*command)
            assert result.exit_code == 0, (command, result.output, result.exception)


@pytest.mark.parametrize("value", [5, [1, "q_proj"], [["q_proj"]], 1.5, True])
def test_cli_inspect_odd_target_modules(tmp_path, value):
    """BUG (registry/cli/common.py): format_targets does ",".join(sorted(targets)): a traceback for a
    number, a list with non-strings or nested lists."""
    src = _peft_with(tmp_path / "src", {"target_modules": value})
    result = _cli("inspect", str(src))
    assert result.exit_code in (0, 1), (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


@settings(max_examples=examples(80), **SETTINGS)
@given(data=st.data())
def test_cli_never_shows_a_traceback(seeds, data):
    kind = data.draw(st.sampled_from(sorted(seeds)))
    with tempfile.TemporaryDirectory() as td:
        src = Path(td) / "src"
        shutil.copytree(seeds[kind], src)
        data.draw(st.sampled_from([mutate_config, mutate_weights, mutate_layout]))(data.draw, src)
        for args in (["inspect", str(src)], ["inspect", "--json", str(src)], ["validate", str(src)],
                     ["convert", str(src), str(Path(td) / "out"), "--to",
                      data.draw(st.sampled_from(["peft", "swift"]))]):
            result = _cli(*args)
            assert result.exit_code in (0, 1), (args, result.output, result.exception)
            assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
            if result.exit_code == 1 and args[0] != "validate":
                assert "error:" in result.stderr
