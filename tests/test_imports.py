"""Every module imports on its own, and no first-party import statement closes a circle.

A circular import fails or not depending on which module of the circle is imported first, so
each module gets its own fresh interpreter; and a lazy import inside a function hides a circle
until that function runs, so the static walk reads every import statement, wherever it is.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGES = ("edge_convnext", "edge_convnext.targets", "edge_convnext.quantize")
IMPORT_TIMEOUT_S = 120


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


@cache
def first_party_modules() -> dict[str, Module]:
    """The installed modules of :data:`PACKAGES`, found without importing any of them.

    ``targets/`` and ``quantize/`` install as ``edge_convnext.targets`` / ``.quantize``
    (pyproject's ``package-dir``), so the installed package's search path says where they are.
    """
    modules = {}
    for package in PACKAGES:
        locations = importlib.util.find_spec(package).submodule_search_locations
        init = Path(locations[0]) / "__init__.py"
        modules[package] = Module(package, init, True)
        for info in pkgutil.iter_modules(locations):
            if not info.ispkg:
                path = Path(info.module_finder.path) / f"{info.name}.py"
                modules[f"{package}.{info.name}"] = Module(f"{package}.{info.name}", path, False)
    return modules


def _command(name: str) -> list[str]:
    package, _, leaf = name.rpartition(".")
    if leaf == "__main__":  # runs the CLI when imported: run it the way it is meant to be run
        return [sys.executable, "-m", package, "--help"]
    return [sys.executable, "-c", f"import {name}"]


def _import_alone(name: str) -> tuple[str, int, str]:
    result = subprocess.run(
        _command(name),
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.abspath(os.sep)),  # not the repo: the installed package
        timeout=IMPORT_TIMEOUT_S,
    )
    return name, result.returncode, result.stderr


class _Results(dict):
    def __repr__(self) -> str:  # pytest prints fixture values in tracebacks: keep it short
        return f"<import results of {len(self)} modules>"


@pytest.fixture(scope="module")
def import_results() -> dict[str, tuple[int, str]]:
    """``{module: (exit status, stderr)}``, one fresh interpreter each, run side by side."""
    names = sorted(first_party_modules())
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return _Results((name, (code, err)) for name, code, err in pool.map(_import_alone, names))


@pytest.mark.parametrize("name", sorted(first_party_modules()))
def test_module_imports_in_a_fresh_interpreter(name, import_results):
    code, stderr = import_results[name]
    assert code == 0, f"`{' '.join(_command(name)[1:])}` failed:\n{stderr[-3000:]}"


# --- the static graph ----------------------------------------------------------------------------


def _package_of(module: Module) -> str:
    return module.name if module.is_package else module.name.rpartition(".")[0]


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(module).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(name: str, known: dict[str, Module]) -> str | None:
    """The most specific first-party module ``name`` is, or is inside (``pkg.attr`` -> ``pkg``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _imported_names(module: Module, node: ast.AST) -> list[str]:
    """Dotted names one AST node imports: ``import``, ``from ... import`` and
    ``importlib.import_module("literal")`` / ``__import__("literal")``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        source = _absolute(module, node)
        return [f"{source}.{alias.name}" for alias in node.names if alias.name != "*"] or [source]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        function = node.func
        called = getattr(function, "attr", None) or getattr(function, "id", "")
        literal = node.args[0].value
        if called in ("import_module", "__import__") and isinstance(literal, str):
            return [] if literal.startswith(".") else [literal]
    return []


@cache
def import_graph() -> dict[str, dict[str, str]]:
    """``{module: {imported module: "file:line" of the first such statement}}``.

    Every import statement counts, at the top of a module, inside a function or under
    ``TYPE_CHECKING``; a submodule's implicit import of its parent package does not.
    """
    known = first_party_modules()
    graph: dict[str, dict[str, str]] = {name: {} for name in known}
    for name, module in known.items():
        tree = ast.parse(module.path.read_text(), filename=str(module.path))
        for node in ast.walk(tree):
            for imported in _imported_names(module, node):
                target = _owner(imported, known)
                if target is not None and target != name:
                    graph[name].setdefault(target, f"{module.path}:{node.lineno}")
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_within(graph, set(component)) for component in components]


def _cycle_within(graph: dict[str, dict[str, str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself (breadth first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(set(graph[node]) & component):
                if successor == start:
                    return paths[node] + [start]
                if successor not in paths:
                    paths[successor] = paths[node] + [successor]
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def describe(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    steps = [f"  {a} -> {b}  ({graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_cycle_finder_finds_a_lazy_circle_and_only_circles():
    graph = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:9"}, "c": {"a": "c.py:3"}, "d": {"a": "d:1"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert "b -> c  (b.py:9)" in describe(cycles(graph)[0], graph)
    assert cycles({"a": {"b": "x"}, "b": {}}) == []


def test_import_statements_are_read_everywhere(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "import edge_convnext.audit\n"
        "from . import data, errors\n"
        "from .results import AuditResult\n"
        "def later():\n"
        "    from .report import write_report\n"
        "    importlib.import_module('edge_convnext.metrics')\n"
    )
    module = Module("edge_convnext.mod", source, False)
    tree = ast.parse(source.read_text())
    known = first_party_modules()
    found = {
        _owner(name, known) for node in ast.walk(tree) for name in _imported_names(module, node)
    }
    assert found == {
        f"edge_convnext.{m}" for m in ("audit", "data", "errors", "results", "report", "metrics")
    }


def test_first_party_imports_have_no_cycle():
    graph = import_graph()
    assert {"edge_convnext.audit", "edge_convnext.targets", "edge_convnext.quantize.qat"} <= set(
        graph
    )
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph) for c in found)
