"""Pareto front on constructed points; plots written as PNG and SVG; a clear error without matplotlib."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from saesteer.errors import SaesteerError
from saesteer.report.derived import derive
from saesteer.report.pareto import pareto_front, plot_metric_bars, plot_pareto
from tests.report.helpers import make_table


def test_front_keeps_only_non_dominated_points() -> None:
    # (gain, loss): maximise gain, minimise loss
    pts = [
        (0.0, 0.0),  # 0 front: more gain than 7, less loss than the others
        (0.2, 0.05),  # 1 front
        (0.15, 0.10),  # 2 dominated by 1
        (0.4, 0.30),  # 3 front (most gain)
        (0.4, 0.35),  # 4 dominated by 3 (same gain, more loss)
        (0.3, 0.05),  # 5 front, dominates 1
        (math.nan, 0.0),  # 6 unknown: never on the front
        (-0.1, -0.01),  # 7 least loss of all -> front
    ]
    assert pareto_front(pts) == [7, 0, 5, 3]
    assert 1 not in pareto_front(pts)
    assert pareto_front([(0.1, 0.1), (0.1, 0.1)]) == [0, 1]  # equal points do not dominate each other
    assert pareto_front([]) == []


def test_front_on_random_points_matches_definition() -> None:
    import random

    rng = random.Random(3)
    pts = [(rng.random(), rng.random()) for _ in range(60)]
    front = set(pareto_front(pts))
    for i, (g, c) in enumerate(pts):
        dominated = any(g2 >= g and c2 <= c and (g2, c2) != (g, c) for g2, c2 in pts)
        assert (i in front) == (not dominated)


def test_plots_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    table, conds = make_table()
    paths = plot_pareto(derive(table, conds), tmp_path / "plots" / "pareto")
    assert [p.name for p in paths] == ["pareto.png", "pareto.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text()
    assert "<svg" in svg and "conditional clamp f=10 c=8" in svg  # labels kept as text
    bars = plot_metric_bars(table, tmp_path / "plots", metrics=["mmlu", "unsafe_refusal", "absent"])
    assert sorted(bars) == ["mmlu", "unsafe_refusal"]
    for files in bars.values():
        assert files[0].read_bytes()[:4] == b"\x89PNG" and files[1].suffix == ".svg"


def test_pareto_needs_points(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(SaesteerError, match="nothing to plot"):
        plot_pareto([], tmp_path / "p")


def test_missing_matplotlib_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table, conds = make_table()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(SaesteerError, match=r"pip install 'saesteer\[plot\]'"):
        plot_pareto(derive(table, conds), tmp_path / "p")
    assert not list(tmp_path.iterdir())
