"""Benchmark: per-call latency of resolving a cached adapter id, swiftreg vs huggingface_hub.

What it measures
    Inside ONE Python process, the cost of asking "give me the local folder of this adapter revision"
    once everything is already on disk, which is what a training or serving script does on every start
    (and a multi-adapter server on every request):
      swiftreg      registry.resolve("team/sql-lora@v1")           (module level, SWIFTREG_HOME set in
                                                                    os.environ before `import registry`)
      hf            snapshot_download("team/sql-lora", revision="v1", cache_dir=C, local_files_only=True)
                    with HF_HUB_OFFLINE=1 (also set before `import huggingface_hub`)
    for these cases (each row: one swiftreg call and the huggingface_hub call that answers the same question)
      @v1 (tag)           module-level registry.resolve        vs revision="v1"        (refs/v1 -> commit)
      @1 (number)         module-level registry.resolve        vs revision=<commit>    (hf's immutable pin)
      @sha256:<digest>    module-level registry.resolve        vs revision=<commit>
      @v1 direct          Registry(home).resolve               vs revision="v1"
    each for a tiny adapter and for a 7B-scale one, to show that resolving a cached id does not depend on
    the adapter's size. timeit runs every call `--calls` times per repeat, `--repeats` repeats, all timers
    interleaved round-robin so machine noise hits both sides alike; the table gives per-call microseconds
    as the median of the repeats and the best repeat, and the ratio hf / swiftreg.
    Every timed call is first checked to return the expected folder, and both folders are checked to
    hold the same files with the same bytes (equal work).

    Then as a user's process meets it (leave out with --no-user-side): a memo miss (the database asked, the
    snapshot on disk), a fresh process's `registry.resolve` of a tag and of a number (no database opened for a
    number already cached), the whole `swiftreg pull ID` command and huggingface_hub's snapshot_download in a
    fresh process, interleaved in alternating order (bench/timing.py), median and spread of at least 5 rounds;
    and a registry on PostgreSQL (SWIFTREG_TEST_DATABASE_URL or the local server; --no-postgres leaves it out):
    a warm tag (memo hit, checked against the ref version), a warm number, a memo miss.

Target
    swiftreg at least 10x faster than huggingface_hub on the cached `@tag` (module-level
    registry.resolve, median), for both adapters; a warm tag under 10 us on PostgreSQL too. Exit code 0
    whether or not it is met (a benchmark, not a
    test); the verdict line says MET / MISSED.

Why
    A registry you resolve on every process start (or per request in an adapter server) has to be cheaper
    than the thing people already use: a warm huggingface_hub cache. The cold cost of swiftreg's first
    resolve (it materialises and re-hashes a verified snapshot folder) and of a first call per id (a
    database lookup) is printed for information; it is paid once per revision and id.

The two set-ups (under a fresh temp dir, removed at the end unless --keep)
    swiftreg          Registry(home).push(checkpoint, "team/<name>", tag="v1"): SQLite + local blob store.
    huggingface_hub   the cache a real `snapshot_download(repo, revision="v1")` writes: a tiny in-process
                      HTTP server plays the Hub (repo info, tree listing, HEAD/GET resolve with the Hub's
                      X-Repo-Commit / ETag / X-Linked-Etag / X-Linked-Size headers; LFS files named by
                      sha256, others by git blob sha1, as on the Hub) and huggingface_hub itself downloads
                      from it in a subprocess (HF_HUB_OFFLINE must be off to download, and it is read at
                      import). So models--team--<name>/ holds refs/v1, blobs/, snapshots/<commit>/ symlinks
                      and trees/<commit>.json exactly as huggingface_hub writes them. A hand-written copy
                      of that layout is built beside it and compared (it is the fallback if the fake Hub
                      ever stops working with a newer huggingface_hub). Then, in this process,
                      snapshot_download(..., local_files_only=True) must return that snapshot and
                      scan_cache_dir must see the repo with ref v1.

The adapters (PEFT format; swiftreg stores them as they are)
    tiny      made by the real peft: get_peft_model(LlamaForCausalLM(tiny config), LoraConfig(r=8,
              lora_alpha=16, q/k/v/o/gate/up/down_proj)), LoRA weights randomised, save_pretrained.
    7B-scale  Llama-7B shapes (hidden 4096, intermediate 11008, 32 layers), LoRA r=64 on the same seven
              projections, bf16: 448 tensors, 160 M parameters, about 306 MiB. Tensor shapes, values and
              the streaming safetensors writer come from bench/convert.py's generator; keys are PEFT's
              (base_model.model.<module>.lora_A.weight); adapter_config.json by peft's own
              LoraConfig.save_pretrained (with the inference_mode and auto_mapping that
              PeftModel.save_pretrained sets); README.md the tiny one's. Checked against the tiny real one:
              same files, same config fields, same key pattern modulo layer, same shape formula.
              `--layers N` makes it smaller (e.g. 2 for a smoke run).

Run (from the repository root)
    .venv/bin/python bench/resolve.py
    .venv/bin/python bench/resolve.py --calls 500 --repeats 5 --layers 2     # quick smoke run
"""
from __future__ import annotations

import argparse
import hashlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
from timing import say  # noqa: E402  (bench/timing.py)
sys.path.insert(0, str(ROOT / "bench"))
SPEEDUP_TARGET = 10.0
WARM_TAG_US = 10.0  # a warm tag resolve on either database, at most (issue 18)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Tiny real model: kv heads == heads (no GQA), as in Llama-7B, so one shape formula covers both.
TINY = {"hidden": 48, "intermediate": 80, "layers": 2, "heads": 4, "vocab": 128, "r": 8, "lora_alpha": 16}
TAG = "v1"
#: Tracked by LFS in the Hub's default .gitattributes (the cache names their blobs by sha256).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")



# --------------------------------------------------------------------------- checkpoints

def load_convert_bench() -> Any:
    """bench/convert.py's generator (shapes, seeded values, streaming safetensors writer)."""
    spec = importlib.util.spec_from_file_location("_swiftreg_bench_convert", ROOT / "bench" / "convert.py")
    if spec is None or spec.loader is None:
        raise ImportError("bench/convert.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("tensor_specs", "make_tensor", "write_safetensors_streaming", "HIDDEN", "INTERMEDIATE",
                 "RANK", "LORA_ALPHA", "TARGETS", "ADAPTER"):
        if not hasattr(module, name):
            raise ImportError(f"bench/convert.py has no {name}")
    if list(module.TARGETS) != TARGETS:
        raise ImportError("bench/convert.py targets other projections")
    return module


def peft_key(swift_key: str, adapter: str) -> str:
    """model.layers.0.self_attn.q_proj.lora_A.default.weight
    -> base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"""
    return "base_model.model." + swift_key.replace(f".{adapter}.", ".")


def build_tiny_peft(out: Path) -> None:
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation chatter in peft
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(
        vocab_size=TINY["vocab"], hidden_size=TINY["hidden"], intermediate_size=TINY["intermediate"],
        num_hidden_layers=TINY["layers"], num_attention_heads=TINY["heads"],
        num_key_value_heads=TINY["heads"]))
    model = peft.get_peft_model(base, peft.LoraConfig(r=TINY["r"], lora_alpha=TINY["lora_alpha"],
                                                      target_modules=TARGETS))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a fresh LoRA B is all zeros; give every adapter weight real values
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(out)


def build_large_peft(out: Path, tiny: Path, layers: int, gen: Any) -> None:
    """The 7B-scale PEFT checkpoint, streamed one tensor at a time (bounded memory)."""
    import peft

    out.mkdir(parents=True)
    config = peft.LoraConfig(r=gen.RANK, lora_alpha=gen.LORA_ALPHA, target_modules=TARGETS,
                             inference_mode=True)
    # What PeftModel.save_pretrained adds for a task-less LoRA on a Llama (as in the tiny real save).
    config.auto_mapping = {"base_model_class": "LlamaForCausalLM",
                           "parent_library": "transformers.models.llama.modeling_llama"}
    config.save_pretrained(out)
    shutil.copyfile(tiny / "README.md", out / "README.md")
    specs = gen.tensor_specs(layers, gen.HIDDEN, gen.INTERMEDIATE, gen.RANK)
    names = {peft_key(k, gen.ADAPTER): k for k in specs}
    gen.write_safetensors_streaming(out / "adapter_model.safetensors",
                                    {p: specs[k] for p, k in names.items()},
                                    lambda p, shape: gen.make_tensor(names[p], shape), {"format": "pt"})


def safetensors_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def build_large_source(work: Path, layers: int, *, checked: bool = True) -> Path:
    """work/src/large-peft: the 7B-scale PEFT adapter the transfer benches move, built after the tiny one a real
    PEFT save wrote (work/src/tiny-peft) and, when `checked`, compared with it key for key."""
    gen = load_convert_bench()
    tiny, src = work / "src" / "tiny-peft", work / "src" / "large-peft"
    build_tiny_peft(tiny)
    build_large_peft(src, tiny, layers, gen)
    if checked:
        check_large_against_tiny(src, tiny, layers, gen)
    return src


def check_large_against_tiny(large: Path, tiny: Path, layers: int, gen: Any) -> None:
    problems = []
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    if files(large) != files(tiny):
        problems.append(f"files differ: {files(large)} vs real peft's {files(tiny)}")
    cfg_l = json.loads((large / "adapter_config.json").read_text())
    cfg_t = json.loads((tiny / "adapter_config.json").read_text())
    if (cfg_l.get("r"), cfg_l.get("lora_alpha")) != (gen.RANK, gen.LORA_ALPHA):
        problems.append("r / lora_alpha not written")
    for c in (cfg_l, cfg_t):
        for k in ("r", "lora_alpha"):
            c.pop(k, None)
        if isinstance(c.get("target_modules"), list):
            c["target_modules"] = sorted(c["target_modules"])
    if cfg_l != cfg_t:
        diff = sorted(k for k in cfg_l.keys() | cfg_t.keys() if cfg_l.get(k) != cfg_t.get(k))
        problems.append(f"adapter_config.json fields differ: {', '.join(diff)}")
    pattern = lambda keys: {re.sub(r"\.layers\.\d+\.", ".layers.{i}.", k) for k in keys}  # noqa: E731
    h_l = safetensors_header(large / "adapter_model.safetensors")
    h_t = safetensors_header(tiny / "adapter_model.safetensors")
    if pattern(h_l) != pattern(h_t):
        problems.append(f"key pattern differs from real peft's: {sorted(pattern(h_l) ^ pattern(h_t))[:4]}")
    tiny_specs = {peft_key(k, gen.ADAPTER): tuple(s) for k, s in
                  gen.tensor_specs(TINY["layers"], TINY["hidden"], TINY["intermediate"], TINY["r"]).items()}
    if {k: tuple(v["shape"]) for k, v in h_t.items()} != tiny_specs:
        problems.append("the shape formula does not reproduce real peft's tiny shapes")
    if len(h_l) != len(TARGETS) * 2 * layers:
        problems.append(f"{len(h_l)} tensors, expected {len(TARGETS) * 2 * layers}")
    if problems:
        raise SystemExit("error: generated 7B-scale checkpoint does not match real peft's layout:\n  "
                         + "\n  ".join(problems))


def folder_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- a fake Hub

@dataclass
class HubFile:
    path: Path
    size: int
    sha1: str
    sha256: str
    lfs: bool

    @property
    def etag(self) -> str:  # what the Hub's HEAD gives (X-Linked-Etag for LFS), and the cache's blob name
        return self.sha256 if self.lfs else self.sha1

    def tree_entry(self, rel: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.sha1, "size": self.size, "path": rel}
        if self.lfs:
            pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                       f"size {self.size}\n")
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(pointer)}
        return entry


@dataclass
class HubRepo:
    repo_id: str
    commit: str
    refs: dict[str, str]
    files: dict[str, HubFile] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, repo_id: str, folder: Path, commit: str, tag: str) -> "HubRepo":
        repo = cls(repo_id, commit, {tag: commit})
        for rel, p in folder_files(folder).items():
            repo.files[rel] = HubFile(p, p.stat().st_size, git_blob_sha1(p), sha256_file(p),
                                      p.name.endswith(LFS_SUFFIXES))
        return repo


def make_hub_handler(repos: dict[str, HubRepo]) -> type[http.server.BaseHTTPRequestHandler]:
    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _json(self, obj: Any, body: bool) -> None:
            raw = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if body:
                self.wfile.write(raw)

        def _error(self, status: int, code: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, body: bool) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            m = (re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
                 or re.fullmatch(r"/([^/]+/[^/]+)/(resolve)/([^/]+)/(.+)", path))
            if not m or m.group(1) not in repos:
                return self._error(404, "RepoNotFound")
            repo = repos[m.group(1)]
            commit = repo.refs.get(m.group(3), m.group(3))
            if commit != repo.commit:
                return self._error(404, "RevisionNotFound")
            if m.group(2) == "revision":
                return self._json({"id": repo.repo_id, "sha": commit, "private": False,
                                   "siblings": [{"rfilename": rel} for rel in repo.files]}, body)
            if m.group(2) == "tree":
                return self._json([f.tree_entry(rel) for rel, f in repo.files.items()], body)
            hub_file = repo.files.get(m.group(4))
            if hub_file is None:
                return self._error(404, "EntryNotFound")
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hub_file.sha1}"')
            if hub_file.lfs:
                self.send_header("X-Linked-Etag", f'"{hub_file.sha256}"')
                self.send_header("X-Linked-Size", str(hub_file.size))
            self.send_header("Content-Length", str(hub_file.size))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if body:
                with open(hub_file.path, "rb") as f:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)

    return Hub


DOWNLOADER = r'''
import json, sys
from huggingface_hub import snapshot_download
spec = json.loads(sys.argv[1])
for repo_id in spec["repos"]:
    print(snapshot_download(repo_id, revision=spec["tag"], cache_dir=spec["cache_dir"],
                            endpoint=spec["endpoint"]))
'''


def download_with_hf(repos: dict[str, HubRepo], cache_dir: Path, hf_home: Path) -> None:
    """huggingface_hub's own snapshot_download, from a fake Hub on 127.0.0.1, fills `cache_dir`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_hub_handler(repos))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    dropped = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k not in dropped}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
               NO_PROXY="127.0.0.1,localhost")
    try:
        proc = subprocess.run([sys.executable, "-c", DOWNLOADER, json.dumps(
            {"repos": list(repos), "tag": TAG, "cache_dir": str(cache_dir), "endpoint": endpoint})],
            env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
        server.server_close()
    if proc.returncode != 0:
        raise RuntimeError(f"snapshot_download from the fake Hub failed (rc {proc.returncode}): "
                           f"{proc.stderr[-2000:]}")


CACHEDIR_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                "# This file is a cache directory tag created by huggingface_hub.\n"
                "# For information about cache directory tags, see:\n"
                "#\thttps://bford.info/cachedir/\n")


def write_hf_cache_by_hand(repos: dict[str, HubRepo], cache_dir: Path) -> None:
    """The same layout, written directly: refs/<tag>, blobs/<etag>, snapshots/<commit>/<file> as relative
    symlinks to ../../blobs/<etag>, trees/<commit>.json, and the cache root's CACHEDIR.TAG."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "CACHEDIR.TAG").write_text(CACHEDIR_TAG)
    for repo in repos.values():
        storage = cache_dir / ("models--" + repo.repo_id.replace("/", "--"))
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        for name, commit in repo.refs.items():
            (storage / "refs" / name).write_text(commit)
        (storage / "blobs").mkdir(exist_ok=True)
        tree: dict[str, Any] = {}
        for rel, f in repo.files.items():
            blob = storage / "blobs" / f.etag
            if not blob.exists():
                shutil.copyfile(f.path, blob)
            pointer = storage / "snapshots" / repo.commit / rel
            pointer.parent.mkdir(parents=True, exist_ok=True)
            pointer.symlink_to(os.path.relpath(blob, pointer.parent))
            info: dict[str, Any] = {"size": f.size, "blob_id": f.sha1}
            if f.lfs:
                info.update(lfs_sha256=f.sha256, lfs_size=f.size)
            tree[rel] = info
        (storage / "trees").mkdir(exist_ok=True)
        (storage / "trees" / f"{repo.commit}.json").write_text(
            json.dumps({"format_version": 1, "files": tree}, indent=2))


def layout(cache_dir: Path) -> dict[str, Any]:
    """Everything that defines an hf cache: paths, symlink targets, ref contents, tree listings (parsed)."""
    out: dict[str, Any] = {}
    for p in sorted(cache_dir.rglob("*")):
        rel = p.relative_to(cache_dir).as_posix()
        if any(part.startswith(".") for part in p.relative_to(cache_dir).parts):
            continue  # .locks/ and similar bookkeeping
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        elif "/refs/" in f"/{rel}":
            out[rel] = ("ref", p.read_text())
        elif "/trees/" in f"/{rel}":
            out[rel] = ("tree", json.loads(p.read_text()))
        else:
            out[rel] = ("file", sha256_file(p))
    return out


# --------------------------------------------------------------------------- timing

@dataclass
class Row:
    adapter: str
    case: str
    swift_call: str
    hf_call: str
    swift: Callable[[], Any]
    hf: Callable[[], Any]
    swift_expected: Path
    hf_expected: str
    swift_times: list[float] = field(default_factory=list)
    hf_times: list[float] = field(default_factory=list)


def us(x: float) -> str:
    return f"{x * 1e6:.1f}" if x < 1e-3 else f"{x * 1e6:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="See the module docstring for details.")
    parser.add_argument("--calls", type=int, default=2000, help="calls per timing repeat (default 2000)")
    parser.add_argument("--repeats", type=int, default=7, help="timing repeats per case and side (default 7)")
    parser.add_argument("--layers", type=int, default=32,
                        help="decoder layers of the 7B-scale adapter (default 32: about 306 MiB; "
                             "2 for a smoke run)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    parser.add_argument("--no-user-side", action="store_true",
                        help="leave out the memo miss, fresh-process and PostgreSQL rows")
    parser.add_argument("--no-postgres", action="store_true", help="leave out the PostgreSQL rows")
    args = parser.parse_args()
    if args.calls < 1 or args.repeats < 1 or args.layers < 1:
        parser.error("--calls, --repeats and --layers must be at least 1")

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="swiftreg-bench-resolve-"))
    home, cache_dir, hf_home = work / "swiftreg-home", work / "hf-cache", work / "hf-home"
    # Both libraries read these at import (or first use): set them before importing either.
    os.environ["SWIFTREG_HOME"] = str(home)
    os.environ.pop("SWIFTREG_DATABASE_URL", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    try:
        return run(args, work, home, cache_dir, started)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, home: Path, cache_dir: Path, started: float) -> int:
    # ---- checkpoints
    say(f"work dir {work}")
    tiny = work / "src" / "tiny-peft"
    t0 = time.perf_counter()
    build_tiny_peft(tiny)
    adapters: dict[str, Path] = {"tiny": tiny}
    large_label = "7B-scale"
    if args.layers != 32:
        large_label += f", {args.layers} layer{'s' * (args.layers > 1)}"
    try:
        gen = load_convert_bench()
    except Exception as exc:  # noqa: BLE001 - a benchmark: say why and go on with the tiny adapter
        say(f"note: bench/convert.py's generator is not importable ({exc}); "
            "only the tiny adapter is measured")
    else:
        large = work / "src" / "large-peft"
        build_large_peft(large, tiny, args.layers, gen)
        check_large_against_tiny(large, tiny, args.layers, gen)
        adapters[large_label] = large
    repo_ids = {label: "team/sql-lora" if label == "tiny" else "team/sql-lora-7b" for label in adapters}
    for label, src in adapters.items():
        files = folder_files(src)
        say(f"adapter {label:<22} {repo_ids[label]:<18} {len(files)} files, "
            f"{sum(p.stat().st_size for p in files.values()) / 2**20:8.2f} MiB  ({', '.join(files)})")
    say(f"  built in {time.perf_counter() - t0:.1f} s")

    # ---- swiftreg: push and tag v1
    import registry
    from registry.service import Registry

    t0 = time.perf_counter()
    pusher = Registry(home=home)
    digests: dict[str, str] = {}
    for label, src in adapters.items():
        result = pusher.push(src, repo_ids[label], tag=TAG)
        digests[label] = result.revision.digest
        if result.revision.number != 1 or TAG not in result.revision.tags:
            raise SystemExit(f"error: push gave revision {result.revision.number}, "
                             f"tags {result.revision.tags}")
    pusher.close()
    say(f"swiftreg: pushed as @{TAG} (revision 1) in {time.perf_counter() - t0:.1f} s")

    # ---- huggingface_hub cache, written by huggingface_hub itself
    t0 = time.perf_counter()
    hub_repos = {repo_ids[label]: HubRepo.from_folder(
        repo_ids[label], src, hashlib.sha1(digests[label].encode()).hexdigest(), TAG)
        for label, src in adapters.items()}
    by_hand = work / "hf-cache-by-hand"
    write_hf_cache_by_hand(hub_repos, by_hand)
    try:
        download_with_hf(hub_repos, cache_dir, work / "hf-home-download")
        same = layout(cache_dir) == layout(by_hand)
        how = "by huggingface_hub's own snapshot_download from a fake Hub; a hand-written copy is " + (
            "identical" if same else "DIFFERENT (see --keep)")
        if not same:
            a, b = layout(cache_dir), layout(by_hand)
            for k in sorted(a.keys() | b.keys()):
                if a.get(k) != b.get(k):
                    say(f"  layout differs at {k}: hf {a.get(k)} vs hand {b.get(k)}")
    except Exception as exc:  # noqa: BLE001
        say(f"note: the fake Hub download failed ({exc}); using the hand-written cache")
        shutil.rmtree(cache_dir, ignore_errors=True)
        shutil.copytree(by_hand, cache_dir, symlinks=True)
        how = "by hand (fallback)"
    say(f"huggingface_hub: cache written {how}, in {time.perf_counter() - t0:.1f} s")

    import huggingface_hub
    from huggingface_hub import scan_cache_dir, snapshot_download

    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        raise SystemExit("error: huggingface_hub did not pick up HF_HUB_OFFLINE=1")
    cached = {r.repo_id: r for r in scan_cache_dir(cache_dir).repos}
    hf_snapshots: dict[str, str] = {}
    for label in adapters:
        rid, hub = repo_ids[label], hub_repos[repo_ids[label]]
        expected = str(cache_dir / ("models--" + rid.replace("/", "--")) / "snapshots" / hub.commit)
        got = snapshot_download(rid, revision=TAG, cache_dir=str(cache_dir), local_files_only=True)
        if got != expected:
            raise SystemExit(f"error: snapshot_download gave {got}, expected {expected}")
        info = cached.get(rid)
        if info is None or {r.commit_hash: sorted(r.refs) for r in info.revisions} != {hub.commit: [TAG]}:
            raise SystemExit(f"error: scan_cache_dir does not see {rid} at {hub.commit} with ref {TAG}")
        links = [p for p in Path(got).rglob("*") if not p.is_dir()]
        if not all(p.is_symlink() and p.resolve().parent.name == "blobs" for p in links):
            raise SystemExit("error: the hf snapshot does not consist of symlinks into blobs/")
        hf_snapshots[label] = got
    say(f"  verified: snapshot_download(local_files_only=True) returns snapshots/<commit>/ "
        f"(HF_HUB_OFFLINE=1), scan_cache_dir sees ref {TAG}, files are symlinks into blobs/")

    # ---- warm-up: the first resolve materialises swiftreg's snapshot (cold cost, for information)
    cold: list[str] = []
    direct = Registry(home=home)
    ids: dict[str, dict[str, str]] = {}
    for label in adapters:
        rid = repo_ids[label]
        ids[label] = {"tag": f"{rid}@{TAG}", "number": f"{rid}@1", "digest": f"{rid}@{digests[label]}"}
        t0 = time.perf_counter()
        snap = registry.resolve(ids[label]["tag"])
        t_first = time.perf_counter() - t0
        firsts = []
        for kind in ("number", "digest"):
            t0 = time.perf_counter()
            other = registry.resolve(ids[label][kind])
            firsts.append(time.perf_counter() - t0)
            if other != snap:
                raise SystemExit(f"error: {ids[label][kind]} resolves to {other}, @{TAG} to {snap}")
        t0 = time.perf_counter()
        if direct.resolve(ids[label]["tag"]) != snap:
            raise SystemExit("error: Registry(home).resolve disagrees with registry.resolve")
        t_direct = time.perf_counter() - t0
        t0 = time.perf_counter()
        snapshot_download(repo_ids[label], revision=TAG, cache_dir=str(cache_dir), local_files_only=True)
        t_hf_first = time.perf_counter() - t0
        # Equal work: both folders hold the same files with the same bytes.
        ours, theirs = folder_files(snap), folder_files(Path(hf_snapshots[label]))
        if sorted(ours) != sorted(theirs) or any(sha256_file(ours[k]) != hub_repos[rid].files[k].sha256 or
                                                 sha256_file(theirs[k]) != hub_repos[rid].files[k].sha256
                                                 for k in ours):
            raise SystemExit(f"error: swiftreg's {snap} and hf's {hf_snapshots[label]} hold different files")
        miss = ""
        if hasattr(direct, "_resolve"):
            n = 200
            t0 = time.perf_counter()
            for _ in range(n):
                direct._resolve(ids[label]["tag"], None)
            miss = (f"\n    memo miss (DB lookup, snapshot already on disk; Registry._resolve) "
                    f"{us((time.perf_counter() - t0) / n)} us/call")
        cold.append(f"  {label}:\n"
                    f"    first registry.resolve @{TAG} (materialise: copy + re-hash + fsync) "
                    f"{t_first * 1e3:.1f} ms\n"
                    f"    first call of @1 {firsts[0] * 1e3:.2f} ms, of @digest {firsts[1] * 1e3:.2f} ms, "
                    f"of a second Registry(home).resolve @{TAG} {t_direct * 1e3:.2f} ms{miss}\n"
                    f"    hf: first offline snapshot_download in this process {t_hf_first * 1e3:.2f} ms")
    say("equal work: swiftreg's snapshot and hf's snapshot hold the same files, byte-identical to the source")

    # ---- timed cases
    rows: list[Row] = []
    cache = str(cache_dir)
    for label in adapters:
        rid, commit = repo_ids[label], hub_repos[repo_ids[label]].commit
        snap, hf_snap = registry.resolve(ids[label]["tag"]), hf_snapshots[label]

        def hf_call(revision: str, rid: str = rid) -> Callable[[], str]:
            return lambda: snapshot_download(rid, revision=revision, cache_dir=cache, local_files_only=True)

        def sr_call(ref: str) -> Callable[[], Path]:
            return lambda: registry.resolve(ref)

        rows += [
            Row(label, f"@{TAG} (tag)", "registry.resolve", f"revision={TAG!r}", sr_call(ids[label]["tag"]),
                hf_call(TAG), snap, hf_snap),
            Row(label, "@1 (number)", "registry.resolve", "revision=<commit>", sr_call(ids[label]["number"]),
                hf_call(commit), snap, hf_snap),
            Row(label, "@sha256:<64 hex>", "registry.resolve", "revision=<commit>",
                sr_call(ids[label]["digest"]), hf_call(commit), snap, hf_snap),
            Row(label, f"@{TAG} direct", "Registry(home).resolve", f"revision={TAG!r}",
                (lambda ref=ids[label]["tag"]: direct.resolve(ref)), hf_call(TAG), snap, hf_snap),
        ]
    for row in rows:  # every timed call returns the right folder
        if row.swift() != row.swift_expected or row.hf() != row.hf_expected:
            raise SystemExit(f"error: {row.adapter} {row.case}: a timed call returns the wrong folder")

    say(f"timing: {len(rows)} cases x 2 sides, {args.calls} calls x {args.repeats} repeats, interleaved ...")
    timers = [(row.swift_times, timeit.Timer(row.swift)) for row in rows] + \
             [(row.hf_times, timeit.Timer(row.hf)) for row in rows]
    for timer in timers:  # one short untimed pass each
        timer[1].timeit(max(1, args.calls // 10))
    for i in range(args.repeats):
        k = i % len(timers)
        for times, timer in timers[k:] + timers[:k]:  # rotate: nobody always goes first
            times.append(timer.timeit(args.calls) / args.calls)

    # ---- report
    say()
    say(f"per-call latency of resolving a cached adapter id, in microseconds "
        f"({args.calls} calls x {args.repeats} repeats; median of repeats / best repeat)")
    say("swiftreg: registry.resolve(id) (module level, SWIFTREG_HOME) or Registry(home).resolve(id); "
        "hf: snapshot_download(repo, revision=..., cache_dir=..., local_files_only=True), HF_HUB_OFFLINE=1")
    head = (f"  {'adapter':<22} {'case':<18} {'swiftreg call':<23} {'hf call':<18} "
            f"{'swiftreg med':>12} {'min':>7} {'hf med':>8} {'min':>7} {'hf/swiftreg':>11} {'(min)':>7}")
    say(head)
    say("  " + "-" * (len(head) - 2))
    verdicts = []
    for row in rows:
        s_med, s_min = statistics.median(row.swift_times), min(row.swift_times)
        h_med, h_min = statistics.median(row.hf_times), min(row.hf_times)
        ratio = h_med / s_med
        say(f"  {row.adapter:<22} {row.case:<18} {row.swift_call:<23} {row.hf_call:<18} "
            f"{us(s_med):>12} {us(s_min):>7} {us(h_med):>8} {us(h_min):>7} {ratio:10.1f}x "
            f"{h_min / s_min:6.1f}x")
        if row.case == f"@{TAG} (tag)":
            verdicts.append((row.adapter, ratio))
    say()
    say("cold costs (once per revision / id / process; for information, no target):")
    for line in cold:
        say(line)
    tag_rows = [r for r in rows if r.case == f"@{TAG} (tag)"]
    if len(tag_rows) > 1:
        a, b = (statistics.median(r.swift_times) for r in tag_rows[:2])
        say(f"size independence: swiftreg @{TAG} {us(a)} us ({tag_rows[0].adapter}) vs {us(b)} us "
            f"({tag_rows[1].adapter}): ratio {b / a:.2f}")
    say()
    met = all(r >= SPEEDUP_TARGET for _, r in verdicts)
    say(f"target: swiftreg >= {SPEEDUP_TARGET:.0f}x faster than huggingface_hub on the cached @{TAG} "
        f"(module-level registry.resolve, medians): "
        + ", ".join(f"{a} {r:.1f}x" for a, r in verdicts) + f"   {'MET' if met else 'MISSED'}")
    if not args.no_user_side:
        user_side(args, work, home, cache_dir, ids, repo_ids, direct)
    say(f"\nbenchmark took {time.perf_counter() - started:.0f} s")
    return 0


def per_call(fn: Callable[[], Any], calls: int, repeats: int) -> list[float]:
    """Seconds per call of `fn`, one figure per repeat (timeit)."""
    timer = timeit.Timer(fn)
    timer.timeit(max(1, calls // 10))
    return [timer.timeit(calls) / calls for _ in range(repeats)]


def user_side(args: argparse.Namespace, work: Path, home: Path, cache_dir: Path, ids: dict[str, dict[str, str]],
              repo_ids: dict[str, str], direct: Any) -> None:
    """What a user's process pays beside the memo hit above: a memo miss, a fresh process (library and
    command), and a registry on PostgreSQL (issue 18: the bench must not only time the in-process memo hit)."""
    import timing

    label = "tiny"
    tag_id, number_id = ids[label]["tag"], ids[label]["number"]
    repeats = max(timing.MIN_RUNS, args.repeats)
    say()
    say(f"as a user runs it ({timing.load_average()}):")
    miss = per_call(lambda: direct._resolve(tag_id, None), max(1, args.calls // 10), repeats)
    say(f"  memo miss, SQLite: Registry._resolve @{TAG} (the database asked, snapshot on disk): "
        f"{us(statistics.median(miss))} us ({us(min(miss))}-{us(max(miss))})")
    env = {k: v for k, v in os.environ.items() if k != "SWIFTREG_DATABASE_URL"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as after a pip install
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    py = sys.executable
    swiftreg = str(Path(py).with_name("swiftreg"))
    hf_code = ("from huggingface_hub import snapshot_download; "
               f"snapshot_download({repo_ids[label]!r}, revision={TAG!r}, cache_dir={str(cache_dir)!r}, "
               "local_files_only=True)")
    cases = [
        timing.Case(f"registry.resolve @{TAG}, fresh process",
                    timing.process([py, "-c", f"import registry; registry.resolve({tag_id!r})"], env), writes=False),
        timing.Case("registry.resolve @1, fresh process (no database opened)",
                    timing.process([py, "-c", f"import registry; registry.resolve({number_id!r})"], env), writes=False),
        timing.Case(f"`swiftreg pull {tag_id}` (whole command)", timing.process([swiftreg, "pull", tag_id], env),
                    writes=False),
        timing.Case(f"hf snapshot_download revision={TAG!r}, fresh process", timing.process([py, "-c", hf_code], env),
                    writes=False),
        timing.Case("python -c pass (the interpreter alone)", timing.process([py, "-c", "pass"], env), writes=False),
    ]
    results = timing.interleaved(cases, repeats)
    for case in cases:
        say(f"  {case.name:<62} {results.spread(case.name)}")
    ours, theirs = results.median(cases[0].name), results.median(cases[3].name)
    say(f"  fresh process, hf / swiftreg @{TAG}: {theirs / ours:.2f}x (no target: for information)")
    if args.no_postgres:
        say("  PostgreSQL: skipped (--no-postgres)")
        return
    sys.path.insert(0, str(ROOT))
    from registry.service import Registry
    from tests.helpers.databases import create_postgres_database, drop_postgres_database

    os.environ.setdefault("SWIFTREG_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    url = create_postgres_database()
    try:
        pg = Registry(home=work / "pg-home", database_url=url)
        pg.push(work / "src" / "tiny-peft", repo_ids[label], tag=TAG)
        pg.resolve(tag_id)
        hit = per_call(lambda: pg.resolve(tag_id), args.calls, repeats)
        number = per_call(lambda: pg.resolve(number_id), args.calls, repeats)
        pg_miss = per_call(lambda: pg._resolve(tag_id, None), max(1, args.calls // 10), repeats)
        pg.close()
    finally:
        drop_postgres_database(url)
    for what, values in ((f"warm @{TAG} (memo hit, ref-version checked)", hit), ("warm @1 (memo hit)", number),
                         (f"memo miss @{TAG} (the database asked)", pg_miss)):
        say(f"  PostgreSQL {what:<44} {us(statistics.median(values))} us ({us(min(values))}-{us(max(values))})")
    say("  " + timing.verdict(f"PostgreSQL warm tag resolve, us (README target: a warm tag under {WARM_TAG_US} us)",
                              statistics.median(hit) * 1e6, WARM_TAG_US, unit=" us"))


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as exc:  # a failed check (a message) is reported, but a benchmark exits 0;
        if not isinstance(exc.code, str):  # argparse's own exits (--help, usage errors) stay as they are
            raise
        print(exc.code, file=sys.stderr)
        code = 0
    sys.exit(code)
