"""The study report as Markdown and as one self-contained HTML file (inline CSS, no scripts, no CDN).

:func:`write_report` draws the plots (when matplotlib is installed), then writes ``report.md``,
``report.html`` and ``derived.json`` into a folder; the reports link the plots by relative paths
(``plots/pareto.svg``). Sections: setup (model, SAE, features), findings (computed from the data, see
:mod:`saesteer.report.findings`), a summary beside the paper's numbers, plots, derived metrics per
condition, one table per metric (condition, n, score, 95% CI), and the wall time of each stage.

Both formats come from one list of :class:`Section` blocks, so they always carry the same content.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json, atomic_write_text
from saesteer.errors import SaesteerError
from saesteer.report.derived import CAPABILITY_METRICS, Derived, derive, goal_met
from saesteer.report.findings import (
    PAPER,
    best_conditional,
    findings,
    fmt_pts,
    fmt_ratio,
    fmt_share,
    headline,
    trade_off_verdict,
)
from saesteer.report.results import METRIC_LABELS, ResultRow, ResultsTable

Block = tuple[Any, ...]  # ("p", text) | ("table", headers, rows) | ("img", alt, src, link) | ("list", items)


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class ReportData:
    """Everything a report shows; the caller gives the info dicts and stage times."""

    table: ResultsTable
    conditions: Sequence[Any] | None = None  # the sweep grid (pairs conditional with unconditional conditions)
    model_info: Mapping[str, Any] = field(default_factory=dict)
    sae_info: Mapping[str, Any] = field(default_factory=dict)
    feature_info: Mapping[str, Any] = field(default_factory=dict)
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    plots: Mapping[str, str] = field(default_factory=dict)  # title -> path relative to the report
    title: str = "saesteer study: steering refusal with SAE features"
    notes: Sequence[str] = ()
    capability_metrics: Sequence[str] = CAPABILITY_METRICS

    def derived(self) -> list[Derived]:
        return derive(self.table, self.conditions, capability_metrics=self.capability_metrics)


def fmt_cell(row: ResultRow | None) -> str:
    """``62.5% [55.1, 69.4] (n=320)``."""
    if row is None:
        return "not run"
    if row.n == 0:
        return "n/a (n=0)"
    return f"{100 * row.score:.1f}% [{100 * row.ci_lo:.1f}, {100 * row.ci_hi:.1f}] (n={row.n})"


def fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "n/a"
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


def _kv(info: Mapping[str, Any]) -> Block:
    """A field/value table; a dict of scalars is spread over ``field.key`` rows."""
    rows: list[list[str]] = []
    for k, v in info.items():
        if isinstance(v, dict) and v and all(not isinstance(x, (dict, list)) for x in v.values()):
            rows += [[f"{k}.{sub}", _value_text(x)] for sub, x in v.items()]
        else:
            rows.append([str(k), _value_text(v)])
    return ("table", ["field", "value"], rows)


def _summary(data: ReportData, derived: Sequence[Derived]) -> Block:
    t = data.table
    h = headline(derived)
    c = best_conditional(derived)
    dirs = [d for d in derived if d.kind == "direction" and d.safety_gain is not None]
    dr = max(dirs, key=lambda d: d.safety_gain.value if d.safety_gain else -math.inf) if dirs else None
    ctrl = [d for d in derived if d.kind == "control" and d.capability_loss is not None]
    cw = max(ctrl, key=lambda d: d.capability_loss.value if d.capability_loss else -math.inf) if ctrl else None
    picked = [("baseline", None)] + [(d.condition, d) for d in (h, c, dr, cw) if d is not None]
    headers = ["metric", f"paper ({PAPER.model}): baseline -> refusal clamp"] + [f"ours: {name}" for name, _ in picked]

    def pair(key: str) -> str:
        a, b = getattr(PAPER, key)
        return f"{a:.1f}% -> {b:.1f}%"

    def cells(metric: str) -> list[str]:
        return [fmt_cell(t.get(name, metric)) for name, _ in picked]

    over = ["ratio x1 (reference)"] + [fmt_ratio(d.over_refusal) if d else "n/a" for _, d in picked[1:]]
    rows = [
        ["refusal on unsafe prompts", pair("unsafe_refusal"), *cells("unsafe_refusal")],
        ["refusal on safe prompts", "-", *cells("safe_refusal")],
        ["over-refusal ratio (safe, steered / baseline)", f"x{PAPER.over_refusal}", *over],
        ["MMLU", pair("mmlu"), *cells("mmlu")],
        ["GSM8K", pair("gsm8k"), *cells("gsm8k")],
        ["TruthfulQA MC2 (paper: TruthfulQA)", pair("truthfulqa"), *cells("truthfulqa_mc2")],
        ["TruthfulQA MC1", "-", *cells("truthfulqa_mc1")],
        ["multi-turn attack success (paper: Crescendo)", pair("multiturn_asr"), *cells("multiturn_asr")],
    ]
    return ("table", headers, rows)


def _derived_table(derived: Sequence[Derived]) -> Block:
    headers = ["condition", "kind", "safety gain", "capability loss", "over-refusal", "ASR drop", "gain kept", "goal"]
    rows = []
    for d in derived:
        met = goal_met(d)
        rows.append([
            d.condition, d.kind, fmt_pts(d.safety_gain), fmt_pts(d.capability_loss), fmt_ratio(d.over_refusal),
            fmt_pts(d.asr_drop), fmt_share(d.gain_kept) if d.gain_kept else "-",
            "-" if met is None else ("met" if met else "not met"),
        ])  # fmt: skip
    return ("table", headers, rows)


def _metric_table(rows: Sequence[ResultRow]) -> Block:
    headers = ["condition", "n", "score", "95% CI", "datasets", "seconds"]
    out = []
    for r in rows:
        score = "n/a" if r.n == 0 else f"{100 * r.score:.1f}%"
        ci = "n/a" if r.n == 0 else f"[{100 * r.ci_lo:.1f}, {100 * r.ci_hi:.1f}] ({r.interval})"
        out.append([r.condition, str(r.n), score, ci, ", ".join(r.datasets) or "-", f"{r.seconds:.0f}"])
    return ("table", headers, out)


def build_sections(data: ReportData) -> list[Section]:
    """The report's content, format-independent."""
    derived = data.derived()
    t = data.table
    sections = [Section("Findings", [("p", " ".join(findings(t, derived)))])]
    setup = Section("Setup")
    for title, info in (("Model", data.model_info), ("SAE", data.sae_info), ("Features", data.feature_info)):
        if info:
            setup.blocks += [("p", f"**{title}**"), _kv(info)]
    if setup.blocks:
        sections.append(setup)
    h = headline(derived)
    verdict = trade_off_verdict(h) if h else "not tested"
    sections.append(
        Section(
            "Summary beside the paper",
            [
                (
                    "p",
                    f"Paper: O'Brien et al. 2024, {PAPER.model}, refusal feature clamped; {PAPER.control}. "
                    f"Ours (trade-off {verdict}): the baseline, the refusal clamp with the largest gain, the "
                    "conditional clamp quoted in the findings, the best direction baseline and the control clamp "
                    "with the largest capability loss; cells are score [95% CI] (n).",
                ),
                _summary(data, derived),
            ],
        )  # fmt: skip
    )
    if data.plots:
        sections.append(Section("Plots", [("img", title, src, src) for title, src in data.plots.items()]))
    caps = ", ".join(data.capability_metrics)
    sections.append(
        Section(
            "Derived metrics",
            [
                (
                    "p",
                    "Against the baseline: safety gain = unsafe refusal (steered - baseline); capability loss = "
                    f"baseline - steered averaged over {caps}; over-refusal = safe refusal steered / baseline; "
                    "ASR drop = multi-turn attack success baseline - steered; gain kept = a gated clamp's gain / "
                    "the same clamp's gain without the gate. 95% MOVER intervals (conservative: they treat "
                    "conditions as independent samples).",
                ),
                _derived_table(derived),
            ],
        )  # fmt: skip
    )
    per_metric = Section("Results by metric")
    for metric in t.metrics():
        per_metric.blocks += [("p", f"**{METRIC_LABELS.get(metric, metric)}** (`{metric}`)"), _metric_table(
            t.by_metric(metric))]  # fmt: skip
    sections.append(per_metric)
    if data.stage_seconds:
        total = math.fsum(data.stage_seconds.values())
        rows = [
            [stage, fmt_seconds(s), f"{100 * s / total:.0f}%" if total > 0 else "-"]
            for stage, s in data.stage_seconds.items()
        ]
        rows.append(["total", fmt_seconds(total), "100%" if total > 0 else "-"])
        sections.append(Section("Wall time by stage", [("table", ["stage", "wall time", "share"], rows)]))
    if data.notes:
        sections.append(Section("Notes", [("list", list(data.notes))]))
    return sections


# --- Markdown ----------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: Sequence[Section]) -> str:
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for block in sec.blocks:
            kind = block[0]
            if kind == "p":
                out += [block[1], ""]
            elif kind == "table":
                headers, rows = block[1], block[2]
                out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(_md_cell(str(c)) for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "img":
                out += [f"![{block[1]}]({block[2]})", ""]
            elif kind == "list":
                out += [f"- {item}" for item in block[1]] + [""]
    return "\n".join(out).rstrip() + "\n"


# --- HTML --------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}h2{font-size:1.25em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #d0d0d0;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
code{background:#f3f3f3;padding:0 .2em}
"""


def _inline(text: str) -> str:
    """HTML-escape, then the two Markdown marks the sections use: **bold** and `code`."""
    out = html.escape(text)
    for mark, tag in (("**", "strong"), ("`", "code")):
        parts = out.split(mark)
        if len(parts) % 2 == 1:
            out = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
    return out


def to_html(title: str, sections: Sequence[Section]) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        for block in sec.blocks:
            kind = block[0]
            if kind == "p":
                out.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in block[2]
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "img":
                alt, src = html.escape(block[1]), html.escape(block[2], quote=True)
                out.append(
                    f'<figure><a href="{src}"><img src="{src}" alt="{alt}"></a><figcaption>{alt}</figcaption></figure>'
                )
            elif kind == "list":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- files -------------------------------------------------------------------------------------------------


def _matplotlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


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
    plot_links = dict(data.plots)
    notes = list(data.notes)
    if plots == "on" or (plots == "auto" and _matplotlib_available()):
        from saesteer.report.pareto import pareto_points, plot_metric_bars, plot_pareto

        if pareto_points(derived):
            for p in plot_pareto(derived, out / "plots" / "pareto"):
                written[f"pareto.{p.suffix[1:]}"] = p
            plot_links.setdefault("Safety gain vs capability loss (Pareto front ringed)", "plots/pareto.svg")
        for metric, paths in plot_metric_bars(data.table, out / "plots").items():
            for p in paths:
                written[p.stem + p.suffix] = p
            plot_links.setdefault(f"{METRIC_LABELS.get(metric, metric)} by condition", f"plots/{paths[-1].name}")
    elif plots == "auto":
        notes.append("Plots were skipped: matplotlib is not installed (pip install 'saesteer[plot]').")
    view = replace(data, plots=plot_links, notes=notes)
    sections = build_sections(view)
    written["report.md"] = out / "report.md"
    atomic_write_text(written["report.md"], to_markdown(data.title, sections))
    written["report.html"] = out / "report.html"
    atomic_write_text(written["report.html"], to_html(data.title, sections))
    written["derived.json"] = out / "derived.json"
    atomic_write_json(written["derived.json"], [d.to_dict() for d in derived])
    return written
