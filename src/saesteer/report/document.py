"""The study's report: what it shows and in which order, written as Markdown, HTML and ``derived.json``.

Order: the headline table (the dev-chosen conditions against the baseline, paired differences) and the two
Pareto plots (safety gain vs capability loss, safety gain vs over-refusal); the findings; example completions
per condition side by side; setup tables; then the details (every condition's derived metrics, gate firing
rates, results by metric, the paper's numbers, the stage table).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json, atomic_write_text
from saesteer.errors import SaesteerError
from saesteer.report.derived import CAPABILITY_METRICS, Derived, derive
from saesteer.report.findings import (
    PAPER,
    Headline,
    default_headline,
    findings,
    fmt_pts,
    fmt_ratio,
    fmt_share,
)
from saesteer.report.render import Block, Section, fmt_seconds, to_html, to_markdown
from saesteer.report.results import METRIC_LABELS, NATS_METRICS, ResultRow, ResultsTable

FIRING = "gate_firing:"


@dataclass(frozen=True)
class Table:
    """A titled table of plain cells (a setup or detail table)."""

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    note: str = ""


@dataclass(frozen=True)
class StageTime:
    name: str
    seconds: float
    note: str = ""  # e.g. generation throughput


@dataclass(frozen=True)
class Example:
    """One test prompt and each condition's completion of it."""

    dataset: str
    prompt: str
    completions: Mapping[str, str]


@dataclass
class ReportData:
    """Everything a report shows."""

    table: ResultsTable
    conditions: Sequence[Any] | None = None  # the sweep grid (pairs conditional with unconditional conditions)
    title: str = "saesteer study: steering refusal with SAE features"
    headline: Headline | None = None
    setup: Sequence[Table] = ()
    details: Sequence[Table] = ()
    stages: Sequence[StageTime] = ()
    examples: Sequence[Example] = ()
    seeds: Mapping[str, Any] | None = None
    notes: Sequence[str] = ()
    plots: Mapping[str, str] = field(default_factory=dict)  # title -> path relative to the report
    capability_metrics: Sequence[str] = CAPABILITY_METRICS

    def derived(self) -> list[Derived]:
        return derive(self.table, self.conditions, capability_metrics=self.capability_metrics)


def fmt_cell(row: ResultRow | None) -> str:
    """``62.5% [55.1, 69.4] (n=320)``."""
    if row is None:
        return "not run"
    if row.n == 0:
        return "n/a (n=0)"
    if row.metric in NATS_METRICS:
        return f"{row.score:.4f} [{row.ci_lo:.4f}, {row.ci_hi:.4f}] nats (n={row.n})"
    return f"{100 * row.score:.1f}% [{100 * row.ci_lo:.1f}, {100 * row.ci_hi:.1f}] (n={row.n})"


def _table(t: Table) -> list[Block]:
    blocks: list[Block] = [("p", f"**{t.title}**")]
    if t.note:
        blocks.append(("p", t.note))
    return [*blocks, ("table", list(t.headers), [list(r) for r in t.rows])]


def headline_names(data: ReportData, derived: Sequence[Derived]) -> list[str]:
    h = data.headline or default_headline(derived)
    kinds = {d.condition: d.kind for d in derived}
    names = ["baseline", h.clamp, *[d.condition for d in derived if d.kind == "control"], h.gate]
    names += [d.condition for d in derived if d.kind == "direction"]
    return [n for n in dict.fromkeys(names) if n is not None and n in kinds]


def _headline(data: ReportData, derived: Sequence[Derived]) -> Section:
    by = {d.condition: d for d in derived}
    t = data.table
    headers = ["condition", "unsafe refusal", "safe refusal", "safety gain", "over-refusal", "capability loss",
               "KL (nats/token)"]  # fmt: skip
    rows = []
    for name in headline_names(data, derived):
        d = by[name]
        over = f"{fmt_pts(d.over_refusal_diff)}, {fmt_ratio(d.over_refusal)}" if d.over_refusal_diff else "n/a"
        rows.append([
            name, fmt_cell(t.get(name, "unsafe_refusal")), fmt_cell(t.get(name, "safe_refusal")),
            fmt_pts(d.safety_gain), over, fmt_pts(d.capability_loss),
            "-" if name == "baseline" else fmt_cell(t.get(name, "kl")),
        ])  # fmt: skip
    methods = sorted(
        {e.method for d in derived for e in (d.safety_gain, d.capability_loss) if e is not None} - {"reference"}
    )
    how = "chosen on dev prompts" if (data.headline and data.headline.dev) else "first in the grid"
    sec = Section(
        "Headline",
        [
            (
                "p",
                f"The refusal clamp and gate shown are {how}; differences are against the baseline on the same "
                f"test items, with 95% intervals ({'; '.join(methods) or 'n/a'}).",
            ),  # fmt: skip
            ("table", headers, rows),
        ],
    )
    sec.blocks += [("img", title, src, src) for title, src in data.plots.items() if "Safety gain vs" in title]
    return sec


def _examples(data: ReportData) -> Section | None:
    if not data.examples:
        return None
    sec = Section("Example completions")
    for ex in data.examples:
        sec.blocks.append(("p", f"**{ex.dataset}**: {ex.prompt}"))
        sec.blocks.append(("table", ["condition", "completion"], [[c, t] for c, t in ex.completions.items()]))
    return sec


def _derived_table(derived: Sequence[Derived]) -> Block:
    headers = ["condition", "kind", "safety gain", "gain, unpaired", "capability loss", "over-refusal",
               "ratio", "ASR drop", "gain kept"]  # fmt: skip
    rows = [
        [
            d.condition, d.kind, fmt_pts(d.safety_gain), fmt_pts(d.unpaired_gain), fmt_pts(d.capability_loss),
            fmt_pts(d.over_refusal_diff), fmt_ratio(d.over_refusal), fmt_pts(d.asr_drop),
            fmt_share(d.gain_kept) if d.gain_kept else "-",
        ]
        for d in derived
    ]  # fmt: skip
    return ("table", headers, rows)


def _firing(t: ResultsTable) -> Block | None:
    metrics = [m for m in t.metrics() if m.startswith(FIRING)]
    conds = [c for c in t.conditions() if any(t.get(c, m) for m in metrics)]
    if not metrics or not conds:
        return None
    headers = ["condition", *[m[len(FIRING) :] for m in metrics]]
    return ("table", headers, [[c, *[fmt_cell(t.get(c, m)) for m in metrics]] for c in conds])


def _metric_table(rows: Sequence[ResultRow]) -> Block:
    out = []
    for r in rows:
        cell = fmt_cell(r).rsplit(" (n=", 1)[0]
        out.append([r.condition, str(r.n), cell, r.interval, ", ".join(r.datasets) or "-", f"{r.seconds:.0f}"])
    return ("table", ["condition", "n", "score [95% CI]", "interval", "datasets", "seconds"], out)


def _paper(t: ResultsTable, names: Sequence[str]) -> Block:
    def pair(key: str) -> str:
        a, b = getattr(PAPER, key)
        return f"{a:.1f}% -> {b:.1f}%"

    spec = [("refusal on unsafe prompts", "unsafe_refusal", pair("unsafe_refusal")),
            ("refusal on safe prompts", "safe_refusal", "-"), ("MMLU", "mmlu", pair("mmlu")),
            ("GSM8K", "gsm8k", pair("gsm8k")), ("TruthfulQA MC2", "truthfulqa_mc2", pair("truthfulqa")),
            ("HumanEval", "humaneval", "-"), ("Crescendo attack success", "crescendo_asr", pair("multiturn_asr")),
            ("FRACTURED attack success", "fractured_asr", "-")]  # fmt: skip
    rows = [[label, paper, *[fmt_cell(t.get(n, m)) for n in names]] for label, m, paper in spec]
    return ("table", ["metric", f"paper ({PAPER.model}): baseline -> clamp", *names], rows)


def _details(data: ReportData, derived: Sequence[Derived]) -> Section:
    t = data.table
    sec = Section("Details")
    sec.blocks += [("p", "**Every condition against the baseline** (the unpaired column treats conditions as "
                         "independent samples, for comparison with the paired intervals)"), _derived_table(derived)]  # fmt: skip
    firing = _firing(t)
    if firing:
        sec.blocks += [("p", "**Gate firing rate** (share of each test set's prompts the gate steers)"), firing]
    for tab in data.details:
        sec.blocks += _table(tab)
    sec.blocks += [("p", "**Beside the paper** (O'Brien et al. 2024)"), _paper(t, headline_names(data, derived))]
    for metric in (m for m in t.metrics() if not m.startswith(FIRING)):
        label = METRIC_LABELS.get(metric, metric)
        sec.blocks += [("p", f"**{label}** (`{metric}`)"), _metric_table(t.by_metric(metric))]
    if data.stages:
        total = math.fsum(s.seconds for s in data.stages)
        rows = [[s.name, fmt_seconds(s.seconds), f"{100 * s.seconds / total:.0f}%" if total else "-", s.note]
                for s in data.stages]  # fmt: skip
        rows.append(["total", fmt_seconds(total), "100%" if total else "-", ""])
        sec.blocks += [("p", "**Wall time by stage**"), ("table", ["stage", "wall time", "share", "note"], rows)]
    if data.notes:
        sec.blocks.append(("list", list(data.notes)))
    return sec


def build_sections(data: ReportData) -> list[Section]:
    """The report's content, format-independent, in reading order."""
    derived = data.derived()
    claims = findings(data.table, derived, data.headline, data.seeds)
    sections = [_headline(data, derived), Section("Findings", [("list", claims)])]
    examples = _examples(data)
    if examples:
        sections.append(examples)
    if data.setup:
        sections.append(Section("Setup", [b for tab in data.setup for b in _table(tab)]))
    sections.append(_details(data, derived))
    return sections


def write_report(out_dir: str | os.PathLike[str], data: ReportData, plots: str = "auto") -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``derived.json`` and (``plots`` auto/on) ``plots/*.png|svg``.

    ``plots="auto"`` draws them when matplotlib is installed and notes their absence otherwise; ``"on"`` raises
    if it is missing; ``"off"`` draws none. Returns ``{name: path}`` of every file written.
    """
    if plots not in ("auto", "on", "off"):
        raise SaesteerError(f"plots={plots!r}: use auto, on or off")
    out = Path(out_dir)
    written: dict[str, Path] = {}
    derived = data.derived()
    links, notes = dict(data.plots), list(data.notes)
    if plots == "on" or (plots == "auto" and _matplotlib_available()):
        from saesteer.report.pareto import COSTS, pareto_points, plot_metric_bars, plot_pareto

        for cost, (_, title) in COSTS.items():
            if pareto_points(derived, cost):
                for p in plot_pareto(derived, out / "plots" / f"pareto_{cost}", cost):
                    written[p.name] = p
                links.setdefault(f"{title} (Pareto front ringed)", f"plots/pareto_{cost}.svg")
        metrics = [m for m in data.table.metrics() if not m.startswith(FIRING) and m not in NATS_METRICS]
        for metric, paths in plot_metric_bars(data.table, out / "plots", metrics).items():
            written.update({p.name: p for p in paths})
            links.setdefault(f"{METRIC_LABELS.get(metric, metric)} by condition", f"plots/{paths[-1].name}")
    elif plots == "auto":
        notes.append("Plots were skipped: matplotlib is not installed (pip install 'saesteer[plot]').")
    sections = build_sections(replace(data, plots=links, notes=notes))
    written["report.md"] = out / "report.md"
    atomic_write_text(written["report.md"], to_markdown(data.title, sections))
    written["report.html"] = out / "report.html"
    atomic_write_text(written["report.html"], to_html(data.title, sections))
    written["derived.json"] = out / "derived.json"
    atomic_write_json(written["derived.json"], [d.to_dict() for d in derived])
    return written


def _matplotlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None
