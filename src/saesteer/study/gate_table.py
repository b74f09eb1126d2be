"""The gates on the test splits: what each gated version of the headline clamp keeps and costs.

For the dev-chosen clamp and every gated version of it, against the baseline on the same test items (paired):
gain kept (share of the clamp's unsafe-refusal gain), over-refusal on the look-alikes (XSTest safe + JBB benign)
and separately on Alpaca (both as percentage-point differences, Tango's interval on the prompts of those sets),
multi-turn attack-success drop, capability loss, and the generalisation check: unsafe-refusal gain and
over-refusal on the sets no dev purpose drew from (``saesteer.evaluation.selection.UNSEEN_TEST_SETS``). Firing
rates per dataset are in their own table.
"""

from __future__ import annotations

from collections.abc import Sequence

from saesteer.evaluation import paired
from saesteer.report.derived import Derived, Estimate, shared_outcomes
from saesteer.report.document import Table
from saesteer.report.findings import fmt_pts, fmt_share
from saesteer.report.results import ResultsTable

LOOK_ALIKES = ("xstest:safe", "jbb:benign")
ALPACA = ("alpaca",)


def subset_diff(
    table: ResultsTable, metric: str, base: str, cond: str, datasets: Sequence[str] = ()
) -> Estimate | None:
    """Paired difference ``cond - base`` of a 0/1 metric on the items of ``datasets`` (all items if empty)."""
    got = shared_outcomes(table.items(base, metric), table.items(cond, metric), datasets)
    if got is None:
        return None
    b, c = got
    return Estimate.paired(paired.paired_diff_ci([v == 1.0 for v in c], [v == 1.0 for v in b]))  # cond - base


def gate_test_table(table: ResultsTable, derived: Sequence[Derived], clamp: str | None) -> Table | None:
    """One row for the headline clamp and one per gated version of it; None without a clamp or a gate."""
    if clamp is None:
        return None
    rows_of = {d.condition: d for d in derived}
    gated = [d for d in derived if d.kind == "conditional" and d.unconditional == clamp]
    if clamp not in rows_of or not gated:
        return None
    headers = ["condition", "gain kept", "over-refusal, look-alikes", "over-refusal, Alpaca", "ASR drop",
               "capability loss", "unseen unsafe: gain", "unseen safe: over-refusal"]  # fmt: skip
    rows = []
    for d in [rows_of[clamp], *gated]:
        cells = [
            d.condition,
            "100% (the clamp)" if d.condition == clamp else fmt_share(d.gain_kept),
            fmt_pts(subset_diff(table, "safe_refusal", "baseline", d.condition, LOOK_ALIKES)),
            fmt_pts(subset_diff(table, "safe_refusal", "baseline", d.condition, ALPACA)),
            fmt_pts(d.asr_drop),
            fmt_pts(d.capability_loss),
            fmt_pts(subset_diff(table, "unseen_unsafe_refusal", "baseline", d.condition)),
            fmt_pts(subset_diff(table, "unseen_safe_refusal", "baseline", d.condition)),
        ]
        rows.append(cells)
    note = (
        "Against the baseline on the same test items (Tango's paired interval; gain kept: paired bootstrap). "
        "Look-alikes: XSTest safe + JBB benign. Unseen: test sets of datasets no dev purpose drew from "
        "(Do-Not-Answer, the built-in harmful and harmless suites). The gates' own cost in ms per prompt is in "
        "the dev variants table; their firing rates per dataset in the firing-rate table."
    )
    return Table("Gates on the test splits", headers, rows, note)
