"""The distribution as a new user gets it: every import declared, and the core working on its own.

- every package a module imports (at module level or inside a function) is declared in pyproject.toml:
  by the core, or by the extra of the feature the module belongs to (`ml`, `hubs`, `ray`, `vllm`, ...);
- what the core commands import when they start (the module-level import closure of the CLI, the server
  app, `registry` and `converters`) needs the core alone: no torch, no extra;
- `slow`: a fresh virtual environment with only `pip install <checkout>` (no extras, so no torch) runs
  `swiftreg convert`, `serve`, `token create`, `push` and `pull` over HTTP, and the pulled files are the
  pushed ones, byte for byte; then, with `[ml]` added, `scripts/gpu-check --cpu` runs on the installed package.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.server import free_port, stop

ROOT = Path(__file__).resolve().parent.parent

#: module (or package) -> the extras its imports may come from, besides the core. Longest prefix wins.
FEATURE_EXTRAS: dict[str, tuple[str, ...]] = {
    "converters.legacy_bin": ("ml",),
    "converters.finite": ("ml",),  # numpy speeds the NaN/Inf scan where installed; without it, pure Python
    "converters.peft_native": ("ml",),  # other PEFT tuner types, checked by peft itself (imported lazily)
    "registry.tensors": ("ml",),
    "registry.service.compare": ("ml",),  # delta norms need numpy; without it the compare page says so
    "registry.ops": ("ml",),
    "registry.jobs.revision_checks": ("ml",),
    "registry.demo": ("ml", "test"),
    "registry.hubs": ("hubs",),
    "registry.jobs.ray_backend": ("ray",),
    "registry.jobs.devices": ("ml",),  # torch only to see a CUDA device, imported where a device node exists
    "registry.xet": ("xet",),  # keyed BLAKE3, LZ4 frames, byte grouping (numpy); the server extra includes it
    "registry.store.s3": ("s3",),
    "registry.integrations.vllm": ("vllm",),
}
#: modules that never run in an environment swiftreg's distribution builds (their imports are in requirements/).
OUTSIDE = {"registry.interop.swift_side": "runs inside ms-swift's environment (requirements/oracle.txt)"}
#: the modules a core command starts from: their module-level import closure must need the core alone.
CORE_ENTRY_POINTS = ["registry", "registry.cli", "registry.cli.__main__", "registry.server.app", "converters"]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, set[str]]:
    """"core" and each extra -> the distributions it names (an extra naming swiftreg[other] includes other's)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = {"core": project["dependencies"], **project["optional-dependencies"]}

    def names(group: str) -> set[str]:
        out: set[str] = set()
        for requirement in raw[group]:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)  # type: ignore[union-attr]
            if _normalise(name) == "swiftreg":
                for extra in re.search(r"\[(.*)\]", requirement).group(1).split(","):  # type: ignore[union-attr]
                    out |= names(extra.strip())
            else:
                out.add(_normalise(name))
        return out

    return {group: names(group) for group in raw}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, module_level_only: bool) -> list[tuple[str, int, str]]:
    """(absolute dotted name, line, "module" | "lazy") of every import in a file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, where) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package
                    for _ in range(child.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module or ""
                found.append((base, child.lineno, where))
                found.extend((f"{base}.{alias.name}", child.lineno, where) for alias in child.names)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not module_level_only:
                    visit(child, "lazy")
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other, where)
            else:
                visit(child, where)

    visit(ast.parse(path.read_text(encoding="utf-8")), "module")
    return found


def _package_modules() -> dict[str, Path]:
    return {_module_name(p): p for package in ("registry", "converters", "migrations")
            for p in sorted((ROOT / package).rglob("*.py"))}


OWN = ("registry", "converters", "migrations")


@functools.cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions_of(top: str) -> set[str]:
    return {_normalise(d) for d in _installed().get(top, [])}


def _third_party(name: str) -> str | None:
    top = name.split(".")[0]
    if top in OWN or top in sys.stdlib_module_names or top == "__future__":
        return None
    return top


def test_every_import_is_declared_by_the_core_or_the_extra_of_its_feature() -> None:
    groups = declared()
    assert {"ml", "postgres", "server", "hubs", "ray", "vllm", "test"} <= set(groups), sorted(groups)
    offences = []
    for module, path in _package_modules().items():
        if module in OUTSIDE:
            continue
        feature = max((prefix for prefix in FEATURE_EXTRAS if module == prefix or module.startswith(prefix + ".")),
                      key=len, default=None)
        allowed = set(groups["core"]).union(*(groups[extra] for extra in FEATURE_EXTRAS.get(feature or "", ())))
        for name, line, where in _imports(path, module_level_only=False):
            top = _third_party(name)
            if top is None:
                continue
            distributions = _distributions_of(top) or {_normalise(top)}
            if not distributions & allowed:
                extras = ", ".join(FEATURE_EXTRAS.get(feature or "", ())) or "none"
                offences.append(f"{path.relative_to(ROOT)}:{line}: {where} import of {top} "
                                f"(distribution {', '.join(sorted(distributions))}) is declared by neither the core "
                                f"nor this module's extras ({extras})")
    assert not offences, "\n".join(sorted(set(offences)))


def test_what_the_core_commands_import_at_start_needs_the_core_alone() -> None:
    core = declared()["core"]
    known = _package_modules()
    seen: dict[str, str] = {}  # module -> the module that imported it first
    todo = [m for m in CORE_ENTRY_POINTS]
    for m in todo:
        seen[m] = "(entry point)"
    offences = []
    while todo:
        module = todo.pop()
        for name, line, _ in _imports(known[module], module_level_only=True):
            top = _third_party(name)
            if top is not None:
                distributions = _distributions_of(top) or {_normalise(top)}
                if not distributions & core:
                    offences.append(f"{known[module].relative_to(ROOT)}:{line} imports {top} at module level "
                                    f"(reached from {seen[module]})")
            elif name in known and name not in seen:
                seen[name] = module
                todo.append(name)
    assert not offences, "\n".join(sorted(set(offences)))


# ----- the real thing: a fresh virtual environment with the core only -------------------------------------

def _copy_source(destination: Path) -> Path:
    """What the distribution is built from, outside the checkout (a build writes build/ and *.egg-info)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, destination / name)
    for package in OWN:
        shutil.copytree(ROOT / package, destination / package, ignore=ignore)
    return destination


def _run(args: list[str | Path], env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_fresh_core_install_converts_serves_pushes_and_pulls(tmp_path: Path) -> None:
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("SWIFTREG_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    base_env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], base_env, tmp_path)
    python, swiftreg = venv / "bin" / "python", venv / "bin" / "swiftreg"
    _run([python, "-m", "pip", "install", "-q", _copy_source(tmp_path / "src")], base_env, tmp_path, timeout=900)

    missing = _run([python, "-c", "import importlib.util as u; print([m for m in ('torch', 'peft', 'transformers', "
                                  "'safetensors', 'psycopg', 'huggingface_hub', 'ray') if u.find_spec(m)])"],
                   base_env, tmp_path)
    assert missing.strip() == "[]", f"the core install pulled in an extra's package: {missing}"

    peft = write_peft_lora(tmp_path / "peft", seed=5)
    _run([swiftreg, "convert", peft, tmp_path / "swift", "--to", "swift"], base_env, tmp_path)
    assert (tmp_path / "swift" / "default" / "adapter_model.safetensors").is_file()

    server_env = {**base_env, "SWIFTREG_HOME": str(tmp_path / "server-home")}
    token = json.loads(_run([swiftreg, "token", "create", "--scope", "write", "--json"], server_env, tmp_path))["token"]
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([str(swiftreg), "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning"], env=server_env, cwd=tmp_path, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "swiftreg serve did not answer /healthz within 60 s"
            time.sleep(0.2)

        client_env = {**base_env, "SWIFTREG_URL": url, "SWIFTREG_TOKEN": token,
                      "SWIFTREG_HOME": str(tmp_path / "client-home")}
        _run([swiftreg, "push", tmp_path / "swift", "team/packaged", "--tag", "v1"], client_env, tmp_path)
        _run([swiftreg, "pull", "team/packaged@v1", "--format", "swift", "-o", tmp_path / "pulled"], client_env,
             tmp_path)
        _run([swiftreg, "pull", "team/packaged@v1", "--format", "peft", "-o", tmp_path / "pulled-peft"], client_env,
             tmp_path)
    finally:
        stop(process)
        log.close()
    assert _tree(tmp_path / "pulled") == _tree(tmp_path / "swift")
    # the server's conversion (on pull --format peft) is the one `swiftreg convert` makes here
    _run([swiftreg, "convert", tmp_path / "swift", tmp_path / "peft-again", "--to", "peft"], base_env, tmp_path)
    assert _tree(tmp_path / "pulled-peft") == _tree(tmp_path / "peft-again")

    # the same environment with the tensor extra: the GPU check's CPU run (issue 19) works from the package alone
    _run([python, "-m", "pip", "install", "-q", f"{tmp_path / 'src'}[ml]"], base_env, tmp_path, timeout=900)
    report = tmp_path / "gpu-check.json"
    checked = _run([python, ROOT / "scripts" / "gpu-check", "--cpu", "--no-tests", "--json", report], base_env,
                   tmp_path, timeout=900)
    assert checked.splitlines()[-1] == "gpu-check: ok", checked
    figures = json.loads(report.read_text())["bench"]
    assert figures["device"]["swiftreg"].startswith(str(venv)), figures["device"]  # the installed package ran
    assert figures["merge"]["swiftreg_report"]["passed"] is True
