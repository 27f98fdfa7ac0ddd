"""The package's import graph, read from the source with ast (nothing is imported).

No cycles, counting imports inside functions too (a lazy import only hides a cycle) but not those
under ``if TYPE_CHECKING:``; no private name (``_x``) of one module used by another; no module
named like a function of the public API (``import autoexp.status`` must not find the function).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import autoexp

ROOT = Path(autoexp.__file__).resolve().parent  # the installed package (sidecar/ inside it)


def modules() -> dict[str, Path]:
    found = {}
    files = [Path(d) / f for d, _, names in os.walk(ROOT, followlinks=True) for f in names if f.endswith(".py")]
    for path in sorted(files):  # a checkout's autoexp/sidecar is a symlink: followed
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(["autoexp", *parts])] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str]]:
    """(module imported, name taken from it or "") for every import outside TYPE_CHECKING blocks."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, "") for alias in node.names if alias.name.startswith("autoexp"))
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = f"{base}.{node.module}" if node.level and node.module else base if node.level else node.module
            if module and module.startswith("autoexp"):
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    found.append((sub, "") if sub in known else (module, alias.name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _ in imports(name, path, known) if target in known and target != name}
            for name, path in known.items()}


def test_the_graph_is_read():
    edges = graph()
    assert "autoexp.statefile" in edges["autoexp.experiment"]
    assert "autoexp.sidecar.poll" in edges["autoexp.sidecar.loop"]
    assert "autoexp.sidecar.logwatch" in edges["autoexp.sidecar.settings"]


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target):], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)


def test_no_private_name_is_used_across_modules():
    known = modules()
    used = []
    for name, path in known.items():
        for target, taken in imports(name, path, known):
            if taken.startswith("_") and not taken.startswith("__"):
                used.append(f"{name} imports {target}.{taken}")
        aliases = {alias.asname or alias.name.rpartition(".")[2]
                   for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
                   for alias in node.names if f"{node.module}.{alias.name}" in known or node.level}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__"):
                used.append(f"{name} uses {node.value.id}.{node.attr}")
    assert used == []


def test_no_module_shadows_an_api_function():
    names = {name.rpartition(".")[2] for name in modules() if name.count(".") == 1}
    api = {name for name in autoexp.__all__ if callable(getattr(autoexp, name))
           and not isinstance(getattr(autoexp, name), type)}
    assert names & api == set()
