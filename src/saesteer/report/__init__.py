"""saesteer.report: the study's results table, sweep grid, derived metrics, plots and report.

* :mod:`~saesteer.report.results` -- :class:`ResultRow` and the resumable :class:`ResultsTable` (JSON + CSV).
* :mod:`~saesteer.report.sweep` -- :class:`SweepConfig`, :func:`build_grid` -> :class:`Condition` list.
* :mod:`~saesteer.report.derived` -- safety gain, capability loss, over-refusal ratio, gain kept (:func:`derive`).
* :mod:`~saesteer.report.pareto` -- Pareto plot and per-metric bar charts (matplotlib, optional).
* :mod:`~saesteer.report.render` -- Markdown + HTML report with the paper's numbers (:func:`write_report`).
"""

from saesteer.report.derived import Derived, Estimate, derive, goal_met
from saesteer.report.findings import PAPER, findings
from saesteer.report.render import ReportData, write_report
from saesteer.report.results import METRICS, ResultRow, ResultsTable
from saesteer.report.sweep import Condition, SweepConfig, build_grid, load_grid, save_grid

__all__ = [
    "METRICS",
    "PAPER",
    "Condition",
    "Derived",
    "Estimate",
    "ReportData",
    "ResultRow",
    "ResultsTable",
    "SweepConfig",
    "build_grid",
    "derive",
    "findings",
    "goal_met",
    "load_grid",
    "save_grid",
    "write_report",
]
