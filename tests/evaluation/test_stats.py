"""Intervals against published values (Newcombe 1998a/b) and Student-t table values."""

from __future__ import annotations

import math

import pytest

from saesteer.errors import SaesteerError
from saesteer.evaluation.stats import diff_ci, format_rate, mean_ci, t_ppf, wilson, z_for


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998a), Table II, score method
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0),
    ],
)
def test_wilson_known_values(k: int, n: int, lo: float, hi: float) -> None:
    p, a, b = wilson(k, n)
    assert p == pytest.approx(k / n)
    assert a == pytest.approx(lo, abs=5e-5) and b == pytest.approx(hi, abs=5e-5)


def test_wilson_edges() -> None:
    p, lo, hi = wilson(0, 0)
    assert math.isnan(p) and (lo, hi) == (0.0, 1.0)
    for bad in ((5, 3), (-1, 3), (1, -1)):
        with pytest.raises(SaesteerError, match="invalid counts"):
            wilson(*bad)
    # a wider z gives a wider interval
    assert wilson(5, 10, z=2.576)[1] < wilson(5, 10)[1]


@pytest.mark.parametrize(
    ("counts", "lo", "hi"),
    [
        ((56, 70, 48, 80), 0.0524, 0.3339),  # Newcombe (1998b), Table II, method 10
        ((9, 10, 3, 10), 0.1705, 0.8090),
        ((5, 56, 0, 29), -0.0381, 0.1926),
        ((0, 10, 0, 20), -0.1611, 0.2775),
    ],
)
def test_newcombe_difference(counts: tuple[int, int, int, int], lo: float, hi: float) -> None:
    d, a, b = diff_ci(*counts)
    k1, n1, k2, n2 = counts
    assert d == pytest.approx(k1 / n1 - k2 / n2)
    assert a == pytest.approx(lo, abs=5e-5) and b == pytest.approx(hi, abs=5e-5)


def test_t_quantiles_and_z() -> None:
    assert t_ppf(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_ppf(0.975, 10) == pytest.approx(2.2281, abs=1e-4)
    assert t_ppf(0.995, 5) == pytest.approx(4.0321, abs=1e-4)
    assert t_ppf(0.975, 1000) == pytest.approx(1.9623, abs=1e-4)
    assert t_ppf(0.025, 10) == pytest.approx(-2.2281, abs=1e-4)
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)


def test_mean_ci_t_and_bootstrap() -> None:
    m, lo, hi = mean_ci([1, 2, 3, 4, 5])
    half = 2.776445 * math.sqrt(2.5 / 5)  # t(0.975, 4) * s / sqrt(n)
    assert m == 3.0 and lo == pytest.approx(3 - half, abs=1e-5) and hi == pytest.approx(3 + half, abs=1e-5)
    vals = [0.1 * i for i in range(50)]
    b1 = mean_ci(vals, method="bootstrap", seed=1)
    assert b1 == mean_ci(vals, method="bootstrap", seed=1)
    t = mean_ci(vals)
    assert abs(b1[1] - t[1]) < 0.15 and abs(b1[2] - t[2]) < 0.15  # bootstrap ~ t for a symmetric sample
    m1, a1, b1_ = mean_ci([0.7])
    assert m1 == 0.7 and math.isnan(a1) and math.isnan(b1_)
    with pytest.raises(SaesteerError, match="empty"):
        mean_ci([])
    with pytest.raises(SaesteerError, match="unknown interval method"):
        mean_ci([1, 2], method="wald")


def test_format_rate() -> None:
    assert format_rate(81, 263) == "30.8% [25.5, 36.6] (n=263)"
    assert format_rate(0, 0) == "n/a (n=0)"
