"""Plots of a sweep: safety gain against a cost (capability loss, over-refusal) with the Pareto front, and one
bar chart per metric.

matplotlib is an optional extra (``pip install 'saesteer[plot]'``); it is imported only when a plot is
drawn, with the non-interactive Agg backend, and a missing install raises a one-line :class:`SaesteerError`.
Every plot is written as PNG and SVG.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_bytes
from saesteer.errors import SaesteerError
from saesteer.report.derived import Derived, pareto_points
from saesteer.report.results import METRIC_LABELS, ResultsTable

KIND_STYLE = {  # kind -> (colour, marker, legend label)
    "baseline": ("#333333", "s", "baseline"),
    "refusal_feature": ("#d62728", "o", "refusal feature clamp"),
    "control": ("#7f7f7f", "v", "control feature clamp"),
    "conditional": ("#1f77b4", "D", "conditional clamp"),
    "direction": ("#2ca02c", "^", "diff-in-means direction"),
}
FORMATS = ("png", "svg")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, maximising ``gain`` and minimising ``loss`` in ``(gain, loss)``.

    A point dominates another when it is at least as good on both axes and better on one. Points with a NaN
    coordinate are never on the front; equal points are all on it. Indices are sorted by loss, then gain.
    """
    idx = [i for i, (g, c) in enumerate(points) if not (math.isnan(g) or math.isnan(c))]
    front = []
    for i in idx:
        gi, ci = points[i]
        dominated = any(
            (points[j][0] >= gi and points[j][1] <= ci) and (points[j][0] > gi or points[j][1] < ci) for j in idx
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise SaesteerError("plots need matplotlib; install it with: pip install 'saesteer[plot]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, stem: Path) -> list[Path]:
    """PNG (120 dpi) and SVG (text kept as text, fixed ids, no date: small and reproducible)."""
    import io

    import matplotlib

    out = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        kw: dict[str, Any] = {"dpi": 120} if fmt == "png" else {"metadata": {"Date": None}}
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "saesteer"}):
            fig.savefig(buf, format=fmt, bbox_inches="tight", **kw)
        path = stem.with_suffix("." + fmt)
        atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    return out


def _err(e: Any, scale: float) -> tuple[float, float]:
    """(minus, plus) error bar lengths of an Estimate, in plot units; 0 where unknown."""
    minus = (e.value - e.lo) * scale if math.isfinite(e.lo) else 0.0
    plus = (e.hi - e.value) * scale if math.isfinite(e.hi) else 0.0
    return (max(0.0, minus), max(0.0, plus))


COSTS = {  # cost attribute of Derived -> (x label, title)
    "capability_loss": (
        "capability loss (percentage points, baseline - steered; lower is better)",
        "Safety gain vs capability loss",
    ),
    "over_refusal_diff": (
        "over-refusal (points of safe-prompt refusal, steered - baseline; lower is better)",
        "Safety gain vs over-refusal",
    ),
}


def plot_pareto(
    derived: Sequence[Derived], out_stem: str | os.PathLike[str], cost: str = "capability_loss"
) -> list[Path]:
    """Safety gain (y) vs a cost (x: ``capability_loss`` or ``over_refusal_diff``), in percentage points.

    One labelled point per condition, 95% intervals as error bars, the Pareto front (most gain for the least
    cost) as a dashed line with its points ringed. Writes ``<out_stem>.png`` and ``.svg``; returns their paths.
    """
    if cost not in COSTS:
        raise SaesteerError(f"unknown cost {cost!r}; use one of {', '.join(COSTS)}")
    xlabel, title = COSTS[cost]
    pts = pareto_points(derived, cost)
    if not pts:
        raise SaesteerError(f"nothing to plot: no condition has both an unsafe-refusal result and {cost}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 5.5))
    coords = [(100 * d.safety_gain.value, 100 * getattr(d, cost).value) for d in pts]  # type: ignore[union-attr]
    front = set(pareto_front(coords))
    seen: set[str] = set()
    for i, d in enumerate(pts):
        colour, marker, label = KIND_STYLE.get(d.kind, ("#9467bd", "o", d.kind))
        gain, loss = d.safety_gain, getattr(d, cost)
        assert gain is not None and loss is not None
        xm, xp = _err(loss, 100)
        ym, yp = _err(gain, 100)
        ax.errorbar(
            [coords[i][1]], [coords[i][0]], xerr=[[xm], [xp]], yerr=[[ym], [yp]], fmt=marker, color=colour,
            ecolor=colour, elinewidth=0.8, capsize=2, markersize=7, alpha=0.9,
            label=None if label in seen else label,
        )  # fmt: skip
        seen.add(label)
        if i in front:
            ax.scatter([coords[i][1]], [coords[i][0]], s=220, facecolors="none", edgecolors="black", linewidths=1.0)
        ax.annotate(d.condition, (coords[i][1], coords[i][0]), textcoords="offset points", xytext=(6, 5), fontsize=7)
    order = sorted(front, key=lambda i: coords[i][1])
    if len(order) > 1:
        ax.plot([coords[i][1] for i in order], [coords[i][0] for i in order], "--", color="black", lw=0.9,
                label="Pareto front")  # fmt: skip
    elif order:
        ax.scatter([], [], s=220, facecolors="none", edgecolors="black", label="Pareto front")
    ax.axhline(0, color="#bbbbbb", lw=0.6)
    ax.axvline(0, color="#bbbbbb", lw=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("safety gain (points of unsafe-prompt refusal; higher is better)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.25)
    try:
        return _save(fig, Path(out_stem))
    finally:
        plt.close(fig)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "metric"


def plot_metric_bars(
    table: ResultsTable, out_dir: str | os.PathLike[str], metrics: Sequence[str] | None = None
) -> dict[str, list[Path]]:
    """One bar chart per metric (conditions on the x axis, score in percent, 95% intervals, n in the labels).

    Writes ``<out_dir>/bars_<metric>.png`` and ``.svg``; returns ``{metric: [paths]}``.
    """
    plt = _pyplot()
    out: dict[str, list[Path]] = {}
    for metric in metrics if metrics is not None else table.metrics():
        rows = [r for r in table.by_metric(metric) if r.n > 0]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2.0), 4.2))
        xs = list(range(len(rows)))
        vals = [100 * r.score for r in rows]
        err = [[100 * (r.score - r.ci_lo) for r in rows], [100 * (r.ci_hi - r.score) for r in rows]]
        colours = [KIND_STYLE.get(r.kind, ("#9467bd", "o", ""))[0] for r in rows]
        ax.bar(xs, vals, yerr=err, color=colours, capsize=3, alpha=0.85, error_kw={"elinewidth": 0.9})
        base = table.get("baseline", metric)
        if base is not None and base.n > 0:
            ax.axhline(100 * base.score, color="black", lw=0.8, ls="--", label="baseline")
            ax.legend(fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{r.condition} (n={r.n})" for r in rows], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("percent")
        ax.set_ylim(0, 105)
        ax.set_title(f"{METRIC_LABELS.get(metric, metric)} (95% CI)")
        ax.grid(True, axis="y", alpha=0.25)
        try:
            out[metric] = _save(fig, Path(out_dir) / f"bars_{_slug(metric)}")
        finally:
            plt.close(fig)
    return out
