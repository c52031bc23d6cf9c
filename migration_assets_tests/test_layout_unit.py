"""The house rules, checked from the source: who may import whom, no cycles, small modules.

Every import counts, including those inside functions: a lazy import is still a
dependency a reader has to follow, and a cycle through one is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "migration_assets"
MAX_LINES = 400

# layer -> what it may import (besides itself and the standard library / third parties)
ALLOWED: dict[str, set[str]] = {
    "db": set(),
    "settings": {"db"},
    "plan": {"db"},
    "planner": {"db", "plan"},
    "report": set(),
    "defs": {"db", "plan", "settings", "report", "version"},
    "definitions": {"defs", "engine", "plan", "settings", "db"},
    "engine": {"defs", "db", "plan", "settings"},
    "devstack": {"db"},
    "cli": {
        "engine",
        "defs",
        "db",
        "plan",
        "planner",
        "settings",
        "report",
        "devstack",
        "version",
    },
    "version": set(),  # the package's __init__: its version, nothing else
    "private": set(),  # owner-only files and directories: every layer writes through it
}
for _rules in ALLOWED.values():
    if _rules is not ALLOWED["private"]:
        _rules.add("private")
FORBIDDEN_THIRD_PARTY = {"db": {"dagster"}}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _internal_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {
            imported
            for imported in _imports(path, name)
            if imported in modules and imported != name and imported != "migration_assets"
        }
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "version"
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def test_every_import_respects_the_layers() -> None:
    wrong = []
    for module, imported in _internal_graph().items():
        layer = _layer(module)
        allowed = ALLOWED.get(layer)
        assert allowed is not None, f"{module}: layer {layer} has no rule in this test"
        for target in imported:
            target_layer = _layer(target)
            if target_layer != layer and target_layer not in allowed:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_db_code_knows_nothing_of_dagster() -> None:
    modules = _modules()
    wrong = [
        f"{name} imports {imp}"
        for name, path in modules.items()
        if _layer(name) in FORBIDDEN_THIRD_PARTY
        for imp in _imports(path, name)
        if imp.split(".")[0] in FORBIDDEN_THIRD_PARTY[_layer(name)]
    ]
    assert not wrong, wrong


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_there_are_no_import_cycles() -> None:
    assert _cycles(_internal_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_too_long_to_read() -> None:
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_cli_and_the_worker_pool_load_without_dagster() -> None:
    """`migrate` starts its workers before it imports Dagster (about a second), so their
    imports overlap its own; Dagster imported when these modules load would undo that."""
    probe = (
        "import sys, migration_assets.cli, migration_assets.engine.local; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]", loaded
