"""Symbolic links in source folders (issue 16 items 2 and 3) and the modes of what swiftreg writes (item 7).

One rule (converters/source_files.py) decides for `push`, `base push` and `convert`: a link that stays in
the folder or in a Hugging Face / ModelScope cache is read as its file; any other is refused, naming it.
The Hugging Face case uses a folder made by the real `huggingface_hub.snapshot_download` from a real
`swiftreg serve`. Outputs (convert -o, pull -o, snapshots, merge -o, combine -o) follow the umask.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
from click.testing import CliRunner

from registry.cli import main
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora
from tests.helpers.server import running_server


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWIFTREG_", "HF_", "HUGGINGFACE_", "MODELSCOPE_"))}
    env.update(extra)
    return env


def _swiftreg(home: Path, *args: object, **env: str) -> subprocess.CompletedProcess:
    """The real CLI in a process of its own, on the embedded registry at `home`."""
    return subprocess.run([sys.executable, "-m", "registry.cli", *map(str, args)], capture_output=True, text=True,
                          env=_env(SWIFTREG_HOME=str(home), **env), timeout=300)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The CLI in this process (click's runner) on an embedded registry of its own, with no model cache set."""
    for name in list(os.environ):
        if name.startswith(("SWIFTREG_", "HF_", "HUGGINGFACE_", "MODELSCOPE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "home"))

    def run(*args: object, code: int = 0):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == code, (args, result.output, result.stderr)
        return result
    return run


def _blobs(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file()] if (home / "blobs").exists() else []


# ----- item 2: a folder made by huggingface_hub.snapshot_download --------------------------------------------

HF_SCRIPT = '''
import json, sys
from huggingface_hub import snapshot_download
endpoint, token, cache = sys.argv[1:4]
kw = dict(endpoint=endpoint, token=token, cache_dir=cache)
print("@@" + json.dumps({"adapter": snapshot_download("team/lora", revision="v1", **kw),
                         "base": snapshot_download("meta/llama", revision="v1", **kw)}))
'''


@pytest.mark.server
def test_a_hugging_face_cache_snapshot_is_pushed_as_the_files_it_links_to(tmp_path: Path, llama_base: Path) -> None:
    from registry.service import Registry

    adapter = write_peft_lora(tmp_path / "adapter", seed=5)
    db = f"sqlite:///{tmp_path / 'first.db'}"
    with running_server(tmp_path / "first", db) as server:
        first = Registry(home=server.home, database_url=db)
        try:
            want_adapter = first.push(adapter, "team/lora", tag="v1").revision.digest
            want_base = first.push_base(llama_base, "meta/llama", tag="v1").revision.digest
        finally:
            first.close()
        script = tmp_path / "download.py"
        script.write_text(textwrap.dedent(HF_SCRIPT))
        done = subprocess.run(
            [sys.executable, str(script), server.url, server.read_token, str(tmp_path / "hf-cache")],
            capture_output=True, text=True, timeout=120,
            env=_env(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1",
                     HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1"))
        assert done.returncode == 0, done.stderr[-3000:]
    folders = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("@@")][-1][2:])
    snapshot, base_snapshot = Path(folders["adapter"]), Path(folders["base"])
    # what the real client made: snapshots/<commit>/file -> ../../blobs/<hash>, inside models--team--lora/
    weights = snapshot / "adapter_model.safetensors"
    assert weights.is_symlink() and os.readlink(weights).startswith("../../blobs/")
    assert weights.resolve().parent == tmp_path / "hf-cache" / "models--team--lora" / "blobs"
    assert all(p.is_symlink() for p in base_snapshot.iterdir() if p.is_file())

    second = tmp_path / "second"  # no HF_HOME or HF_HUB_CACHE: the snapshot's own cache folder is what allows it
    pushed = _swiftreg(second, "push", snapshot, "team/lora", "--json")
    assert pushed.returncode == 0, pushed.stderr
    base_pushed = _swiftreg(second, "base", "push", base_snapshot, "meta/llama", "--json")
    assert base_pushed.returncode == 0, base_pushed.stderr
    assert json.loads(pushed.stdout)["revision"]["digest"] == want_adapter  # the same manifest, file for file
    assert json.loads(base_pushed.stdout)["revision"]["digest"] == want_base
    pulled = _swiftreg(second, "pull", "team/lora", "-o", tmp_path / "pulled")
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "pulled" / "adapter_model.safetensors").read_bytes() == weights.read_bytes()
    assert not (tmp_path / "pulled" / "adapter_model.safetensors").is_symlink()
    converted = _swiftreg(second, "convert", snapshot, tmp_path / "as-swift", "--to", "swift")
    assert converted.returncode == 0, converted.stderr
    assert not any(p.is_symlink() for p in (tmp_path / "as-swift").rglob("*"))


def test_links_inside_the_folder_are_read_as_their_files(cli, tmp_path: Path) -> None:
    src = write_peft_lora(tmp_path / "src", seed=1)
    (src / "docs").mkdir()
    (src / "docs" / "notes.txt").write_text("notes kept in docs/\n")
    (src / "notes.txt").symlink_to("docs/notes.txt")
    (src / "weights").mkdir()
    (src / "adapter_model.safetensors").rename(src / "weights" / "real.safetensors")
    (src / "adapter_model.safetensors").symlink_to(src / "weights" / "real.safetensors")  # absolute, inside
    shown = json.loads(cli("push", src, "team/linked", "--json").output)["revision"]
    files = {f["path"]: f["size"] for f in json.loads(cli("show", "team/linked", "--json").output)["manifest"]["files"]}
    assert files["notes.txt"] == len("notes kept in docs/\n") and "docs/notes.txt" in files
    assert files["adapter_model.safetensors"] == (src / "weights" / "real.safetensors").stat().st_size
    assert shown["number"] == 1
    out = tmp_path / "out"
    converted = cli("convert", src, out, "--to", "swift")
    assert (out / "notes.txt").read_text() == "notes kept in docs/\n" and not (out / "notes.txt").is_symlink()
    assert "left out folders that hold no adapter: docs, weights" in converted.stderr  # named, not dropped silently


def test_a_link_into_a_cache_root_named_by_the_environment_is_read(cli, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf-hub"
    (cache / "models--a--b" / "blobs").mkdir(parents=True)
    (cache / "models--a--b" / "blobs" / "0123abcd").write_text("a model card from the cache\n")
    src = write_peft_lora(tmp_path / "src", seed=2)
    (src / "card.md").symlink_to(cache / "models--a--b" / "blobs" / "0123abcd")
    refused = cli("push", src, "team/card", code=1)
    assert "card.md" in refused.stderr and "outside the folder" in refused.stderr
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    cli("push", src, "team/card")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path))
    cli("convert", src, tmp_path / "out", "--to", "swift")
    assert (tmp_path / "out" / "card.md").read_text() == "a model card from the cache\n"


# ----- items 2 and 3: every other link is refused, by push, base push and convert alike ----------------------

def _hostile(kind: str, src: Path, outside: Path) -> str:
    """Put a hostile entry of `kind` into `src`; the name it has there."""
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("not yours\n")
    link = src / "notes.txt"
    if kind == "etc-passwd":
        link.symlink_to("/etc/passwd")
    elif kind == "dot-dot-escape":
        link.symlink_to(Path("..") / outside.name / "secret.txt")
    elif kind == "folder-outside":
        link = src / "extra"
        link.symlink_to(outside, target_is_directory=True)
    elif kind == "dangling":
        link.symlink_to("gone.txt")
    elif kind == "loop":
        link.symlink_to("notes.txt")
    elif kind == "folder-inside":
        link = src / "latest"
        (src / "real").mkdir()
        (src / "real" / "x.txt").write_text("x")
        link.symlink_to("real", target_is_directory=True)
    return link.name


KINDS = ["etc-passwd", "dot-dot-escape", "folder-outside", "dangling", "loop", "folder-inside"]
REASONS = {"etc-passwd": "outside the folder", "dot-dot-escape": "outside the folder",
           "folder-outside": "link to a folder", "dangling": "dangling", "loop": "cannot be resolved",
           "folder-inside": "link to a folder"}


@pytest.mark.parametrize("kind", KINDS)
def test_push_and_convert_refuse_every_other_link_and_name_it(cli, tmp_path: Path, kind: str) -> None:
    src = write_peft_lora(tmp_path / "src", seed=3)
    name = _hostile(kind, src, tmp_path / "outside")
    for args in (("push", src, "team/evil"), ("convert", src, tmp_path / "out", "--to", "swift"),
                 ("inspect", src)):
        refused = cli(*args, code=1)
        assert f"{name}: " in refused.stderr and REASONS[kind] in refused.stderr, refused.stderr
        assert "symbolic link" in refused.stderr and "Traceback" not in refused.output
    assert _blobs(tmp_path / "home") == []
    assert not (tmp_path / "out").exists()  # nothing laundered into an output, not even half of one
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_base_push_refuses_a_link_to_etc_passwd(cli, tmp_path: Path, llama_base: Path) -> None:
    import shutil

    base = tmp_path / "base"
    shutil.copytree(llama_base, base)
    (base / "tokenizer_notes.txt").symlink_to("/etc/passwd")
    refused = cli("base", "push", base, "meta/evil", code=1)
    assert "tokenizer_notes.txt: is a symbolic link to /etc/passwd" in refused.stderr
    assert _blobs(tmp_path / "home") == []


def test_convert_refuses_a_weights_file_linked_outside(cli, tmp_path: Path) -> None:
    src = write_swift_lora(tmp_path / "src", seed=4)
    (tmp_path / "elsewhere").mkdir()
    weights = src / "default" / "adapter_model.safetensors"
    weights.rename(tmp_path / "elsewhere" / "w.safetensors")
    weights.symlink_to(tmp_path / "elsewhere" / "w.safetensors")
    refused = cli("convert", src, tmp_path / "out", "--to", "peft", code=1)
    assert "default/adapter_model.safetensors: is a symbolic link to" in refused.stderr
    assert not (tmp_path / "out").exists()


def test_a_file_swapped_after_the_check_is_not_read(tmp_path: Path) -> None:
    from converters import UnsafeFileError, source_files

    src = tmp_path / "src"
    src.mkdir()
    (src / "real.txt").write_text("ok")
    (src / "notes.txt").symlink_to("real.txt")
    found = [f for f in source_files.walk(src) if f.rel == "notes.txt"][0]
    (src / "real.txt").unlink()
    (src / "real.txt").symlink_to("/etc/passwd")  # the resolved path is now a link: O_NOFOLLOW refuses it
    with pytest.raises(UnsafeFileError, match="without following a link"):
        found.open()
    (src / "other.txt").write_text("another file")
    (src / "other.txt").replace(src / "real.txt")  # a different inode in its place
    with pytest.raises(UnsafeFileError, match="changed while being read"):
        found.open()
    (src / "sub").mkdir()
    (src / "sub" / "deep.txt").write_text("ok")
    (src / "deep.txt").symlink_to("sub/deep.txt")
    deep = [f for f in source_files.walk(src) if f.rel == "deep.txt"][0]
    assert deep.open().read() == b"ok"
    (src / "sub").rename(src / "gone")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "deep.txt").write_text("not yours")
    (src / "sub").symlink_to(tmp_path / "elsewhere")  # a folder on the resolved path swapped for a link
    with pytest.raises(UnsafeFileError, match="without following a link"):
        deep.open()


def test_weights_swapped_after_their_header_was_read_are_not_copied(tmp_path: Path) -> None:
    import shutil

    from converters import SafetensorsHeaderError
    from converters.safetensors_io import read_header, write_renamed

    src = write_peft_lora(tmp_path / "src", seed=7)
    weights = src / "adapter_model.safetensors"
    header = read_header(weights)
    shutil.copyfile(weights, tmp_path / "same-bytes")
    (tmp_path / "same-bytes").replace(weights)  # another file (inode) under the name, even with the same bytes
    with pytest.raises(SafetensorsHeaderError, match="changed since its header was read"):
        write_renamed(header, tmp_path / "out.safetensors", [(t, t.name) for t in header.tensors])


# ----- item 7: outputs follow the umask ---------------------------------------------------------------------

@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _wrong_modes(root: Path, umask: int, file_mode: int = 0o666) -> list[str]:
    """Entries of `root` (itself included, lock files left out) whose mode is not what the umask gives."""
    wrong = []
    for path in [root, *root.rglob("*")]:
        if path.name.endswith(".lock"):
            continue
        want = (0o777 if path.is_dir() else file_mode) & ~umask
        got = stat.S_IMODE(path.lstat().st_mode)
        if got != want:
            wrong.append(f"{path.relative_to(root.parent)}: {oct(got)} != {oct(want)}")
    return wrong


def test_outputs_and_snapshots_follow_the_umask(cli, tmp_path: Path, llama_base: Path, umask: int) -> None:
    from tests.helpers.models import make_peft_checkpoint

    swift = write_swift_lora(tmp_path / "swift", seed=6, names=("default", "other"))
    cli("convert", swift, tmp_path / "converted", "--to", "peft")
    assert _wrong_modes(tmp_path / "converted", umask) == []

    cli("push", swift, "team/x", "--tag", "v1")
    cli("pull", "team/x@v1", "--format", "peft", "-o", tmp_path / "pulled")
    assert _wrong_modes(tmp_path / "pulled", umask) == []
    snapshots = tmp_path / "home" / "snapshots"
    folders = [p for p in snapshots.rglob("*") if p.is_dir()]
    assert len(folders) >= 4 and all(p.parent.parent.parent == snapshots for p in folders if p.name.startswith("r"))
    for snapshot in (p for p in folders if p.name.startswith("r")):
        files = [p.stat() for p in snapshot.rglob("*") if p.is_file()]
        # read-only: the umask's read bits on a copy; a file hard-linked to its stored blob has the blob's 0o444
        assert files and all(stat.S_IMODE(st.st_mode) == (0o444 if st.st_nlink > 1 else 0o444 & ~umask)
                             for st in files)
    assert [p for p in [snapshots, *folders] if stat.S_IMODE(p.stat().st_mode) != 0o777 & ~umask] == []
    blobs = list((tmp_path / "home" / "blobs" / "sha256").rglob("*"))
    assert [p for p in blobs if p.is_file() and stat.S_IMODE(p.stat().st_mode) != 0o444] == []  # blobs stay 0444

    adapters = []
    for i in range(2):
        folder = tmp_path / f"adapter{i}"
        make_peft_checkpoint(llama_base, folder, {"default": dict(r=4, lora_alpha=8, target_modules=["q_proj"])},
                             seed=60 + i)
        adapters.append(folder)
    cli("merge", adapters[0], "--base", llama_base, "-o", tmp_path / "merged", "--device", "cpu")
    assert _wrong_modes(tmp_path / "merged", umask) == []
    cli("combine", adapters[0], adapters[1], "--weights", "0.5,0.5", "--method", "cat", "-o",
        tmp_path / "combined", "--device", "cpu")
    assert _wrong_modes(tmp_path / "combined", umask) == []
