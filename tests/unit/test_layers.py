"""The project's packages import downwards only, and no module imports itself back through others.

Layers, lowest first: datamodules <- lightning_modules <- tracking <- callbacks <- runner <- entry points
(train.py, prepare.py, predict.py, scripts/, hydra_plugins/). Imports inside functions count: a lazy import
hides a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

LAYERS = ("datamodules", "lightning_modules", "tracking", "callbacks", "runner")
ENTRY_POINTS = ("train.py", "prepare.py", "predict.py", "scripts", "hydra_plugins")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, root: Path) -> set[str]:
    """The project modules that the file at ``path`` imports (``from a.b import c`` gives ``a.b.c`` when that
    is a module, else ``a.b``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in LAYERS:
                continue
            while name and not module_path(name, root):
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def module_path(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def layer(name: str) -> int:
    top = name.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else len(LAYERS)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Every project file's module name -> the project modules it imports."""
    files = [p for top in LAYERS for p in (root / top).rglob("*.py")]
    files += [
        p
        for entry in ENTRY_POINTS
        for p in ([root / entry] if entry.endswith(".py") else (root / entry).rglob("*.py"))
        if p.is_file()
    ]
    graph = {}
    for path in files:
        name = module_name(path, root)
        # a package's own __init__ is implied by importing any of its modules; not an edge
        graph[name] = {m for m in project_imports(path, root) if m != name and not name.startswith(m + ".")}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{importer} -> {imported}"
        for importer, targets in graph.items()
        for imported in targets
        if layer(imported) > layer(importer)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles between modules (each found once, as the path that closes it)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodule (re-exports in __init__)
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_layer_imports_a_higher_one():
    assert upward_imports(import_graph(REPO)) == []


def test_no_import_cycles():
    assert cycles(import_graph(REPO)) == []


@pytest.fixture
def planted_tree(tmp_path: Path) -> Path:
    """A small tree of the same layers with one upward import and one cycle planted."""
    for package in ("datamodules", "lightning_modules", "runner"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "datamodules" / "clips.py").write_text("def load():\n    from runner.loop import run\n")
    (tmp_path / "runner" / "loop.py").write_text("from runner.stage import fit\nrun = 1\n")
    (tmp_path / "runner" / "stage.py").write_text("from runner import loop\nfit = 1\n")
    (tmp_path / "lightning_modules" / "base.py").write_text("from datamodules.clips import load\n")
    return tmp_path


def test_the_checks_find_an_upward_import_and_a_cycle(planted_tree):
    graph = import_graph(planted_tree)
    assert upward_imports(graph) == ["datamodules.clips -> runner.loop"]
    assert cycles(graph) == [["runner.loop", "runner.stage", "runner.loop"]]
