"""The package stack as documented in docs/design.md: no import cycles, no upward imports."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "reaudio"
PACKAGES = ("engine", "models", "export", "training", "serve")
#: Which top-level packages each may import (engine ◀─ models ◀─ export ◀─ training; engine ◀─ serve).
ALLOWED = {
    "engine": {"engine"},
    "models": {"engine", "models"},
    "export": {"engine", "models", "export"},
    "training": {"engine", "models", "export", "training"},
    "serve": {"engine", "serve"},
}
#: Inside the engine, parts below the pipeline never import the jobs, the planner or the pipeline.
ENGINE_LOWER = ("audio", "bundle", "denoising", "retrieval", "stages")
ENGINE_UPPER = ("jobs", "pipeline", "planning", "cli")


def _modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in (SRC / package).rglob("*.py"):
            parts = [p for p in path.relative_to(SRC / package).with_suffix("").parts if p != "__init__"]
            mods[".".join(["reaudio", package, *parts])] = path
    return mods


_DYNAMIC = ("import_module", "__import__")


def _imports_of(tree: ast.AST, package: list[str], modules=()) -> tuple[set[str], list[int]]:
    """Modules a parsed file imports — statements at any depth and ``import_module("…")`` /
    ``__import__("…")`` calls with a literal name — and the lines of such calls whose name is not a
    literal (which no reader could follow)."""
    found: set[str] = set()
    dynamic: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import module` imports the module (pkg's __init__ ran before any of its
            # modules could); the package itself counts only for a name that is not a module.
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _DYNAMIC and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    found.add(first.value)
                else:
                    dynamic.append(node.lineno)
    return found, dynamic


def _parsed() -> dict[str, tuple[Path, ast.AST]]:
    return {name: (path, ast.parse(path.read_text(encoding="utf-8"))) for name, path in _modules().items()}


def _graph() -> dict[str, set[str]]:
    """Module → modules it imports (at the top, inside functions, or by ``import_module``), among ours."""
    parsed = _parsed()
    graph: dict[str, set[str]] = {}
    for name, (path, tree) in parsed.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found, _ = _imports_of(tree, package, parsed)
        graph[name] = {c for c in found if c in parsed and c != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_packages_import_only_downwards():
    wrong = [
        f"{module} imports {dep}"
        for module, deps in _graph().items()
        for dep in deps
        if dep.split(".")[1] not in ALLOWED[module.split(".")[1]]
    ]
    assert wrong == []


def test_engine_parts_below_the_pipeline_do_not_import_it_or_the_jobs():
    wrong = [
        f"{module} imports {dep}"
        for module, deps in _graph().items()
        if module.split(".")[1] == "engine" and len(module.split(".")) > 3 and module.split(".")[2] in ENGINE_LOWER
        for dep in deps
        if dep.startswith("reaudio.engine.") and dep.split(".")[2] in ENGINE_UPPER
    ]
    assert wrong == []


def test_imports_by_name_are_edges_too():
    snippet = ast.parse(
        "import importlib\n"
        "def f():\n"
        "    return importlib.import_module('reaudio.training.commands')\n"
        "def g(name):\n"
        "    from importlib import import_module\n"
        "    return import_module(name), __import__('reaudio.export.bundle')\n"
    )
    found, dynamic = _imports_of(snippet, ["reaudio", "engine"], _modules())
    assert {"reaudio.training.commands", "reaudio.export.bundle"} <= found
    assert dynamic == [6]
    # The engine ↔ training circle of the old console script is what the graph would now show.
    assert _cycles({"reaudio.engine.cli": {"reaudio.training.cli"}, "reaudio.training.cli": {"reaudio.engine.cli"}})


def test_the_engine_names_no_module_it_cannot_see():
    """The engine reaches the packages above it only through entry points (reaudio.engine.plugins)."""
    unreadable = [
        f"{path}:{line}"
        for name, (path, tree) in _parsed().items()
        if name.startswith("reaudio.engine")
        for line in _imports_of(tree, name.split("."), ())[1]
    ]
    assert unreadable == []


def test_plug_ins_are_declared_by_the_packages_above_the_engine():
    import tomllib

    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    groups = project["project"]["entry-points"]
    assert set(groups) == {"reaudio.commands", "reaudio.default_model"}
    modules = _modules()
    for group in groups.values():
        for target in group.values():
            module = target.split(":")[0]
            assert module in modules, target
            assert module.split(".")[1] in {"export", "training", "serve"}, (
                f"{target}: only packages above the engine plug in"
            )
