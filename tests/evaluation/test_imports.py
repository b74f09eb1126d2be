"""The evaluation package imports without cycles, and never guards an import of its own code."""

from __future__ import annotations

import ast
from pathlib import Path

import saesteer.evaluation

PKG = Path(saesteer.evaluation.__file__).parent


def imports_of(tree: ast.AST) -> list[str]:
    """Every saesteer module imported anywhere under ``tree`` (lazy imports count), with ``from`` names."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("saesteer"):
            out += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("saesteer")]
    return out


def graph() -> dict[str, set[str]]:
    mods = {f"saesteer.evaluation.{p.stem}": p for p in PKG.glob("*.py") if p.stem != "__init__"}
    return {m: {t for t in imports_of(ast.parse(p.read_text())) if t in mods and t != m} for m, p in mods.items()}


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    assert "saesteer.evaluation.benchdata" in g and g["saesteer.evaluation.capability"]


def test_no_guarded_internal_imports() -> None:
    for path in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Try):
                guarded = [t for stmt in node.body for t in imports_of(stmt)]
                assert not guarded, f"{path.name}: import of {guarded[0]} inside try/except"
