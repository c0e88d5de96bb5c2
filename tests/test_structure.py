"""The package's import structure: no cycles (imports inside functions included) and no layer
importing a higher one (docs/architecture.md, "Layers")."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dndbench"

#: each top-level part of the package and the parts it may import (besides itself)
LOWER = {
    "errors": set(),
    "catalog": set(),
    "registry": {"errors", "catalog"},
    "cache": {"errors"},
    "hooks": {"errors"},
    "downloads": {"errors"},
    "training_checkpoint": {"cache", "errors"},
    "activations": {"cache", "errors", "hooks"},
    "neurons": {"cache", "errors"},
    "geometry": set(),
    "models": {"cache", "errors", "registry", "catalog", "hooks", "downloads", "geometry"},
    "probes": {"cache", "errors", "registry", "catalog", "downloads"},
    "backends": {"activations", "cache", "errors", "registry", "catalog", "hooks"},
    "context": {"activations", "backends", "cache", "errors", "registry", "catalog"},
    "image_activations": {"activations", "backends", "cache", "errors", "registry", "catalog",
                          "hooks"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every package module ``name`` imports anywhere (functions included, TYPE_CHECKING not)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)

    Visitor().visit(ast.parse(path.read_text()))
    resolved = set()
    for target in found:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_cycle_between_top_level_parts() -> None:
    parts: dict[str, set[str]] = defaultdict(set)
    for module, targets in _graph().items():
        for target in targets:
            if _part(module) != _part(target):
                parts[_part(module)].add(_part(target))
    assert _cycles(parts) == []


@pytest.mark.parametrize("part", sorted(LOWER))
def test_lower_layers_import_only_lower_layers(part: str) -> None:
    upward = {f"{m} -> {t}" for m, targets in _graph().items() if _part(m) == part
              for t in targets if _part(t) != part and _part(t) not in LOWER[part]}
    assert upward == set()


def test_no_two_package_files_share_a_name_unless_same_role() -> None:
    same_role = {"__init__.py", "base.py", "config.py"}  # package markers, interfaces, method configs
    seen: dict[str, list[str]] = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        if path.name not in same_role:
            seen[path.name].append(str(path.relative_to(PACKAGE)))
    assert {n: p for n, p in seen.items() if len(p) > 1} == {}
