"""The house rules, checked from the source: who may import whom, no cycles, small modules.

Every import counts, including those inside functions: a lazy import is still a
dependency a reader has to follow, and a cycle through one is still a cycle.
"""

from __future__ import annotations

import ast
import re
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


# ------------------------------------------------------------------ Dagster's public API only

REPO = PACKAGE.parent
COMPAT = "migration_assets.defs.compat"  # the one module that may use Dagster's internals
# Modules another branch is moving onto the compat module. Each entry must still be needed:
# the test fails once its module is clean, so the entry is removed with the last internal.
PENDING: dict[str, str] = {}
# Names without an underscore that are still Dagster's internals: the instance's storage
# objects (every method of theirs is) and the instance methods the compat module wraps.
INTERNAL_ATTRIBUTES = {
    "event_log_storage",
    "run_storage",
    "schedule_storage",
    "optimize_for_webserver",
    "report_run_failed",
    "add_backfill",
}
INTERNAL_MODULE = re.compile(r"\bdagster\._\w")  # `dagster._core…`, not `dagster.core…`
INTERNAL_PATH = re.compile(r"\bdagster\._[\w.]+")
SHIPPED_CONFIG = ("deploy", "workspace.yaml")  # YAML that names classes by module path


def _is_dagster(module: str) -> bool:
    return module.split(".")[0] == "dagster" or module.startswith("dagster_")


def _imports_dagster(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_is_dagster(a.name) for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and _is_dagster(node.module or ""):
            return True
    return False


def internal_uses(source: str) -> list[str]:
    """Dagster internals a module uses: `dagster._` imports (anywhere, also inside
    functions), strings that name a `dagster._` module (YAML, importlib), and in a module
    that imports Dagster: attributes with a leading underscore (not of `self`/`cls`),
    attributes replaced at run time (`setattr`); anywhere: INTERNAL_ATTRIBUTES."""
    tree = ast.parse(source)
    dagster_module = _imports_dagster(tree)
    return [
        f"line {getattr(node, 'lineno', '?')}: {use}"
        for node in ast.walk(tree)
        for use in _node_uses(node, dagster_module)
    ]


def _node_uses(node: ast.AST, dagster_module: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [f"import {a.name}" for a in node.names if INTERNAL_MODULE.match(a.name)]
    if isinstance(node, ast.ImportFrom) and _is_dagster(node.module or ""):
        names = [a.name for a in node.names]
        if INTERNAL_MODULE.match(node.module or "") or any(n.startswith("_") for n in names):
            return [f"from {node.module} import {', '.join(names)}"]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [f"names {path}" for path in INTERNAL_PATH.findall(node.value)]
    if isinstance(node, ast.Attribute) and node.attr in INTERNAL_ATTRIBUTES:
        return [f".{node.attr}"]
    if isinstance(node, ast.Attribute) and dagster_module and _private(node):
        return [ast.unparse(node)]
    if dagster_module and isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return [ast.unparse(node)] if node.func.id == "setattr" else []
    return []


def _private(node: ast.Attribute) -> bool:
    if not node.attr.startswith("_") or node.attr.startswith("__"):
        return False
    return not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})


def _shipped_config() -> list[Path]:
    found: list[Path] = []
    for name in SHIPPED_CONFIG:
        path = REPO / name
        found += sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
    return [p for p in found if p.is_file()]


def test_only_the_compat_module_uses_dagster_internals() -> None:
    """DESIGN.md: Dagster's public API only; what has none lives in `defs/compat.py`, each
    entry naming the public API it waits for. Modules listed in PENDING are allowed theirs
    only while they still have some."""
    wrong = []
    for name, path in sorted(_modules().items()):
        if name == COMPAT:
            continue
        uses = internal_uses(path.read_text())
        if name in PENDING:
            if not uses:
                wrong.append(f"{name} uses no Dagster internals any more: remove it from PENDING")
            continue
        wrong += [f"{name}, {use}" for use in uses]
    for path in _shipped_config():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if INTERNAL_MODULE.search(line):
                wrong.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not wrong, "Dagster internals outside the compat module:\n" + "\n".join(wrong)


def test_the_internals_finder_finds_each_kind() -> None:
    source = """
import os
import dagster as dg
from dagster._core.storage.tags import PARTITION_NAME_TAG
from dagster import _check

def f(instance: dg.DagsterInstance, storage: object) -> None:
    import dagster._core.utils
    yaml = "module: dagster._core.storage.noop_compute_log_manager"
    fine = "module: dagster.core.storage.noop_compute_log_manager"
    instance._run_storage.wipe()
    instance.event_log_storage.free_concurrency_slots_for_run("x")
    setattr(storage, "has_table", len)
    self._mine, cls._ours, instance.__class__, os.sep
"""
    found = sorted(use.split(": ", 1)[1] for use in internal_uses(source))
    assert found == sorted(
        [
            "from dagster._core.storage.tags import PARTITION_NAME_TAG",
            "from dagster import _check",
            "import dagster._core.utils",
            "names dagster._core.storage.noop_compute_log_manager",
            "instance._run_storage",
            ".event_log_storage",
            "setattr(storage, 'has_table', len)",
        ]
    ), found
    # outside a module that imports Dagster, a private attribute is someone else's business
    assert internal_uses("import os\nos._exit(0)\n") == []


def test_every_compat_entry_names_the_public_api_it_waits_for() -> None:
    """A workaround without the API that replaces it would never be removed."""
    path = _modules()[COMPAT]
    source = path.read_text()
    tree = ast.parse(source)
    missing = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
        if "# waits for: " not in (ast.get_source_segment(source, node) or "")
    ]
    assert not missing, f"compat functions without a '# waits for:' comment: {missing}"
    imported = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
    assert any(INTERNAL_MODULE.match(n.module or "") for n in imported), "nothing to wrap?"
