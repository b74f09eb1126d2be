"""Confidence intervals for the numbers the study reports.

* :func:`wilson` -- a rate ``k / n`` (refusal rate, accuracy, attack success) with the Wilson score interval,
  which stays inside [0, 1] and behaves at ``k = 0`` and ``k = n`` where the normal ("Wald") interval does not.
* :func:`diff_ci` -- a difference of two independent rates (steered minus unsteered) with Newcombe's hybrid
  score interval (Newcombe 1998, method 10), built from the two Wilson intervals.
* :func:`mean_ci` -- a mean of continuous scores (TruthfulQA MC2, per-item log-likelihoods) with a Student-t
  interval or a percentile bootstrap.

Differences between conditions scored on the same items are paired: see :mod:`saesteer.evaluation.paired`
(Tango's score interval, paired t, paired bootstrap, minimum detectable effects); :func:`diff_ci` is for
independent samples only.

No SciPy here: the Student-t quantile comes from the regularised incomplete beta function (a continued fraction)
and bisection, accurate to ~1e-10, far below anything a report shows.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from saesteer.errors import SaesteerError

Interval = tuple[float, float, float]


def z_for(confidence: float) -> float:
    """The two-sided standard-normal quantile for a confidence level (0.95 -> 1.959964)."""
    if not 0.0 < confidence < 1.0:
        raise SaesteerError(f"confidence {confidence} must be between 0 and 1, e.g. 0.95")
    return _norm_ppf(0.5 + confidence / 2.0)


def _norm_ppf(p: float) -> float:
    # bisection on the normal CDF (erf is exact to double precision); 100 halvings reach machine precision
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _check_counts(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise SaesteerError(f"invalid counts k={k}, n={n}; need 0 <= k <= n")


def wilson(k: int, n: int, z: float = 1.96) -> Interval:
    """Rate ``k/n`` and its Wilson score interval: ``(p, lo, hi)``.

    ``n = 0`` gives ``(nan, 0.0, 1.0)``: no data, no information.
    """
    _check_counts(k, n)
    if n == 0:
        return (math.nan, 0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    if k == 0:
        lo = 0.0
    if k == n:
        hi = 1.0
    return (p, lo, hi)


def diff_ci(k1: int, n1: int, k2: int, n2: int, z: float = 1.96) -> Interval:
    """Difference ``k1/n1 - k2/n2`` of two independent rates with Newcombe's hybrid score interval."""
    p1, l1, u1 = wilson(k1, n1, z)
    p2, l2, u2 = wilson(k2, n2, z)
    if n1 == 0 or n2 == 0:
        return (math.nan, -1.0, 1.0)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (d, max(-1.0, lo), min(1.0, hi))


# --- Student t quantile -------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t distribution (``t_ppf(0.975, 10) = 2.228139``)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise SaesteerError(f"t quantile needs 0 < p < 1 and df > 0 (got p={p}, df={df})")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2.0


def mean_ci(
    values: Sequence[float], confidence: float = 0.95, method: str = "t", n_boot: int = 2000, seed: int = 0
) -> Interval:
    """Mean of ``values`` and its confidence interval: ``(mean, lo, hi)``.

    ``method="t"``: Student-t interval (mean +- t * s / sqrt(n)); ``method="bootstrap"``: percentile bootstrap
    with ``n_boot`` resamples under ``seed`` (deterministic). One value gives ``(v, nan, nan)``.
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise SaesteerError("mean_ci needs at least one value; the score list is empty")
    if any(math.isnan(v) for v in vals):
        raise SaesteerError("mean_ci got NaN scores; drop or fix them before computing an interval")
    if not 0.0 < confidence < 1.0:
        raise SaesteerError(f"confidence {confidence} must be between 0 and 1, e.g. 0.95")
    mean = math.fsum(vals) / n
    if n == 1:
        return (mean, math.nan, math.nan)
    if method == "t":
        var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1)
        half = t_ppf(0.5 + confidence / 2.0, n - 1) * math.sqrt(var / n)
        return (mean, mean - half, mean + half)
    if method == "bootstrap":
        if n_boot < 100:
            raise SaesteerError(f"n_boot={n_boot} is too few resamples; use at least 100 (default 2000)")
        rng = random.Random(seed)
        means = sorted(math.fsum(rng.choices(vals, k=n)) / n for _ in range(n_boot))
        alpha = (1.0 - confidence) / 2.0
        lo_i = max(0, int(math.floor(alpha * n_boot)))
        hi_i = min(n_boot - 1, int(math.ceil((1.0 - alpha) * n_boot)) - 1)
        return (mean, means[lo_i], means[hi_i])
    raise SaesteerError(f"unknown interval method {method!r}; use 't' or 'bootstrap'")


def format_rate(k: int, n: int, z: float = 1.96, digits: int = 1) -> str:
    """``"62.5% [55.1, 69.4] (n=320)"`` -- a rate in percent with its Wilson interval and n."""
    p, lo, hi = wilson(k, n, z)
    if n == 0:
        return "n/a (n=0)"
    return f"{100 * p:.{digits}f}% [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}] (n={n})"
