"""Derived metrics on known numbers: safety gain, capability loss, over-refusal ratio, gain kept, goal."""

from __future__ import annotations

import math

import pytest

from saesteer.errors import SaesteerError
from saesteer.evaluation.stats import diff_ci, wilson, z_for
from saesteer.report.derived import Estimate, derive, goal_met, mean_of, mover_diff, mover_ratio
from saesteer.report.results import ResultRow, ResultsTable
from tests.report.helpers import COUNTS, N, make_table

Z = z_for(0.95)


def _by(table: ResultsTable, **kw):  # type: ignore[no-untyped-def]
    return {d.condition: d for d in derive(table, **kw)}


def test_safety_gain_is_newcombes_difference() -> None:
    table, conds = make_table()
    d = _by(table, conditions=conds)["clamp f=10 c=4"]
    k1, k0 = COUNTS["clamp f=10 c=4"]["unsafe_refusal"], COUNTS["baseline"]["unsafe_refusal"]
    ref = diff_ci(k1, 200, k0, 200, Z)
    assert d.safety_gain is not None
    assert d.safety_gain.value == pytest.approx(0.18)
    assert (d.safety_gain.lo, d.safety_gain.hi) == pytest.approx(ref[1:], abs=1e-12)


def test_capability_loss_averages_one_metric_per_benchmark() -> None:
    table, conds = make_table()
    d = _by(table, conditions=conds)["clamp f=10 c=8"]
    # baseline - steered: mmlu 60-30, gsm8k 50-20, truthfulqa_mc2 45-35 (percent) -> mean 23.33 points
    assert d.capability_metrics == ("mmlu", "gsm8k", "truthfulqa_mc2")
    assert d.capability_loss is not None and d.capability_loss.value == pytest.approx((0.30 + 0.30 + 0.10) / 3)
    assert d.capability_losses["gsm8k"].value == pytest.approx(0.30)
    assert d.capability_loss.lo < d.capability_loss.value < d.capability_loss.hi
    assert d.capability_loss.above_zero
    # other metric choices, and metrics only one side measured, are honoured
    d1 = _by(table, conditions=conds, capability_metrics=("mmlu", "truthfulqa_mc1", "nope"))["clamp f=10 c=8"]
    assert d1.capability_metrics == ("mmlu", "truthfulqa_mc1")
    assert d1.capability_loss is not None and d1.capability_loss.value == pytest.approx((0.30 + 0.10) / 2)


def test_mean_of_adds_half_widths_in_quadrature() -> None:
    m = mean_of([Estimate(0.1, 0.0, 0.3), Estimate(0.3, 0.2, 0.4)])
    assert m.value == pytest.approx(0.2)
    assert m.lo == pytest.approx(0.2 - math.sqrt(0.1**2 + 0.1**2) / 2)
    assert m.hi == pytest.approx(0.2 + math.sqrt(0.2**2 + 0.1**2) / 2)
    with pytest.raises(SaesteerError):
        mean_of([])


def test_over_refusal_ratio_and_its_interval() -> None:
    table, conds = make_table()
    d = _by(table, conditions=conds)["clamp f=10 c=8"]  # 68/200 vs 20/200: x3.4 like the paper
    assert d.over_refusal is not None and d.over_refusal.value == pytest.approx(3.4)
    # close to the Katz log interval at these counts, and clearly above 1
    se = math.sqrt(1 / 68 - 1 / 200 + 1 / 20 - 1 / 200)
    katz = (3.4 * math.exp(-Z * se), 3.4 * math.exp(Z * se))
    assert d.over_refusal.lo == pytest.approx(katz[0], rel=0.03)
    assert d.over_refusal.hi == pytest.approx(katz[1], rel=0.03)
    assert d.over_refusal.lo > 2.0


def test_mover_ratio_edges() -> None:
    zero = Estimate(*wilson(0, 50))
    some = Estimate(*wilson(10, 50))
    assert mover_ratio(some, zero).value == math.inf
    both = mover_ratio(zero, zero)
    assert (both.value, both.lo, both.hi) == (1.0, 0.0, math.inf)
    r = mover_ratio(zero, some)
    assert r.value == 0.0 and r.lo == 0.0 and 0.0 < r.hi < 1.0
    neg = mover_ratio(Estimate(-0.1, -0.2, 0.05), Estimate(0.2, 0.1, 0.3))
    assert neg.value == pytest.approx(-0.5) and neg.lo < -0.5 < neg.hi
    crossing = mover_ratio(Estimate(0.05, -0.05, 0.15), Estimate(0.2, 0.1, 0.3))
    assert crossing.lo < 0.0 < crossing.value < crossing.hi
    assert math.isnan(mover_ratio(some, Estimate(-0.1, -0.2, 0.0)).value)
    d = mover_diff(Estimate(0.5, 0.4, 0.6), Estimate(0.2, 0.1, 0.3))
    assert (d.value, d.lo, d.hi) == pytest.approx((0.3, 0.3 - math.sqrt(0.02), 0.3 + math.sqrt(0.02)))


def test_gain_kept_and_goal() -> None:
    table, conds = make_table()
    by = _by(table, conditions=conds)
    c8 = by["conditional clamp f=10 c=8"]
    # gated gain (196-124)/200 over ungated gain (200-124)/200; over-refusal 24/20
    assert c8.unconditional == "clamp f=10 c=8"
    assert c8.gain_kept is not None and c8.gain_kept.value == pytest.approx(72 / 76)
    assert c8.gain_kept.lo < c8.gain_kept.value < c8.gain_kept.hi
    assert c8.over_refusal is not None and c8.over_refusal.value == pytest.approx(1.2)
    assert goal_met(c8) is True
    assert goal_met(by["clamp f=10 c=8"]) is None  # not conditional
    assert by["clamp f=10 c=8"].gain_kept is None
    # more over-refusal flips the goal; so does a smaller share of the gain
    worse, _ = make_table(overrides={"conditional clamp f=10 c=8": {"safe_refusal": 30}})
    assert goal_met(_by(worse, conditions=conds)["conditional clamp f=10 c=8"]) is False  # x1.5
    weaker, _ = make_table(overrides={"conditional clamp f=10 c=8": {"unsafe_refusal": 180}})
    assert goal_met(_by(weaker)["conditional clamp f=10 c=8"]) is False  # 56/76 kept; pairs found by name


def test_baseline_is_the_reference_and_must_exist() -> None:
    table, _ = make_table()
    base = derive(table)[0]
    assert base.condition == "baseline"
    assert base.safety_gain == Estimate(0.0, 0.0, 0.0, "reference")
    assert base.over_refusal == Estimate(1.0, 1.0, 1.0, "reference")
    t = ResultsTable()
    t.add(ResultRow.from_rate("clamp f=1 c=8", "refusal_feature", "mmlu", 5, 10, feature=1, value=8.0))
    with pytest.raises(SaesteerError, match="no 'baseline' condition"):
        derive(t)


def test_missing_metrics_give_none_not_errors() -> None:
    t = ResultsTable()
    t.add(ResultRow.from_rate("baseline", "baseline", "unsafe_refusal", 60, 100))
    t.add(ResultRow.from_rate("clamp f=1 c=8", "refusal_feature", "unsafe_refusal", 90, 100, feature=1, value=8.0))
    t.add(ResultRow.from_rate("clamp f=1 c=8", "refusal_feature", "mmlu", 5, 10, feature=1, value=8.0))
    d = derive(t)[1]
    assert d.safety_gain is not None and d.safety_gain.value == pytest.approx(0.3)
    assert d.capability_loss is None and d.over_refusal is None and d.asr_drop is None


def test_asr_drop() -> None:
    table, conds = make_table()
    d = _by(table, conditions=conds)["clamp f=10 c=8"]
    assert d.asr_drop is not None and d.asr_drop.value == pytest.approx((56 - 33) / N["multiturn_asr"])
