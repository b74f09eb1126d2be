"""saesteer.report: the study's results table, derived metrics, findings, plots and report.

* :mod:`~saesteer.report.results` -- :class:`ResultRow` and the resumable :class:`ResultsTable` (JSON + CSV,
  with per-item outcomes for paired comparisons).
* :mod:`~saesteer.report.derived` -- safety gain, capability loss, over-refusal, ASR drop, gain kept (:func:`derive`).
* :mod:`~saesteer.report.findings` -- power-aware claims, each from its interval.
* :mod:`~saesteer.report.pareto` -- Pareto plots and per-metric bar charts (matplotlib, optional).
* :mod:`~saesteer.report.render` -- the one Markdown + HTML renderer (:class:`Section` blocks).
* :mod:`~saesteer.report.document` -- the study report's layout (:class:`ReportData`, :func:`write_report`).
"""

from saesteer.report.derived import Derived, Estimate, derive, goal_met
from saesteer.report.document import Example, ReportData, StageTime, Table, write_report
from saesteer.report.findings import PAPER, Headline, findings
from saesteer.report.render import Section, to_html, to_markdown
from saesteer.report.results import METRICS, ResultRow, ResultsTable

__all__ = [
    "METRICS",
    "PAPER",
    "Derived",
    "Estimate",
    "Example",
    "Headline",
    "ReportData",
    "ResultRow",
    "ResultsTable",
    "Section",
    "StageTime",
    "Table",
    "derive",
    "findings",
    "goal_met",
    "to_html",
    "to_markdown",
    "write_report",
]
