"""Helpers for report tests: a results table of a small sweep built from known counts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from saesteer.report.results import ResultsTable
from saesteer.study.design import Condition, SweepConfig, build_grid

N = {"unsafe_refusal": 200, "safe_refusal": 200, "mmlu": 100, "gsm8k": 100, "truthfulqa_mc1": 100,
     "truthfulqa_mc2": 100, "multiturn_asr": 100}  # fmt: skip

# condition -> metric -> successes k (out of N[metric])
COUNTS: dict[str, dict[str, int]] = {
    "baseline": {"unsafe_refusal": 124, "safe_refusal": 20, "mmlu": 60, "gsm8k": 50, "truthfulqa_mc1": 30,
                 "truthfulqa_mc2": 45, "multiturn_asr": 56},
    "clamp f=10 c=4": {"unsafe_refusal": 160, "safe_refusal": 40, "mmlu": 55, "gsm8k": 45, "truthfulqa_mc1": 28,
                       "truthfulqa_mc2": 40, "multiturn_asr": 45},
    "clamp f=10 c=8": {"unsafe_refusal": 200, "safe_refusal": 68, "mmlu": 30, "gsm8k": 20, "truthfulqa_mc1": 20,
                       "truthfulqa_mc2": 35, "multiturn_asr": 33},
    "control f=3 c=4": {"unsafe_refusal": 126, "safe_refusal": 21, "mmlu": 58, "gsm8k": 49, "truthfulqa_mc1": 30,
                        "truthfulqa_mc2": 44, "multiturn_asr": 55},
    "control f=3 c=8": {"unsafe_refusal": 128, "safe_refusal": 22, "mmlu": 35, "gsm8k": 25, "truthfulqa_mc1": 22,
                        "truthfulqa_mc2": 35, "multiturn_asr": 54},
    "conditional clamp f=10 c=4": {"unsafe_refusal": 158, "safe_refusal": 22, "mmlu": 59, "gsm8k": 50,
                                   "truthfulqa_mc1": 30, "truthfulqa_mc2": 45, "multiturn_asr": 46},
    "conditional clamp f=10 c=8": {"unsafe_refusal": 196, "safe_refusal": 24, "mmlu": 58, "gsm8k": 48,
                                   "truthfulqa_mc1": 29, "truthfulqa_mc2": 44, "multiturn_asr": 35},
    "diff-in-means add 1": {"unsafe_refusal": 180, "safe_refusal": 30, "mmlu": 57, "gsm8k": 47,
                            "truthfulqa_mc1": 29, "truthfulqa_mc2": 43, "multiturn_asr": 40},
}  # fmt: skip


def grid() -> list[Condition]:
    return build_grid(SweepConfig(clamp_values=[4.0, 8.0]), [10], [3])


def make_table(
    path: str | Path | None = None, overrides: Mapping[str, Mapping[str, int]] | None = None, paired: bool = False
) -> tuple[ResultsTable, list[Condition]]:
    """The sweep above as a results table; ``overrides`` replaces some counts: {condition: {metric: k}}.

    ``paired``: record per-item outcomes, item ``i`` a success iff ``i < k`` (so conditions agree on most items).
    """
    conds = grid()
    table = ResultsTable(path)
    for c in conds:
        counts = {**COUNTS[c.name], **(overrides or {}).get(c.name, {})}
        for metric, k in counts.items():
            items = {f"q{i}": float(i < k) for i in range(N[metric])} if paired else None
            row = c.rate_row(metric, k, N[metric], datasets=("set_a", "set_b"), seconds=1.5)
            table.add(row, save=False, items=items)
    if path is not None:
        table.save()
    return table, conds
