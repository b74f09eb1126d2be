"""The gates' test table: the generalisation columns appear only where the study scored the unseen sets."""

from __future__ import annotations

import random

import pytest

from saesteer.report.derived import derive
from saesteer.report.results import ResultRow, ResultsTable
from saesteer.study.gate_table import gate_test_table

CONDS = (("baseline", "baseline", 0.3), ("clamp f=1 c=8", "refusal_feature", 0.7),
         ("conditional clamp f=1 c=8", "conditional", 0.6))  # fmt: skip


def _table(unseen: bool) -> ResultsTable:
    rng = random.Random(0)
    table = ResultsTable(None, {"model": "m"})
    metrics = {"unsafe_refusal": "advbench", "safe_refusal": "alpaca"}
    if unseen:
        metrics |= {"unseen_unsafe_refusal": "donotanswer", "unseen_safe_refusal": "builtin_harmless"}
    for name, kind, p in CONDS:
        for metric, ds in metrics.items():
            rate = p if "unsafe" in metric else p / 3
            items = {f"{ds}/{i}": float(rng.random() < rate) for i in range(40)}
            row = ResultRow.from_rate(name, kind, metric, int(sum(items.values())), 40, datasets=(ds,))
            table.add(row, save=False, items=items)
    return table


@pytest.mark.parametrize("unseen", [True, False])
def test_unseen_columns_only_where_scored(unseen: bool) -> None:
    table = _table(unseen)
    got = gate_test_table(table, derive(table), "clamp f=1 c=8")
    assert got is not None and len(got.rows) == 2
    assert ("unseen unsafe: gain" in got.headers) == unseen and ("Unseen:" in got.note) == unseen
    assert all(len(r) == len(got.headers) for r in got.rows)
    if unseen:
        assert "n/a" not in got.rows[1][-1]
