"""Paired intervals, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from saesteer.errors import SaesteerError
from saesteer.evaluation.paired import (
    BOOTSTRAP,
    TANGO,
    capability_loss,
    describe,
    gain,
    gain_kept,
    includes_chance,
    mde_paired,
    over_refusal_ratio,
    paired_counts,
    paired_diff_ci,
    paired_mean_diff_ci,
)
from saesteer.evaluation.stats import diff_ci


def table(n11: int, n10: int, n01: int, n00: int) -> tuple[list[int], list[int]]:
    a = [1] * n11 + [1] * n10 + [0] * n01 + [0] * n00
    b = [1] * n11 + [0] * n10 + [1] * n01 + [0] * n00
    return a, b


def score_by_numeric_mle(n10: int, n01: int, n: int, d0: float) -> float:
    """Tango's statistic with the restricted MLE of P(0,1) found numerically (not the closed form)."""
    lo, hi = max(0.0, -d0) + 1e-12, min(1.0, (1 - d0) / 2) - 1e-12

    def nll(q: float) -> float:  # P(1,0) = q + d0, P(0,1) = q, the rest 1 - 2q - d0 (split irrelevant)
        rest = 1 - 2 * q - d0
        return -(n10 * math.log(q + d0) + n01 * math.log(q) + (n - n10 - n01) * math.log(max(rest, 1e-300)))

    q = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x
    return (n10 - n01 - n * d0) / math.sqrt(n * (2 * q + d0 * (1 - d0)))


@pytest.mark.parametrize("cells", [(1, 1, 7, 12), (30, 12, 3, 55), (10, 5, 5, 20), (40, 9, 0, 51)])
def test_tango_bounds_solve_the_score_equation(cells: tuple[int, int, int, int]) -> None:
    a, b = table(*cells)
    est = paired_diff_ci(a, b)
    n10, n01, n = cells[1], cells[2], sum(cells)
    assert est.method == TANGO and est.n == n
    assert est.estimate == pytest.approx((n10 - n01) / n)
    assert est.lo < est.estimate < est.hi
    z = stats.norm.ppf(0.975)
    assert score_by_numeric_mle(n10, n01, n, est.lo) == pytest.approx(z, abs=1e-4)
    if est.hi < 1:
        assert score_by_numeric_mle(n10, n01, n, est.hi) == pytest.approx(-z, abs=1e-4)


def test_tango_published_example() -> None:
    # Fagerland, Lydersen & Laake (2013), airway hyper-responsiveness example: Tango -0.517 to -0.026
    est = paired_diff_ci(*table(1, 1, 7, 12))
    assert (round(est.lo, 3), round(est.hi, 3)) == (-0.517, -0.026)


def test_paired_is_narrower_than_independent_when_outcomes_agree() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.4
    steered = base.copy()
    steered[np.flatnonzero(~base)[:14]] = True  # 14 more refusals, nothing else changes
    paired = gain(base.tolist(), steered.tolist())
    _, lo, hi = diff_ci(int(steered.sum()), 200, int(base.sum()), 200)
    assert paired.lo > 0  # the gain is detected with pairing ...
    assert lo < 0  # ... and not without it
    assert (paired.hi - paired.lo) < 0.6 * (hi - lo)


def test_bootstrap_ratio_and_gain_kept() -> None:
    base, full = table(10, 0, 30, 60)  # base refuses 10, full 40
    half = [1] * 25 + [0] * 75  # partial keeps 15 of the 30 gained
    est = gain_kept(base, [1] * 40 + [0] * 60, half, n_resamples=1000)
    assert est.method == BOOTSTRAP and est.estimate == pytest.approx(0.5)
    assert est.lo < 0.5 < est.hi
    r = over_refusal_ratio([1] * 10 + [0] * 90, [1] * 20 + [0] * 80, n_resamples=1000)
    assert r.estimate == pytest.approx(2.0) and r.lo < 2.0 < r.hi and r.lo > 1.0
    undefined = over_refusal_ratio([0] * 50, [1] * 5 + [0] * 45, n_resamples=200)
    assert math.isnan(undefined.lo) and "undefined" in undefined.method


def test_mde_round_trips_connor_formula() -> None:
    d = mde_paired(300, 0.2)
    za, zb = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    n = (za * math.sqrt(0.2) + zb * math.sqrt(0.2 - d * d)) ** 2 / d**2
    assert n == pytest.approx(300, rel=1e-6)
    assert mde_paired(1200, 0.2) < d  # more items, smaller detectable effect
    assert math.isnan(mde_paired(2, 0.05))
    with pytest.raises(SaesteerError):
        mde_paired(10, 0.0)


def test_wording_and_helpers() -> None:
    a, b = table(20, 3, 2, 25)
    loss = capability_loss(a, b)
    text = describe("MMLU loss", loss, mde=0.12)
    assert text.startswith("MMLU loss: not detectable at n=50") and "12.0 pts" in text
    big = gain(*table(0, 0, 0, 50)[::-1])
    assert big.estimate == 0
    sure = gain([0] * 50, [1] * 30 + [0] * 20)
    assert describe("gain", sure).startswith("gain: +60.0 pts")
    assert includes_chance(0.18, 0.31, 0.25) and not includes_chance(0.30, 0.41, 0.25)
    assert paired_counts([1, 1, 0, 0], [1, 0, 1, 0]) == (1, 1, 1, 1)
    m = paired_mean_diff_ci([1.0, 2.0, 3.0, 4.0], [0.5, 1.5, 2.0, 4.0])
    assert m.estimate == pytest.approx(0.5) and m.lo < 0.5 < m.hi
    with pytest.raises(SaesteerError, match="same items"):
        paired_diff_ci([1, 0], [1])
