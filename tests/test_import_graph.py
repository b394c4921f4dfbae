"""The package stack as documented in docs/design.md: no import cycles, no upward imports."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "reaudio"
PACKAGES = ("engine", "models", "export", "training")
#: Which top-level packages each may import (engine ◀─ models ◀─ export ◀─ training).
ALLOWED = {
    "engine": {"engine"},
    "models": {"engine", "models"},
    "export": {"engine", "models", "export"},
    "training": {"engine", "models", "export", "training"},
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


def _graph() -> dict[str, set[str]]:
    """Module → modules it imports (at the top or inside functions), among ours."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            deps.update(c for c in candidates if c in mods and c != name)
        graph[name] = deps
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
