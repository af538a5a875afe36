"""The shape of the code, checked by machine: the README's Layout section, the import graph, the layering.

- README.md's layout block is exactly `scripts/layout.py`'s output (it cannot drift from the modules);
- no import cycle among registry's modules (module-level imports; imports inside functions and under
  TYPE_CHECKING are not followed, since they do not run at import time);
- no module outside registry/service/ reaches a private name of the service;
- converters/ imports nothing from registry, and no torch at import time.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_layout_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("layout_script", ROOT / "scripts" / "layout.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# ----- the module graph ------------------------------------------------------------------------------------

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    """Every module of `package` (a top-level folder of the checkout) by dotted name."""
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def module_level_imports(path: Path) -> list[tuple[ast.Import | ast.ImportFrom, int]]:
    """The import statements that run when the module is imported, with their line numbers."""
    found: list[tuple[ast.Import | ast.ImportFrom, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, child.lineno))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                if isinstance(child, ast.ClassDef):
                    visit(child)  # a class body runs at import time
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
            else:
                visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def imported_names(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names one import statement in module `name` imports (submodules of `from x import y` included)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph(package: str) -> dict[str, dict[str, int]]:
    """module -> {module of the same package it imports at module level: line}."""
    known = modules(package)
    graph: dict[str, dict[str, int]] = {name: {} for name in known}
    for name, path in known.items():
        for node, line in module_level_imports(path):
            for target in imported_names(name, path, node):
                if target in known and target != name:
                    graph[name].setdefault(target, line)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
    return "import cycle: " + "; ".join(steps)


# ----- tests -----------------------------------------------------------------------------------------------

def test_the_readme_layout_is_the_generated_one() -> None:
    layout = _load_layout_script()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert layout.readme_block(readme) == layout.layout(), (
        "README.md's Layout section differs from the modules' docstrings: run `python scripts/layout.py --write`")


def test_the_cycle_finder_names_a_cycle() -> None:
    graph = {"a": {"b": 3}, "b": {"c": 5}, "c": {"a": 7}, "d": {}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert describe(["a", "b", "c", "a"], graph) == "import cycle: a (line 3) -> b; b (line 5) -> c; c (line 7) -> a"
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycle_among_registry_modules() -> None:
    graph = import_graph("registry")
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph)


PRIVATE_CALL = re.compile(r"\._(read|write|ready)\(")


def test_nothing_outside_the_service_uses_its_private_names() -> None:
    offences = []
    service = ROOT / "registry" / "service"
    for folder in ("registry", "converters", "tests", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_relative_to(service) or path == Path(__file__).resolve():
                continue
            text = path.read_text(encoding="utf-8")
            where = path.relative_to(ROOT)
            for number, line in enumerate(text.splitlines(), 1):
                if PRIVATE_CALL.search(line):
                    offences.append(f"{where}:{number}: {line.strip()}")
            name = module_name(path) if folder in ("registry", "converters") else ""
            for node in ast.walk(ast.parse(text)):
                if not isinstance(node, ast.ImportFrom):
                    continue
                targets = imported_names(name, path, node) if node.level else [node.module or ""]
                if not any(t == "registry.service" or t.startswith("registry.service.") for t in targets[:1]):
                    continue
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private or any(part.startswith("_") for part in targets[0].split(".")):
                    named = ", ".join(private) or targets[0]
                    offences.append(f"{where}:{node.lineno}: imports {named} from the service")
    assert not offences, "private names of registry.service used outside it:\n" + "\n".join(offences)


def test_converters_import_nothing_from_registry_and_no_torch_at_module_level() -> None:
    offences = []
    for name, path in modules("converters").items():
        for node, line in module_level_imports(path):
            roots = {t.split(".")[0] for t in imported_names(name, path, node)}
            for bad in sorted(roots & {"registry", "torch", "peft", "transformers"}):
                offences.append(f"{path.relative_to(ROOT)}:{line}: imports {bad}")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                    t.split(".")[0] == "registry" for t in imported_names(name, path, node)):
                offences.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports registry (even lazily)")
    assert not offences, "\n".join(sorted(set(offences)))


def test_importing_every_converters_module_loads_no_torch() -> None:
    names = sorted(modules("converters"))
    code = ("import sys\n" + "".join(f"import {n}\n" for n in names)
            + "heavy = [m for m in ('torch', 'peft', 'transformers', 'registry') if m in sys.modules]\n"
            + "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
