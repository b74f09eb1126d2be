"""The package's import graph: no cycles between modules, and nothing below the CLI imports it.

Edges come from every ``import`` statement in a module, lazy ones inside functions included: a lazy
import hides a cycle from the interpreter, not from the reader. ``from pkg import name`` points at
``pkg.name`` when that is a module, else at ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> saesteer modules it imports."""
    files = {_module_name(p): p for p in (SRC / "saesteer").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        edges: set[str] = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            edges.update(n for n in names if n in files and n != mod)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_library_never_imports_the_cli() -> None:
    bad = {m: sorted(e) for m, e in import_graph().items() if not m.startswith("saesteer.cli")}
    bad = {m: [e for e in es if e.startswith("saesteer.cli")] for m, es in bad.items()}
    assert not {m: es for m, es in bad.items() if es}


# the packages bottom-up: each may import only those before it (the README's layout table, in this order)
LAYERS = [
    ("errors", "config", "stages", "machine"),
    ("model",),
    ("activations",),
    ("sae",),
    ("steering",),
    ("evaluation",),
    ("gating", "report"),
    ("features",),
    ("study",),
    ("app",),
    ("cli",),
]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_packages_import_only_lower_layers() -> None:
    level = {pkg: i for i, group in enumerate(LAYERS) for pkg in group}
    upward = sorted(
        f"{m} -> {e}"
        for m, edges in import_graph().items()
        for e in edges
        if _package(m) in level and _package(e) in level and level[_package(e)] > level[_package(m)]
    )
    assert not upward, "imports from a higher layer: " + "; ".join(upward)


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in import_graph()} - {""}
    assert packages <= {pkg for group in LAYERS for pkg in group}
