"""Conversion behaviour that needs no ms-swift: selection, renames, PEFT versions, refusals, safety."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import converters
from converters import conversion as convert_module
from tests.helpers.models import forward, load_base, make_peft_checkpoint, peft_forward, read_tensors


@pytest.fixture(scope="module")
def peft_multi(llama_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("peft") / "multi"
    make_peft_checkpoint(llama_base, out, {
        "default": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        "sql": dict(r=2, lora_alpha=4, target_modules=["k_proj"]),
    }, seed=1)
    return out


def _swift_lora(folder: Path, adapters: dict[str, dict], *, bin_format: bool = False) -> Path:
    """A Swift checkpoint laid out as ms-swift writes it (tensors and config fields by hand)."""
    folder.mkdir(parents=True)
    (folder / "configuration.json").write_text("{}")
    for name, extra in adapters.items():
        sub = folder / name
        sub.mkdir()
        config = {"swift_type": "LORA", "peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
                  "lora_dtype": None, "lorap_lr_ratio": 16.0, "lorap_emb_lr": 1e-6, "use_qa_lora": False,
                  "use_merged_linear": False, "enable_lora": None, "model_key_mapping": None, **extra}
        (sub / "adapter_config.json").write_text(json.dumps(config))
        tensors = {f"model.layers.0.self_attn.q_proj.lora_A.{name}.weight": torch.randn(2, 32),
                   f"model.layers.0.self_attn.q_proj.lora_B.{name}.weight": torch.randn(32, 2)}
        if bin_format:
            torch.save(tensors, sub / "adapter_model.bin")
        else:
            save_file(tensors, sub / "adapter_model.safetensors", metadata={"format": "pt"})
    return folder


def test_adapter_selection_and_rename_put_the_chosen_adapter_at_the_peft_root(peft_multi: Path, tmp_path: Path,
                                                                              llama_base: Path) -> None:
    swift = converters.convert(peft_multi, tmp_path / "swift", "swift").destination
    result = converters.convert(swift, tmp_path / "only_sql", "peft", adapters=["sql"], renames={"sql": "default"})
    assert result.adapters == ("default",)
    names = {p.name for p in (tmp_path / "only_sql").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names and not any(
        (tmp_path / "only_sql" / n).is_dir() for n in names)
    # The renamed adapter computes what "sql" computed.
    assert torch.equal(peft_forward(llama_base, tmp_path / "only_sql"),
                       peft_forward(llama_base, peft_multi / "sql", "sql"))


def test_renaming_in_swift_format_rewrites_the_adapter_name_in_every_key(peft_multi: Path, tmp_path: Path) -> None:
    converters.convert(peft_multi, tmp_path / "swift", "swift", renames={"sql": "text-to-sql"})
    keys = read_tensors(tmp_path / "swift" / "text-to-sql" / "adapter_model.safetensors")
    assert keys and all(".lora_A.text-to-sql.weight" in k or ".lora_B.text-to-sql.weight" in k for k in keys)


def test_rename_collision_and_unknown_adapter_are_refused(peft_multi: Path, tmp_path: Path) -> None:
    with pytest.raises(converters.OutputError, match="both be named 'default'"):
        converters.convert(peft_multi, tmp_path / "a", "swift", renames={"sql": "default"})
    with pytest.raises(converters.NotACheckpointError, match="no adapter named 'nope'.*default, sql"):
        converters.convert(peft_multi, tmp_path / "b", "swift", adapters=["nope"])
    with pytest.raises(converters.NotACheckpointError, match="not usable"):
        converters.convert(peft_multi, tmp_path / "c", "swift", renames={"sql": "../evil"})
    assert list(tmp_path.iterdir()) == []


def test_only_non_default_adapters_say_how_to_load_them(peft_multi: Path, tmp_path: Path) -> None:
    result = converters.convert(peft_multi, tmp_path / "out", "peft", adapters=["sql"])
    assert any("subfolder" in n for n in result.notices)
    assert (tmp_path / "out" / "sql" / "adapter_config.json").exists()


def test_older_peft_version_drops_only_default_valued_fields(peft_multi: Path, tmp_path: Path) -> None:
    result = converters.convert(peft_multi, tmp_path / "old", "peft", peft_version="0.18")
    config = json.loads((tmp_path / "old" / "adapter_config.json").read_text())
    for field in ("use_bdlora", "kasa_config", "lora_ga_config", "monteclora_config", "velora_config"):
        assert field not in config
    assert any("dropped default-valued fields" in n for n in result.notices)
    # A non-default value of a field 0.18 does not know is refused, naming it.
    edited = tmp_path / "edited"
    shutil.copytree(peft_multi, edited)
    config = json.loads((edited / "adapter_config.json").read_text())
    config["use_bdlora"] = {"target_modules_bd_a": ["q_proj"]}
    (edited / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(converters.UnsupportedFieldError, match="use_bdlora.*PEFT 0.18"):
        converters.convert(edited, tmp_path / "refused", "peft", peft_version="0.18")
    with pytest.raises(converters.UnsupportedFieldError, match="unknown PEFT version"):
        converters.convert(peft_multi, tmp_path / "x", "peft", peft_version="0.3")
    assert not (tmp_path / "refused").exists() and not (tmp_path / "x").exists()


def test_peft_0_18_loads_the_older_config(peft_multi: Path, tmp_path: Path) -> None:
    """The fields written for 0.18 are exactly those 0.18's LoraConfig accepts (checked against the table
    generated from the real release; the oracle environment holds the real 0.18)."""
    from converters.config import peft_field_table

    converters.convert(peft_multi, tmp_path / "old", "peft", peft_version="0.18")
    config = json.loads((tmp_path / "old" / "adapter_config.json").read_text())
    known = set(peft_field_table()["0.18"]["LoraConfig"]) | {"peft_type", "peft_version"}
    assert set(config) <= known


@pytest.mark.parametrize("field,value", [("use_qa_lora", True), ("use_merged_linear", True)])
def test_math_changing_swift_fields_are_refused_naming_field_and_adapter(tmp_path: Path, field: str,
                                                                         value: object) -> None:
    src = _swift_lora(tmp_path / "src", {"default": {}, "sql": {field: value}})
    with pytest.raises(converters.UnsupportedFieldError, match=f"adapter 'sql' sets {field}=True"):
        converters.convert(src, tmp_path / "out", "peft")
    assert not (tmp_path / "out").exists()


def test_extra_states_are_refused(tmp_path: Path) -> None:
    src = _swift_lora(tmp_path / "src", {"default": {}})
    (src / "extra_states").mkdir()
    with pytest.raises(converters.RefusedError, match="extra_states"):
        converters.convert(src, tmp_path / "out", "peft")


def test_legacy_bin_is_read_with_weights_only_and_written_as_safetensors(tmp_path: Path) -> None:
    src = _swift_lora(tmp_path / "src", {"default": {}}, bin_format=True)
    converters.convert(src, tmp_path / "peft", "peft")
    assert not list((tmp_path / "peft").rglob("*.bin"))
    ours = read_tensors(tmp_path / "peft" / "adapter_model.safetensors")
    original = torch.load(src / "default" / "adapter_model.bin", weights_only=True)
    assert torch.equal(ours["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"],
                       original["model.layers.0.self_attn.q_proj.lora_A.default.weight"])


class _Payload:
    """Unpickling this runs code: the converter must refuse it without ever running it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_executed(tmp_path: Path) -> None:
    src = _swift_lora(tmp_path / "src", {"default": {}}, bin_format=True)
    marker = tmp_path / "pwned"
    torch.save({"model.layers.0.self_attn.q_proj.lora_A.default.weight": _Payload(str(marker))},
               src / "default" / "adapter_model.bin")
    for call in (lambda: converters.convert(src, tmp_path / "out", "peft"), lambda: converters.inspect(src)):
        with pytest.raises(converters.UnsafePickleError, match="weights_only=True"):
            call()
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_ms_swift_1x_loramodule_keys_are_refused(tmp_path: Path) -> None:
    src = _swift_lora(tmp_path / "src", {"default": {}})
    save_file({"model.layers.0.q_proj.loramodule_default.lora_A": torch.zeros(2, 2)},
              src / "default" / "adapter_model.safetensors")
    with pytest.raises(converters.RefusedError, match="loramodule_"):
        converters.convert(src, tmp_path / "out", "peft")


def test_a_failure_midway_leaves_no_output_and_no_partial_folder(peft_multi: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = convert_module._write_adapter
    calls = []

    def fail_on_second(plan, folder):
        calls.append(plan.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(plan, folder)

    monkeypatch.setattr(convert_module, "_write_adapter", fail_on_second)
    with pytest.raises(OSError):
        converters.convert(peft_multi, tmp_path / "out", "swift")
    assert calls == ["default", "sql"]
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_atomically_and_is_required(peft_multi: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(converters.OutputError, match="--overwrite"):
        converters.convert(peft_multi, tmp_path / "out", "swift")
    assert (tmp_path / "out" / "old.txt").exists()
    converters.convert(peft_multi, tmp_path / "out", "swift", overwrite=True)
    assert not (tmp_path / "out" / "old.txt").exists() and (tmp_path / "out" / "sql").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_conversion_never_writes_inside_its_source(peft_multi: Path) -> None:
    with pytest.raises(converters.OutputError, match="outside the source"):
        converters.convert(peft_multi, peft_multi / "inner", "swift")
    with pytest.raises(converters.OutputError):
        converters.convert(peft_multi, peft_multi, "swift", overwrite=True)
    assert not (peft_multi / "inner").exists()


def test_pickled_training_files_are_left_out_with_a_notice(peft_multi: Path, tmp_path: Path) -> None:
    src = tmp_path / "sft"
    shutil.copytree(peft_multi, src)
    (src / "training_args.bin").write_bytes(b"\x80\x04not really")
    (src / "args.json").write_text('{"model": "x"}')
    result = converters.convert(src, tmp_path / "out", "swift")
    assert any("training_args.bin" in n for n in result.notices)
    assert not (tmp_path / "out" / "training_args.bin").exists()
    assert (tmp_path / "out" / "args.json").read_text() == '{"model": "x"}'


@pytest.mark.parametrize("layout,message", [
    ("file", "is a file"),
    ("empty", "no adapter_config.json"),
    ("swift_adapter_folder", "one adapter of a Swift checkpoint"),
    ("mixed", "mixes a PEFT adapter"),
    ("no_type", "neither swift_type nor peft_type"),
    ("bad_json", "not valid JSON"),
    ("list_json", "must be a JSON object"),
])
def test_detect_explains_what_it_expected(tmp_path: Path, layout: str, message: str) -> None:
    target = tmp_path / "ckpt"
    if layout == "file":
        target.write_text("x")
    else:
        target.mkdir()
    if layout == "swift_adapter_folder":
        (target / "adapter_config.json").write_text('{"swift_type": "LORA"}')
    elif layout == "mixed":
        (target / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        (target / "b").mkdir()
        (target / "b" / "adapter_config.json").write_text('{"swift_type": "LORA"}')
    elif layout == "no_type":
        (target / "adapter_config.json").write_text('{"r": 8}')
    elif layout == "bad_json":
        (target / "adapter_config.json").write_text('{"r": 8')
    elif layout == "list_json":
        (target / "adapter_config.json").write_text('[1, 2]')
    with pytest.raises(converters.FormatError, match=message):
        converters.detect(target)


def test_detect_reports_format_adapters_weights_and_tuner_types(peft_multi: Path, tmp_path: Path) -> None:
    peft = converters.detect(peft_multi)
    assert (peft.format, [a.name for a in peft.adapters], peft.multi) == ("peft", ["default", "sql"], True)
    swift = converters.detect(_swift_lora(tmp_path / "s", {"default": {"use_dora": True}}, bin_format=True))
    assert swift.format == "swift" and swift.adapters[0].tuner_type == "DORA"
    assert swift.adapters[0].weights_format == "bin"


def test_shira_is_carried_through_and_refused_for_swift(llama_base: Path, tmp_path: Path) -> None:
    names = make_peft_checkpoint(llama_base, tmp_path / "shira", {"default": dict(r=2, target_modules=["q_proj"])},
                                 seed=3, config_class="ShiraConfig")
    assert names == ["default"]
    checkpoint = converters.detect(tmp_path / "shira")
    assert checkpoint.adapters[0].tuner_type == "SHIRA"
    assert converters.validate(tmp_path / "shira", llama_base).ok
    with pytest.raises(converters.UnsupportedTunerError, match="ms-swift has no SHIRA"):
        converters.convert(tmp_path / "shira", tmp_path / "swift", "swift")
    converters.convert(tmp_path / "shira", tmp_path / "copy", "peft")
    assert torch.equal(peft_forward(llama_base, tmp_path / "copy"), peft_forward(llama_base, tmp_path / "shira"))
    assert not torch.equal(peft_forward(llama_base, tmp_path / "copy"), forward(load_base(llama_base)))


def test_extra_states_are_carried_whole_from_swift_to_swift(tmp_path: Path) -> None:
    """Choosing or renaming adapters keeps the checkpoint's extra_states/ (modules ms-swift saved outside any
    tuner) byte for byte; only pickles other than the weights are left out, with a notice."""
    src = _swift_lora(tmp_path / "src", {"default": {}, "sql": {}})
    states = src / "extra_states"
    states.mkdir()
    save_file({"lm_head.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)},
              str(states / "adapter_model.safetensors"), metadata={"format": "pt"})
    (states / "optimizer.PT").write_bytes(b"\x80\x04K\x01.")
    result = converters.convert(src, tmp_path / "out", "swift", adapters=["sql"], renames={"sql": "main"})
    out = tmp_path / "out" / "extra_states"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_model.safetensors"]
    assert (out / "adapter_model.safetensors").read_bytes() == (states / "adapter_model.safetensors").read_bytes()
    assert any("extra_states/optimizer.PT" in n for n in result.notices)
    assert (tmp_path / "out" / "main" / "adapter_config.json").is_file()
