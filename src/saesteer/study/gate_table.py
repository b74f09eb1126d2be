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
from typing import Any

from saesteer.evaluation import paired
from saesteer.evaluation.selection import UNSEEN_TEST_SETS
from saesteer.report.derived import Derived, Estimate, shared_outcomes
from saesteer.report.document import Table
from saesteer.report.findings import fmt_pts, fmt_ratio, fmt_share
from saesteer.report.results import ResultsTable
from saesteer.study.sweep_eval import UNSEEN_METRICS

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
    unseen = any(table.items("baseline", m) for m in UNSEEN_METRICS)
    headers = ["condition", "gain kept", "over-refusal, look-alikes", "over-refusal, Alpaca", "ASR drop",
               "capability loss", *(["unseen unsafe: gain", "unseen safe: over-refusal"] if unseen else [])]  # fmt: skip
    rows = []
    for d in [rows_of[clamp], *gated]:
        cells = [
            d.condition,
            "100% (the clamp)" if d.condition == clamp else fmt_share(d.gain_kept),
            fmt_pts(subset_diff(table, "safe_refusal", "baseline", d.condition, LOOK_ALIKES)),
            fmt_pts(subset_diff(table, "safe_refusal", "baseline", d.condition, ALPACA)),
            fmt_pts(d.asr_drop),
            fmt_pts(d.capability_loss),
        ]
        if unseen:  # the generalisation check, where the study scored the unseen sets (safety.unseen)
            cells += [fmt_pts(subset_diff(table, m, "baseline", d.condition)) for m in UNSEEN_METRICS]
        rows.append(cells)
    unseen_note = (
        "Unseen: test sets of datasets no dev purpose drew from (Do-Not-Answer, the built-in harmful and harmless "
        "suites). "
    )
    note = (
        "Against the baseline on the same test items (Tango's paired interval; gain kept: paired bootstrap). "
        f"Look-alikes: XSTest safe + JBB benign. {unseen_note if unseen else ''}The gates' own cost in ms per "
        "prompt is in the dev variants table; their firing rates per dataset in the firing-rate table."
    )
    return Table("Gates on the test splits", headers, rows, note)


def _from_list(v: Sequence[float] | None) -> Estimate | None:
    return None if v is None else Estimate(v[0], v[1], v[2], "paired", int(v[3]))


def _firing(firing: dict[str, list[int]], datasets: Sequence[str]) -> str:
    k = sum(firing[d][0] for d in datasets if d in firing)
    n = sum(firing[d][1] for d in datasets if d in firing)
    return f"{100 * k / n:.0f}% ({k}/{n})" if n else "n/a"


def variants_test_table(composed: dict[str, Any] | None) -> Table | None:
    """Every dev-fit gate variant on the test splits, composed from the baseline and clamp outcomes."""
    if not composed or not composed.get("variants"):
        return None
    fixed = {*LOOK_ALIKES, *ALPACA, "humaneval", *UNSEEN_TEST_SETS}
    headers = ["variant", "gain kept", "over-refusal, look-alikes", "x look-alikes", "over-refusal, Alpaca",
               "unseen unsafe: gain", "ASR drop", "HumanEval loss", "fires: unsafe sets", "fires: look-alikes", "fires: Alpaca",
               "fires: unseen", "ms/prompt"]  # fmt: skip
    rows = []
    for v in sorted(composed["variants"], key=lambda v: -v["dev_objective"]):
        firing = v["firing"]
        unsafe = [d for d in firing if d not in fixed]
        name = v["variant"] + (" (chosen on dev)" if v["variant"] == composed["chosen"] else "")
        rows.append([
            name, fmt_share(_from_list(v["gain_kept"])), fmt_pts(_from_list(v["over_refusal_look_alikes"])),
            fmt_ratio(_from_list(v.get("over_refusal_ratio_look_alikes"))),
            fmt_pts(_from_list(v["over_refusal_alpaca"])), fmt_pts(_from_list(v.get("unseen_unsafe_refusal"))), fmt_pts(_from_list(v.get("asr_drop"))),
            fmt_pts(_from_list(v.get("humaneval_loss"))), _firing(firing, unsafe), _firing(firing, LOOK_ALIKES),
            _firing(firing, ALPACA), _firing(firing, UNSEEN_TEST_SETS), f"{v['ms_per_prompt']:.2f}",
        ])  # fmt: skip
    chosen = next((v for v in composed["variants"] if "composition_check" in v), None)
    check = (f" Check: on the chosen variant the composition equals the sweep's own gated run on "
             f"{chosen['composition_check'][0]} of {chosen['composition_check'][1]} items." if chosen else "")  # fmt: skip
    every = sum(v.get("asr_drop") is not None for v in composed["variants"]) > 1
    attacks = "is generated under each variant" if every else "is measured under the chosen gate only (n/a: not run)"
    note = (
        f"Each variant of the dev comparison gating {composed['clamp']}, at its dev threshold, on the test items. "
        "No extra generation: a prompt-level gate under greedy decoding gives the clamp's outcome where it fires "
        "and the baseline's where it does not, so each variant's outcomes are composed from the sweep's baseline "
        "and clamp outcomes and the variant's score of each test prompt (saesteer.study.gate_variants)."
        f"{check} Read on test, these points choose nothing. Intervals: gain kept and the ratio by paired "
        "bootstrap, differences by Tango's paired interval. Multi-turn attacks decide per turn, so no composition "
        f"gives them: their ASR drop (FRACTURED) {attacks}. Log-likelihood benchmarks: the chosen gate only, above."
    )
    return Table("Every gate variant on the test splits (composed)", headers, rows, note)


def variants_firing_table(composed: dict[str, Any] | None) -> Table | None:
    """Each dev-fit gate variant's firing rate on every test dataset (the decisions the composed table used)."""
    if not composed or not composed.get("variants"):
        return None
    variants = sorted(composed["variants"], key=lambda v: -v["dev_objective"])
    datasets = sorted({d for v in variants for d in v["firing"]})
    sizes = {d: next(v["firing"][d][1] for v in variants if d in v["firing"]) for d in datasets}
    headers = ["variant", *(f"{d} (n={sizes[d]})" for d in datasets)]
    rows = [[v["variant"], *(f"{100 * v['firing'][d][0] / v['firing'][d][1]:.0f}%" if d in v["firing"] else "n/a"
                             for d in datasets)] for v in variants]  # fmt: skip
    note = "Share of each test dataset's prompts on which the variant steers, at its dev threshold (chat prompts)."
    return Table("Every gate variant's firing rate per test dataset", headers, rows, note)
