"""Everyday use of the command line (issue 16, items 4, 6 and 10), through real `swiftreg` processes.

- non-finite values: NaN/Inf tensors (bf16 included) and NaN config numbers are refused by `validate` and
  `push`, named; `--allow-nonfinite` lets tensors through (locally and over HTTP); an equivalence check on
  NaN outputs fails with the reason;
- messages and exits: `| head -1` ends quietly, Ctrl-C mid-push exits 130 saying what was kept, a full disk
  names what was being written, an old-format torch.save file is read with weights_only=True alone and
  torch's advice to load with weights_only=False never shows, a mistyped folder, `log NS/NAME@REF`, the
  rank reduction `validate --target vllm` suggests runs as printed, no FutureWarning lines from model loads;
- `validate-all` goes red on a registry that is broken from its first run.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file

from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.filesystems import cannot_mount
from tests.helpers.server import Server, registry_env

ROOT = Path(__file__).resolve().parent.parent
#: What torch says when it would have the user load a pickle anyway: never shown by swiftreg.
TORCH_ADVICE = re.compile(r"weights_only\s*(=|set to)\s*`?False|add_safe_globals|trusted source", re.I)


def swiftreg(home: Path, *args: object, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """One real `python -m registry.cli` process on the embedded registry at `home`."""
    return subprocess.run([sys.executable, "-m", "registry.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env or registry_env(home, f"sqlite:///{home / 'r.db'}"))


def _edit_tensor(folder: Path, dtype: str, value: float) -> str:
    """Put `value` into one element of one tensor of a PEFT folder (stored as `dtype`); return its key."""
    path = folder / "adapter_model.safetensors"
    tensors = {k: torch.from_numpy(v.copy()) for k, v in load_file(str(path)).items()}
    key = sorted(tensors)[-1]
    tensors = {k: v.to(getattr(torch, dtype)) for k, v in tensors.items()}
    tensors[key].view(-1)[5] = value
    from safetensors.torch import save_file as save_torch

    save_torch(tensors, str(path), metadata={"format": "pt"})
    return key


def _edit_config(folder: Path, **values: object) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(values)
    (folder / "adapter_config.json").write_text(json.dumps(config))  # Python writes NaN / Infinity as JSON allows


# ----- item 4: non-finite values ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["nan-f32", "inf-bf16", "nan-lora-alpha", "inf-alpha-pattern"])
def test_non_finite_values_are_refused_by_validate_and_push_naming_them(case: str, tmp_path: Path) -> None:
    folder = write_peft_lora(tmp_path / "ckpt", seed=1)
    if case == "nan-f32":
        named = _edit_tensor(folder, "float32", float("nan"))
        expected = [named, "1 NaN among"]
    elif case == "inf-bf16":
        named = _edit_tensor(folder, "bfloat16", float("-inf"))
        expected = [named, "1 Inf among"]
    elif case == "nan-lora-alpha":
        _edit_config(folder, lora_alpha=float("nan"))
        expected = ["config.lora_alpha: is NaN"]
    else:
        _edit_config(folder, alpha_pattern={"q_proj": float("inf")})
        expected = ["config.alpha_pattern['q_proj']: is Infinity"]
    home = tmp_path / "home"
    checked = swiftreg(home, "validate", folder)
    assert checked.returncode == 1 and all(e in checked.stdout for e in expected), checked.stdout + checked.stderr
    pushed = swiftreg(home, "push", folder, "team/x")
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    assert pushed.stderr.startswith("error: ") and all(e in pushed.stderr for e in expected), pushed.stderr
    assert "Traceback" not in pushed.stderr
    assert "no adapter" in swiftreg(home, "show", "team/x").stderr  # nothing was stored
    allowed = swiftreg(home, "push", folder, "team/x", "--allow-nonfinite")
    if case.startswith("nan-lora") or case.startswith("inf-alpha"):  # a config number is never allowed
        assert allowed.returncode == 1 and expected[0] in allowed.stderr, allowed.stderr
    else:
        assert allowed.returncode == 0 and "pushed team/x@1" in allowed.stdout, allowed.stderr
        assert "(allowed)" in allowed.stderr and expected[0] in allowed.stderr
        again = swiftreg(home, "validate", folder, "--allow-nonfinite")
        assert again.returncode == 0 and "[warning]" in again.stdout and "valid" in again.stdout


def test_the_scan_reads_every_float_format_by_its_bits_with_and_without_numpy(tmp_path: Path) -> None:
    from converters import finite
    from converters.safetensors_io import read_header
    from safetensors.torch import save_file as save_torch

    generator = torch.Generator().manual_seed(0)
    tensors, expected = {}, {}
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e5m2,
                  torch.float8_e4m3fn, torch.complex64):
        t = (torch.randn(3000, generator=generator) * 50).to(dtype)
        if dtype.is_complex:
            t[3], t[9] = complex(float("nan"), 0), complex(0, float("-inf"))
        else:
            t[7], t[2000], t[11] = float("nan"), float("inf"), float("-inf")
        tensors[str(dtype)] = t
        wide = torch.view_as_real(t) if dtype.is_complex else t.to(torch.float32)
        expected[str(dtype)] = (int(torch.isnan(wide).sum()), int(torch.isinf(wide).sum()))
    tensors["finite"] = torch.randn(100, generator=generator).to(torch.bfloat16)
    tensors["integers"] = torch.full((64,), -1, dtype=torch.int32)  # all bits set: not a float, never counted
    save_torch(tensors, str(tmp_path / "t.safetensors"))
    header = read_header(tmp_path / "t.safetensors")
    for use_numpy in (True, False):
        found = {f.name: (f.nan, f.inf) for f in finite.scan_safetensors(header, use_numpy=use_numpy)}
        assert found == expected, use_numpy
    from converters.legacy_bin import nonfinite

    assert {f.name: (f.nan, f.inf) for f in nonfinite(tensors)} == expected


@pytest.mark.server
def test_allow_nonfinite_crosses_the_wire(server: Server, tmp_path: Path) -> None:
    import httpx

    folder = write_peft_lora(tmp_path / "ckpt", seed=7)
    _edit_tensor(folder, "float32", float("nan"))
    env = {k: v for k, v in registry_env(tmp_path / "client", "sqlite:///unused").items()
           if k != "SWIFTREG_DATABASE_URL"}
    env.update(SWIFTREG_URL=server.url, SWIFTREG_TOKEN=server.write_token)
    refused = swiftreg(tmp_path, "push", folder, "team/remote-nan", env=env)
    assert refused.returncode == 1 and "1 NaN among" in refused.stderr, refused.stderr
    allowed = swiftreg(tmp_path, "push", folder, "team/remote-nan", "--allow-nonfinite", env=env)
    assert allowed.returncode == 0 and "pushed team/remote-nan@1" in allowed.stdout, allowed.stderr
    assert "(allowed)" in allowed.stderr
    # the server checks the values too: the same blobs committed under another name without the flag are refused
    manifest = json.loads(swiftreg(tmp_path, "show", "team/remote-nan", "--json", env=env).stdout)["manifest"]
    headers = {"Authorization": f"Bearer {server.write_token}"}
    commit = f"{server.url}/api/v1/repos/team/remote-nan-2/revisions"
    plain = httpx.post(commit, json={"manifest": manifest}, headers=headers, timeout=60)
    assert plain.status_code == 422 and "1 NaN among" in plain.text, plain.text
    flagged = httpx.post(commit, json={"manifest": manifest, "allow_nonfinite": True}, headers=headers, timeout=60)
    assert flagged.status_code == 201, flagged.text


def test_equivalence_never_passes_on_nan_outputs() -> None:
    from registry.tensors import equivalence as eq

    good = torch.randn(2, 4, 8, dtype=torch.float64)
    bad = good.clone()
    bad[0, 1, 2] = float("nan")
    for ours, ref, informational in ((bad, good, False), (good, bad, False), (bad, bad, False), (bad, good, True)):
        c = eq.compare("merged vs base+adapter", ours, ref, "float32", informational=informational)
        assert not c.passed and c.top1 is None and "NaN or Inf" in c.reason, c
        assert json.loads(json.dumps(c.to_dict(), allow_nan=False))["passed"] is False
    table = eq.format_table([eq.compare("merged vs base+adapter", bad, bad, "float32")])
    assert "FAIL" in table and "1.000" not in table and "hold 1 NaN or Inf values of 64" in table
    assert eq.compare("same", good, good.clone(), "float32").passed


def test_a_nan_adapter_fails_check_equivalence_and_no_future_warning_is_printed(llama_base: Path,
                                                                                tmp_path: Path) -> None:
    from tests.helpers.models import make_peft_checkpoint

    adapter = tmp_path / "adapter"
    make_peft_checkpoint(llama_base, adapter, {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj"])})
    _edit_tensor(adapter, "float32", float("nan"))
    done = swiftreg(tmp_path / "home", "check-equivalence", adapter, "--base", llama_base)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "NaN or Inf values" in done.stdout and "1.000" not in done.stdout, done.stdout
    assert "FutureWarning" not in done.stderr and "Traceback" not in done.stderr, done.stderr


# ----- item 6: messages and exits -----------------------------------------------------------------------------

def test_a_closed_stdout_ends_a_listing_quietly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = write_peft_lora(tmp_path / "many", seed=3)
    for i in range(600):  # `show` prints one line per file: ~140 kB, far more than a pipe holds
        (folder / f"{'n' * 120}-{i:04}.txt").write_text("same bytes, one blob\n")
    assert swiftreg(home, "push", folder, "team/many").returncode == 0
    env = registry_env(home, f"sqlite:///{home / 'r.db'}")
    for command in ("ls", "show team/many", "log team/many --json"):
        done = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m registry.cli {command} | head -1; "
                               "echo \"status ${PIPESTATUS[0]}\" >&2"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert len(done.stdout.splitlines()) == 1, (command, done.stdout)
        status = done.stderr.splitlines()[-1]
        assert status in ("status 0", "status 141"), (command, done.stderr)
        assert done.stderr.splitlines()[:-1] == [], (command, done.stderr)  # no "error: : Broken pipe"


def test_ctrl_c_during_a_push_exits_130_and_says_what_was_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = write_peft_lora(tmp_path / "ckpt", seed=4)
    env = {**registry_env(home, f"sqlite:///{home / 'r.db'}"), "SWIFTREG_FAILPOINTS": "push:after-blobs=pause"}
    process = subprocess.Popen([sys.executable, "-m", "registry.cli", "push", str(folder), "team/int"], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        assert process.stderr.readline().strip() == "failpoint push:after-blobs: paused"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "interrupted: nothing was committed; blobs already stored are kept for the next push" in err, err
    assert "Aborted!" not in err and "Traceback" not in err and out == ""
    assert "no adapter" in swiftreg(home, "show", "team/int").stderr
    again = swiftreg(home, "push", folder, "team/int")
    assert again.returncode == 0 and "0 new blobs" in again.stdout, again.stdout + again.stderr


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True)
    return done.returncode == 0


def test_a_full_disk_names_what_was_being_written(tmp_path: Path) -> None:
    if not _unshare_works():
        cannot_mount("a small full filesystem needs `unshare -rm` and tmpfs (user and mount namespaces)")
    home = tmp_path / "home"
    big = write_peft_lora(tmp_path / "big", seed=5, r=64, layers=24)  # ~0.7 MB of tensors
    assert swiftreg(home, "push", big, "team/big").returncode == 0
    small = tmp_path / "small"
    small.mkdir()
    env = registry_env(home, f"sqlite:///{home / 'r.db'}")
    script = (f"mount -t tmpfs -o size=200k tmpfs {small} && cd {ROOT} && "
              f"{sys.executable} -m registry.cli convert {big} {small}/converted --to swift; "
              "echo \"status $?\"; "
              f"{sys.executable} -m registry.cli pull team/big -o {small}/pulled; echo \"status $?\"")
    done = subprocess.run(["unshare", "-rm", "bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split() == ["status", "1", "status", "1"], done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: no space left on device while writing the converted checkpoint at "
                               f"{small}/converted"), lines[0]
    assert lines[1].startswith(f"error: no space left on device while writing {small}/pulled"), lines[1]
    assert "error: : " not in done.stderr


class NotATensor:
    """What a pickle holds besides tensors: loading it would need this class (and could run any code)."""


def test_an_old_format_torch_save_is_read_with_weights_only_and_torch_advice_never_shows(tmp_path: Path) -> None:
    home = tmp_path / "home"
    legacy = write_peft_lora(tmp_path / "legacy", seed=6)
    weights = legacy / "adapter_model.safetensors"
    state = {k: torch.from_numpy(v.copy()) for k, v in load_file(str(weights)).items()}
    weights.unlink()
    torch.save(state, legacy / "adapter_model.bin", _use_new_zipfile_serialization=False)
    assert swiftreg(home, "validate", legacy).returncode == 0
    pushed = swiftreg(home, "push", legacy, "team/legacy")
    assert pushed.returncode == 0 and "pushed team/legacy@1" in pushed.stdout, pushed.stderr
    assert "stored as safetensors" in pushed.stderr
    shown = json.loads(swiftreg(home, "show", "team/legacy", "--json").stdout)
    assert [f["path"] for f in shown["manifest"]["files"] if f["path"].endswith("safetensors")] == [
        "adapter_model.safetensors"]

    for zipped in (False, True):
        hostile = write_peft_lora(tmp_path / f"hostile-{zipped}", seed=6)
        (hostile / "adapter_model.safetensors").unlink()
        torch.save({**state, "extra": NotATensor()}, hostile / "adapter_model.bin",
                   _use_new_zipfile_serialization=zipped)
        for args in (("validate", hostile), ("push", hostile, "team/hostile"), ("inspect", hostile)):
            done = swiftreg(home, *args)
            assert done.returncode == 1, (args, done.stdout, done.stderr)
            text = done.stdout + done.stderr
            assert "was not unpickled" in text and "NotATensor" in text, text
            assert not TORCH_ADVICE.search(text) and "\x1b[1m" not in text, text


def test_a_mistyped_folder_or_id_is_named_as_both(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert swiftreg(home, "push", write_peft_lora(tmp_path / "m" / "lora_a"), "m/lora_a").returncode == 0
    for args in (("validate", "m/lora_z"), ("validate", "m/lora_z", "--target", "vllm")):
        done = swiftreg(home, *args)
        assert done.returncode == 1
        assert done.stderr.startswith("error: no folder m/lora_z") and "no repository m/lora_z" in done.stderr, \
            done.stderr
    nested = swiftreg(home, "validate", "./runs/m/lora_z")
    assert nested.returncode == 1 and "no folder ./runs/m/lora_z" in nested.stderr, nested.stderr
    assert "not a registry id either" in nested.stderr
    ref = swiftreg(home, "validate", "m/lora_a@v9")
    assert ref.returncode == 1 and "no folder m/lora_a@v9" in ref.stderr and "'v9'" in ref.stderr, ref.stderr


def test_log_of_an_id_with_a_ref_points_at_show(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert swiftreg(home, "push", write_peft_lora(tmp_path / "a"), "team/x", "--tag", "v1").returncode == 0
    done = swiftreg(home, "log", "team/x@v1")
    assert done.returncode == 1 and "--tag" not in done.stderr, done.stderr
    assert "`swiftreg show team/x@v1`" in done.stderr
    assert swiftreg(home, "show", "team/x@v1").returncode == 0


def test_the_rank_reduction_validate_suggests_runs_as_printed_and_is_servable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert swiftreg(home, "push", write_peft_lora(tmp_path / "wide", seed=8, r=16), "team/wide").returncode == 0
    verdict = swiftreg(home, "validate", "team/wide", "--target", "vllm", "--max-lora-rank", "8")
    assert verdict.returncode == 1, verdict.stdout
    suggested = re.search(r"`(swiftreg combine [^`]+)`", verdict.stdout)
    assert suggested, verdict.stdout
    command = suggested.group(1)
    assert command == "swiftreg combine team/wide@1 --weights 1 --method svd --rank 8 --push team/wide-r8"
    reduced = swiftreg(home, *shlex.split(command)[1:])
    assert reduced.returncode == 0, reduced.stdout + reduced.stderr
    assert "a rank reduction from r=16 to 8" in reduced.stderr and "pushed team/wide-r8@1" in reduced.stdout
    served = swiftreg(home, "validate", "team/wide-r8", "--target", "vllm", "--max-lora-rank", "8")
    assert served.returncode == 0 and "servable by vLLM" in served.stdout, served.stdout
    shown = json.loads(swiftreg(home, "show", "team/wide-r8", "--json").stdout)
    assert shown["meta"]["r"] == 8 and shown["parents"][0]["repo"] == "team/wide"
    single = swiftreg(home, "combine", "team/wide", "--weights", "1", "--method", "cat", "-o", tmp_path / "o")
    assert single.returncode == 1 and "use --method svd --rank R" in single.stderr, single.stderr
    # a folder is told to write beside itself
    folder = swiftreg(home, "validate", tmp_path / "wide", "--target", "vllm", "--max-lora-rank", "8")
    assert f"--rank 8 -o {tmp_path / 'wide'}-r8`" in folder.stdout, folder.stdout


# ----- item 10: validate-all goes red ------------------------------------------------------------------------

def test_validate_all_fails_on_a_registry_broken_from_its_first_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    broken = write_peft_lora(tmp_path / "broken", seed=9)
    _edit_tensor(broken, "float32", float("inf"))
    assert swiftreg(home, "push", write_peft_lora(tmp_path / "fine", seed=10), "team/fine").returncode == 0
    assert swiftreg(home, "push", broken, "team/broken", "--allow-nonfinite").returncode == 0
    first = swiftreg(home, "validate-all", "--check", "config")
    assert first.returncode == 1, first.stdout + first.stderr
    last = first.stdout.strip().splitlines()[-1]
    assert last.startswith("VALIDATE-ALL FAILED: 1 of 2 checks failed on 1 of 2 revisions"), first.stdout
    assert "FAILED team/broken@1 config:" in first.stdout and "1 Inf among" in first.stdout
    lenient = swiftreg(home, "validate-all", "--check", "config", "--fail-on", "regression")
    assert lenient.returncode == 0, lenient.stdout
    assert lenient.stdout.strip().splitlines()[-1].startswith("VALIDATE-ALL PASSED (--fail-on regression)")
    as_json = swiftreg(home, "validate-all", "--check", "config", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["failed"] == 1
    assert as_json.stderr.strip().splitlines()[-1].startswith("VALIDATE-ALL FAILED")
    clean = swiftreg(home, "validate-all", "--check", "config", "--namespace", "nobody")
    assert clean.returncode == 0 and clean.stdout.strip().splitlines()[-1] == \
        "VALIDATE-ALL PASSED: all 0 checks passed on 0 revisions"
