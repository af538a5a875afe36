"""Unit tests of converters.safetensors_io against the real safetensors library.

Valid files are written by `safetensors.torch.save_file` and read back by `safe_open`, so the
reader and the rewriter are checked against the reference implementation, not against
themselves. Every header rule has a hand-crafted file that breaks exactly that rule; where the
reference implementation has the same rule, the test also proves the reference refuses the file
(so the file really is broken in the intended way).
"""
from __future__ import annotations

import json
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from converters import FormatError, SafetensorsHeaderError
from converters.safetensors_io import (
    MAX_HEADER_BYTES, MAX_RANK, SafetensorsFile, TensorEntry, read_header, write_renamed,
)

# --------------------------------------------------------------------------------------------
# helpers


def raw_file(path: Path, header: object, data: bytes = b"", *, header_bytes: bytes | None = None,
             length: int | None = None) -> Path:
    """Write a safetensors-shaped file by hand: length prefix, header, data."""
    body = header_bytes if header_bytes is not None else json.dumps(header).encode("utf-8")
    prefix = struct.pack("<Q", len(body) if length is None else length)
    path.write_bytes(prefix + body + data)
    return path


def entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def reference_refuses(path: Path) -> bool:
    """True when the real safetensors library refuses to open the file or to describe a tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                s = f.get_slice(key)
                s.get_shape()
                s.get_dtype()
            f.metadata()
    except Exception:
        return True
    return False


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (works for bf16, bool, float8, scalars and empty tensors)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Arbitrary bit patterns (NaN payloads, subnormals, ...) for floats; random values otherwise."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = 1
    for d in shape:
        n *= d
    raw = torch.randint(0, 256, (n * itemsize,), generator=g, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


MIXED = {
    "bf16": ((3, 5), torch.bfloat16),
    "f16": ((4,), torch.float16),
    "f32": ((2, 3), torch.float32),
    "f64": ((2,), torch.float64),
    "i8": ((7,), torch.int8),
    "u8": ((3,), torch.uint8),
    "i16": ((5,), torch.int16),
    "i32": ((2, 2), torch.int32),
    "i64": ((3,), torch.int64),
    "bool": ((9,), torch.bool),
    "f8e4m3": ((6,), torch.float8_e4m3fn),
    "f8e5m2": ((2, 2), torch.float8_e5m2),
    "scalar_f32": ((), torch.float32),
    "scalar_bf16": ((), torch.bfloat16),
    "scalar_i32": ((), torch.int32),
    "empty_f32": ((0,), torch.float32),
    "empty_2d_bf16": ((3, 0), torch.bfloat16),
    "empty_i32": ((0, 4), torch.int32),
}
DTYPE_NAME = {
    torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
    torch.int8: "I8", torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {name: random_tensor(shape, dtype, seed=i) for i, (name, (shape, dtype)) in enumerate(MIXED.items())}
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "héllo"})
    return path, tensors


# --------------------------------------------------------------------------------------------
# read_header on files the real library wrote


def test_read_header_matches_the_reference_on_every_dtype(mixed):
    path, tensors = mixed
    parsed = read_header(path)
    assert isinstance(parsed, SafetensorsFile)
    assert parsed.path == path
    assert parsed.file_size == path.stat().st_size
    assert parsed.metadata == {"format": "pt", "note": "héllo"}
    assert {t.name for t in parsed.tensors} == set(tensors)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert parsed.data_start == 8 + header_len
    assert parsed.data_size == len(raw) - parsed.data_start
    with safe_open(str(path), framework="pt") as f:
        for name, tensor in tensors.items():
            e = parsed.by_name[name]
            assert e.dtype == DTYPE_NAME[tensor.dtype] == f.get_slice(name).get_dtype()
            assert e.shape == tuple(tensor.shape) == tuple(f.get_slice(name).get_shape())
            assert e.numel == tensor.numel()
            assert e.nbytes == tensor.numel() * tensor.element_size()
            # the offsets point at exactly this tensor's bytes
            assert raw[parsed.data_start + e.begin: parsed.data_start + e.end] == tensor_bytes(tensor)


def test_read_header_lists_tensors_in_data_order_and_tiles_the_data(mixed):
    path, _ = mixed
    parsed = read_header(path)
    cursor = 0
    for e in parsed.tensors:
        assert e.begin == cursor
        cursor = e.end
    assert cursor == parsed.data_size


def test_scalars_and_zero_size_tensors(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"s": torch.tensor(3.5), "z": torch.zeros(0, 7), "b": torch.tensor(True)}, str(path))
    parsed = read_header(path)
    assert parsed.by_name["s"].shape == () and parsed.by_name["s"].numel == 1 and parsed.by_name["s"].nbytes == 4
    assert parsed.by_name["z"].shape == (0, 7) and parsed.by_name["z"].numel == 0 and parsed.by_name["z"].nbytes == 0
    assert parsed.by_name["b"].dtype == "BOOL" and parsed.by_name["b"].nbytes == 1


def test_only_zero_size_tensors_and_empty_file(tmp_path):
    path = tmp_path / "zeros.safetensors"
    save_file({"a": torch.zeros(0), "b": torch.zeros(0, 3, dtype=torch.int32)}, str(path))
    parsed = read_header(path)
    assert parsed.data_size == 0
    assert sorted(t.name for t in parsed.tensors) == ["a", "b"]
    empty = tmp_path / "none.safetensors"
    save_file({}, str(empty))
    assert read_header(empty).tensors == ()


def test_metadata_absent_is_none(tmp_path):
    path = tmp_path / "nometa.safetensors"
    save_file({"a": torch.ones(2)}, str(path))
    assert read_header(path).metadata is None


def test_padding_spaces_after_the_json_are_accepted(tmp_path):
    body = json.dumps({"a": entry("F32", [1], 0, 4)}).encode() + b"       "
    path = raw_file(tmp_path / "pad.safetensors", None, b"\0" * 4, header_bytes=body)
    assert not reference_refuses(path)
    assert read_header(path).by_name["a"].nbytes == 4


def test_sub_byte_dtypes_sizes(tmp_path):
    # F4: 4 bits per element, F6: 6 bits; safetensors requires a whole number of bytes
    header = {"a": entry("F4", [4], 0, 2), "b": entry("F6_E2M3", [4], 2, 5)}
    path = raw_file(tmp_path / "fp4.safetensors", header, b"\0" * 5)
    assert not reference_refuses(path)
    parsed = read_header(path)
    assert parsed.by_name["a"].nbytes == 2 and parsed.by_name["b"].nbytes == 3
    odd = raw_file(tmp_path / "odd.safetensors", {"a": entry("F4", [3], 0, 2)}, b"\0" * 2)
    assert reference_refuses(odd)
    with pytest.raises(SafetensorsHeaderError):
        read_header(odd)


# --------------------------------------------------------------------------------------------
# write_renamed


def _renamed_all(parsed: SafetensorsFile, prefix: str = "new.") -> list[tuple[TensorEntry, str]]:
    return [(e, prefix + e.name) for e in parsed.tensors]


def test_write_renamed_all_tensors_bit_identical(mixed, tmp_path):
    path, tensors = mixed
    parsed = read_header(path)
    out = tmp_path / "out.safetensors"
    write_renamed(parsed, out, _renamed_all(parsed))
    loaded = load_file(str(out))
    assert set(loaded) == {"new." + n for n in tensors}
    for name, tensor in tensors.items():
        got = loaded["new." + name]
        assert got.dtype == tensor.dtype
        assert got.shape == tensor.shape
        assert tensor_bytes(got) == tensor_bytes(tensor)
    # the data section is byte-for-byte the source's (same order, nothing decoded)
    again = read_header(out)
    assert out.read_bytes()[again.data_start:] == path.read_bytes()[parsed.data_start:]
    # the header we wrote is 8-byte aligned, as the reference writer does
    assert again.data_start % 8 == 0


def test_write_renamed_keeps_metadata(mixed, tmp_path):
    path, _ = mixed
    parsed = read_header(path)
    out = tmp_path / "out.safetensors"
    write_renamed(parsed, out, _renamed_all(parsed))
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "héllo"}
    assert read_header(out).metadata == {"format": "pt", "note": "héllo"}


def test_write_renamed_metadata_override(mixed, tmp_path):
    path, _ = mixed
    parsed = read_header(path)
    out = tmp_path / "out.safetensors"
    write_renamed(parsed, out, _renamed_all(parsed), metadata={"format": "pt", "x": "y"})
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "x": "y"}


def test_write_renamed_without_metadata(tmp_path):
    src = tmp_path / "src.safetensors"
    save_file({"a": torch.arange(4, dtype=torch.int32)}, str(src))
    parsed = read_header(src)
    out = tmp_path / "out.safetensors"
    write_renamed(parsed, out, [(parsed.by_name["a"], "b")])
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() is None
        assert torch.equal(f.get_tensor("b"), torch.arange(4, dtype=torch.int32))


@pytest.mark.parametrize("keep", [
    ["f32"],                                    # one tensor from the middle
    ["bf16", "scalar_i32"],                     # far apart
    ["empty_f32", "empty_2d_bf16"],             # only zero-size tensors: empty data section
    ["bool", "empty_i32", "i64", "scalar_bf16"],
    [n for i, n in enumerate(MIXED) if i % 2],  # every other tensor: many runs
    [n for i, n in enumerate(MIXED) if i % 3],
    [],                                         # nothing at all
])
def test_write_renamed_subsets(mixed, tmp_path, keep):
    path, tensors = mixed
    parsed = read_header(path)
    out = tmp_path / "sub.safetensors"
    write_renamed(parsed, out, [(parsed.by_name[n], f"k.{n}") for n in keep])
    assert not reference_refuses(out)
    loaded = load_file(str(out))
    assert set(loaded) == {f"k.{n}" for n in keep}
    for n in keep:
        assert loaded[f"k.{n}"].dtype == tensors[n].dtype
        assert tensor_bytes(loaded[f"k.{n}"]) == tensor_bytes(tensors[n])
    again = read_header(out)
    assert again.data_size == sum(tensors[n].numel() * tensors[n].element_size() for n in keep)


def test_write_renamed_drops_middle_of_data_order(tmp_path):
    """Drop the tensors that sit in the middle of the *data* section (not of the dict)."""
    src = tmp_path / "src.safetensors"
    tensors = {f"t{i}": random_tensor((i + 1, 3), torch.float32, seed=i) for i in range(6)}
    save_file(tensors, str(src))
    parsed = read_header(src)
    data_order = [e.name for e in parsed.tensors]
    keep = [data_order[0], data_order[-1]]
    out = tmp_path / "out.safetensors"
    write_renamed(parsed, out, [(parsed.by_name[n], n.upper()) for n in keep])
    loaded = load_file(str(out))
    assert set(loaded) == {n.upper() for n in keep}
    for n in keep:
        assert tensor_bytes(loaded[n.upper()]) == tensor_bytes(tensors[n])


def test_write_renamed_order_of_renames_does_not_matter(mixed, tmp_path):
    path, tensors = mixed
    parsed = read_header(path)
    out = tmp_path / "rev.safetensors"
    write_renamed(parsed, out, list(reversed(_renamed_all(parsed, "r."))))
    loaded = load_file(str(out))
    for name, tensor in tensors.items():
        assert tensor_bytes(loaded["r." + name]) == tensor_bytes(tensor)


def test_write_renamed_swapping_names(tmp_path):
    src = tmp_path / "src.safetensors"
    a, b = torch.ones(3), torch.arange(5, dtype=torch.float32)
    save_file({"a": a, "b": b}, str(src))
    parsed = read_header(src)
    out = tmp_path / "out.safetensors"
    write_renamed(parsed, out, [(parsed.by_name["a"], "b"), (parsed.by_name["b"], "a")])
    loaded = load_file(str(out))
    assert torch.equal(loaded["b"], a) and torch.equal(loaded["a"], b)


def test_write_renamed_unicode_names(tmp_path):
    src = tmp_path / "src.safetensors"
    save_file({"a": torch.ones(2)}, str(src))
    parsed = read_header(src)
    out = tmp_path / "out.safetensors"
    write_renamed(parsed, out, [(parsed.by_name["a"], "модель.λ.\"quoted\".ключ")])
    assert list(load_file(str(out))) == ["модель.λ.\"quoted\".ключ"]


def test_write_renamed_overwrites_existing_destination(tmp_path):
    src = tmp_path / "src.safetensors"
    save_file({"a": torch.ones(2)}, str(src))
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"x" * 10_000)  # longer than the result: must be truncated
    parsed = read_header(src)
    write_renamed(parsed, out, [(parsed.by_name["a"], "z")])
    assert torch.equal(load_file(str(out))["z"], torch.ones(2))


def test_write_renamed_without_copy_file_range(mixed, tmp_path, monkeypatch):
    """Filesystems (or kernels) without copy_file_range: the pread/write fallback gives the same file."""
    path, tensors = mixed

    def unsupported(*args, **kwargs):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    parsed = read_header(path)
    keep = [n for i, n in enumerate(MIXED) if i % 2]
    out = tmp_path / "fallback.safetensors"
    write_renamed(parsed, out, [(parsed.by_name[n], n) for n in keep])
    loaded = load_file(str(out))
    assert set(loaded) == set(keep)
    for n in keep:
        assert tensor_bytes(loaded[n]) == tensor_bytes(tensors[n])


def test_write_renamed_copy_file_range_failing_midway(mixed, tmp_path, monkeypatch):
    """copy_file_range copies a few bytes, then fails (EXDEV): the fallback resumes at the right offsets."""
    path, tensors = mixed
    real = os.copy_file_range
    calls = {"n": 0}

    def flaky(src, dst, count, offset_src=None, offset_dst=None):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(18, "Invalid cross-device link")
        return real(src, dst, min(count, 5), offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", flaky)
    parsed = read_header(path)
    out = tmp_path / "flaky.safetensors"
    write_renamed(parsed, out, _renamed_all(parsed, ""))
    assert calls["n"] >= 3
    loaded = load_file(str(out))
    for name, tensor in tensors.items():
        assert tensor_bytes(loaded[name]) == tensor_bytes(tensor)


@pytest.mark.parametrize("no_copy_file_range", [False, True])
def test_write_renamed_source_shrunk_after_parsing(mixed, tmp_path, monkeypatch, no_copy_file_range):
    """The source loses its tail between read_header and the copy: a clean error, not a short file."""
    path, _ = mixed
    if no_copy_file_range:
        monkeypatch.setattr(os, "copy_file_range", lambda *a, **k: (_ for _ in ()).throw(OSError(95, "no")))
    parsed = read_header(path)
    os.truncate(path, path.stat().st_size - 10)
    with pytest.raises(SafetensorsHeaderError, match="early"):
        write_renamed(parsed, tmp_path / "short.safetensors", _renamed_all(parsed))


def test_write_renamed_refuses_duplicate_new_names(mixed, tmp_path):
    path, _ = mixed
    parsed = read_header(path)
    out = tmp_path / "dup.safetensors"
    renames = [(parsed.by_name["f32"], "same"), (parsed.by_name["bf16"], "other"), (parsed.by_name["i32"], "same")]
    with pytest.raises(SafetensorsHeaderError, match="same"):
        write_renamed(parsed, out, renames)
    assert not out.exists()


@pytest.mark.parametrize("bad_name", ["__metadata__", ""])
def test_write_renamed_never_writes_a_file_it_cannot_read_back(tmp_path, bad_name):
    """A tensor named `__metadata__` would replace the metadata (or be taken for it) and an empty
    name is refused by read_header: write_renamed must refuse such names instead of writing a file
    that neither read_header nor the reference library accepts as meant."""
    src = tmp_path / "src.safetensors"
    save_file({"a": torch.ones(2), "b": torch.zeros(3)}, str(src), metadata={"format": "pt"})
    parsed = read_header(src)
    out = tmp_path / "out.safetensors"
    try:
        write_renamed(parsed, out, [(parsed.by_name["a"], "a"), (parsed.by_name["b"], bad_name)])
    except SafetensorsHeaderError:
        return  # refused: fine
    try:
        again = read_header(out)
    except SafetensorsHeaderError as exc:
        pytest.fail(f"write_renamed accepted the name {bad_name!r} and wrote a file read_header refuses: {exc}")
    assert again.by_name[bad_name].nbytes == 12
    assert again.metadata == {"format": "pt"}


# --------------------------------------------------------------------------------------------
# header validation, one rule at a time

GOOD = {"a": entry("F32", [2], 0, 8), "b": entry("I32", [1], 8, 12)}


def test_hand_crafted_good_file_is_accepted(tmp_path):
    """The baseline the corrupt variants below start from."""
    path = raw_file(tmp_path / "good.safetensors", GOOD, b"\0" * 12)
    assert not reference_refuses(path)
    parsed = read_header(path)
    assert [t.name for t in parsed.tensors] == ["a", "b"]


def _refused(path: Path, match: str | None = None, *, reference: bool = True) -> SafetensorsHeaderError:
    with pytest.raises(SafetensorsHeaderError, match=match) as info:
        read_header(path)
    err = info.value
    assert isinstance(err, FormatError)
    assert err.path == path
    assert str(path) in str(err)
    if reference:
        assert reference_refuses(path), "the reference library accepts this file: the test input is not broken"
    return err


def test_header_length_over_the_bound_small_file(tmp_path):
    path = raw_file(tmp_path / "big.safetensors", None, header_bytes=b"{}", length=MAX_HEADER_BYTES + 1)
    _refused(path, "limit")


def test_header_length_huge_value(tmp_path):
    path = raw_file(tmp_path / "huge.safetensors", None, header_bytes=b"{}", length=2**64 - 1)
    _refused(path, "limit")


def test_header_length_over_the_bound_allocates_nothing(tmp_path):
    """A sparse file long enough to hold the claimed header: only the bound stops the read."""
    path = tmp_path / "sparse.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{")
        f.truncate(MAX_HEADER_BYTES + 64)
    tracemalloc.start()
    try:
        with pytest.raises(SafetensorsHeaderError, match="limit"):
            read_header(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"reading a refused header allocated {peak} bytes"


def test_header_length_exactly_at_the_bound_is_not_refused_for_its_size(tmp_path):
    path = tmp_path / "edge.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_BYTES) + b"[")
        f.truncate(8 + MAX_HEADER_BYTES)
    err = _refused(path, reference=False)
    assert "limit" not in str(err)


def test_header_length_past_file_end(tmp_path):
    path = raw_file(tmp_path / "past.safetensors", None, header_bytes=b'{"a":1}', length=100)
    _refused(path, "past the end")


@pytest.mark.parametrize("content", [b"", b"\x01", b"\x00" * 7])
def test_file_shorter_than_the_length_prefix(tmp_path, content):
    path = tmp_path / "short.safetensors"
    path.write_bytes(content)
    _refused(path, "shorter")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SafetensorsHeaderError):
        read_header(tmp_path / "absent.safetensors")
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(SafetensorsHeaderError):
        read_header(folder)


@pytest.mark.parametrize("body", [
    b"not json at all",
    b'{"a": ',
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}',   # unterminated
    b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},}',  # trailing comma
    b"\xff\xfe{}",
    b'{"\xff": 1}',                                                       # not UTF-8
    b"{} garbage",
    b"",
    b"\x00" * 16,
])
def test_non_json_header(tmp_path, body):
    path = raw_file(tmp_path / "nj.safetensors", None, b"", header_bytes=body)
    _refused(path)


@pytest.mark.parametrize("value", [[], [1, 2], "x", 3, None, True])
def test_non_object_json_header(tmp_path, value):
    path = raw_file(tmp_path / "no.safetensors", value)
    _refused(path)


def test_duplicate_tensor_names(tmp_path):
    body = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
           b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    path = raw_file(tmp_path / "dup.safetensors", None, b"\0" * 8, header_bytes=body)
    _refused(path, "duplicate", reference=False)  # the reference's verdict depends on which one it keeps


def test_duplicate_fields_inside_an_entry(tmp_path):
    body = b'{"a": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}}'
    path = raw_file(tmp_path / "dupf.safetensors", None, b"\0" * 4, header_bytes=body)
    _refused(path, "duplicate")


@pytest.mark.parametrize("dtype", ["F128", "f32", "float32", "", "Q4", "BF16 ", 32, None, 1.5, True])
def test_unknown_dtype(tmp_path, dtype):
    path = raw_file(tmp_path / "dt.safetensors", {"a": entry(dtype, [1], 0, 4)}, b"\0" * 4)
    _refused(path, "dtype")


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, []])
def test_unhashable_dtype_is_a_clean_error(tmp_path, dtype):
    """BUG: `dtype not in DTYPE_BITS` raises TypeError (unhashable) for a list or object dtype."""
    path = raw_file(tmp_path / "dt.safetensors", {"a": entry(dtype, [1], 0, 4)}, b"\0" * 4)
    _refused(path, "dtype")


@pytest.mark.parametrize("shape", [[-1], [2, -1], [1.0], [1.5], ["1"], [True], [False, 1], [None], [[1]],
                                   "1", 1, None, {"0": 1}])
def test_bad_shape(tmp_path, shape):
    path = raw_file(tmp_path / "sh.safetensors", {"a": entry("U8", shape, 0, 1)}, b"\0")
    _refused(path, "shape")


def test_rank_over_the_limit(tmp_path):
    ok = raw_file(tmp_path / "ok.safetensors", {"a": entry("U8", [1] * MAX_RANK, 0, 1)}, b"\0")
    assert read_header(ok).by_name["a"].shape == (1,) * MAX_RANK
    path = raw_file(tmp_path / "rank.safetensors", {"a": entry("U8", [1] * (MAX_RANK + 1), 0, 1)}, b"\0")
    _refused(path, "shape", reference=False)


@pytest.mark.parametrize("offsets", [[0], [0, 4, 8], [], [0.0, 4], [0, 4.0], ["0", 4], [False, 4], [0, True],
                                     None, "0,4", {"0": 4}, [[0], [4]], [None, 4]])
def test_offsets_not_two_ints(tmp_path, offsets):
    path = raw_file(tmp_path / "off.safetensors",
                    {"a": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}, b"\0" * 4)
    _refused(path, "data_offsets")


def test_negative_offsets(tmp_path):
    path = raw_file(tmp_path / "neg.safetensors", {"a": entry("F32", [1], -4, 0)}, b"\0" * 4)
    _refused(path, "data_offsets")


def test_begin_after_end(tmp_path):
    path = raw_file(tmp_path / "rev.safetensors", {"a": entry("F32", [1], 4, 0)}, b"\0" * 4)
    _refused(path, "begin <= end")


@pytest.mark.parametrize("info", [
    {"dtype": "F32", "shape": [1]},
    {"dtype": "F32", "data_offsets": [0, 4]},
    {"shape": [1], "data_offsets": [0, 4]},
    {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1},
    [1, 2],
    "F32",
    None,
    4,
])
def test_entry_not_exactly_three_fields(tmp_path, info):
    path = raw_file(tmp_path / "ent.safetensors", {"a": info}, b"\0" * 4)
    _refused(path, "exactly", reference="extra" not in (info if isinstance(info, dict) else {}))


@pytest.mark.parametrize("dtype,shape,nbytes", [
    ("F32", [2], 4), ("F32", [1], 8), ("BF16", [3], 4), ("BOOL", [2], 1), ("I64", [], 4), ("F32", [0], 4),
    ("U8", [2, 3], 5),
])
def test_size_mismatch_between_shape_and_offsets(tmp_path, dtype, shape, nbytes):
    path = raw_file(tmp_path / "size.safetensors", {"a": entry(dtype, shape, 0, nbytes)}, b"\0" * nbytes)
    _refused(path, "needs")


def test_overlapping_tensors(tmp_path):
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}
    path = raw_file(tmp_path / "ov.safetensors", header, b"\0" * 12)
    _refused(path, "overlaps")


def test_identical_offsets_are_overlap(tmp_path):
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 0, 4)}
    path = raw_file(tmp_path / "same.safetensors", header, b"\0" * 4)
    _refused(path, "overlaps")


def test_gap_between_tensors(tmp_path):
    header = {"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}
    path = raw_file(tmp_path / "gap.safetensors", header, b"\0" * 12)
    _refused(path, "gap")


def test_gap_before_first_tensor(tmp_path):
    path = raw_file(tmp_path / "gap0.safetensors", {"a": entry("F32", [1], 4, 8)}, b"\0" * 8)
    _refused(path, "gap")


@pytest.mark.parametrize("extra", [1, 7, 4096])
def test_trailing_bytes_after_the_data(tmp_path, extra):
    path = raw_file(tmp_path / "trail.safetensors", GOOD, b"\0" * (12 + extra))
    _refused(path, "trailing")


@pytest.mark.parametrize("short", [1, 4, 12])
def test_truncated_data(tmp_path, short):
    path = raw_file(tmp_path / "trunc.safetensors", GOOD, b"\0" * (12 - short))
    _refused(path, "truncated")


def test_truncated_real_file(tmp_path, mixed):
    path, _ = mixed
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-3])
    _refused(cut, "truncated")


@pytest.mark.parametrize("metadata", [{"a": 1}, {"a": None}, {"a": ["x"]}, {"a": {"b": "c"}}, {"a": True},
                                      ["format", "pt"], "pt", 1])
def test_bad_metadata(tmp_path, metadata):
    header = {"__metadata__": metadata, **GOOD}
    path = raw_file(tmp_path / "meta.safetensors", header, b"\0" * 12)
    _refused(path, "__metadata__")


@pytest.mark.parametrize("shape", [[0, 2**64], [2**40, 2**40, 0], [2**33, 2**33, 0]])
def test_zero_size_tensor_with_dims_the_reference_cannot_hold(tmp_path, shape):
    """BUG (minor): read_header accepts a zero-element tensor whose dims exceed a u64, or whose running
    product overflows one before reaching the 0; the reference refuses such files (checked_mul, left
    to right), and a conversion copies the header into an output no other reader opens."""
    path = raw_file(tmp_path / "big.safetensors", {"a": entry("F32", shape, 0, 0)})
    _refused(path, "shape")


def test_empty_tensor_name(tmp_path):
    path = raw_file(tmp_path / "name.safetensors", {"": entry("F32", [1], 0, 4)}, b"\0" * 4)
    _refused(path, "name", reference=False)


@pytest.mark.parametrize("body", [
    b'{"a":' + b"[" * 100_000,
    b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"a":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001,
    b"[" * 100_000,
    b"{" * 100_000,
])
def test_deeply_nested_json_is_a_clean_error(tmp_path, body):
    path = raw_file(tmp_path / "deep.safetensors", None, b"", header_bytes=body)
    _refused(path)
