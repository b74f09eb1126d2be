"""Paired comparisons: two conditions scored on the same items.

For binary outcomes ``a_i, b_i`` on ``n`` shared items, the table ``n11`` (both 1), ``n10``, ``n01``, ``n00`` and the
difference ``d = mean(a) - mean(b) = (n10 - n01) / n``. Only the discordant pairs carry information about ``d``,
so a paired interval is much narrower than one that treats the conditions as independent samples.

* :func:`paired_diff_ci` -- **Tango's asymptotic score interval** (Tango 1998; recommended by Fagerland, Lydersen &
  Laake 2013): the set of ``D`` with ``|T(D)| <= z``, where
  ``T(D) = (n10 - n01 - n D) / sqrt(n (2 q + D (1 - D)))`` and ``q`` is the maximum-likelihood ``P(0, 1)`` under
  ``mean(a) - mean(b) = D`` (closed form: the root of ``2n q^2 + B q + C = 0`` with
  ``B = -n10 - n01 + (2n - n10 + n01) D`` and ``C = -n01 D (1 - D)``). Roots by Brent's method (SciPy).
* :func:`paired_mean_diff_ci` -- continuous per-item scores (KL, MC2 mass): the Student-t interval of the mean
  of the per-item differences (the paired t interval).
* :func:`paired_bootstrap_ci` -- any statistic of several paired samples (a ratio of rates, a ratio of paired
  differences) by the **paired percentile bootstrap** (:func:`scipy.stats.bootstrap` with ``paired=True``):
  items are resampled together, so every condition sees the same resample.
* :func:`mde_paired` -- the minimum detectable difference of a paired binary design (McNemar's test, two-sided
  ``alpha``, given ``power``) by Connor's (1987) sample-size formula
  ``n = (z_{1-a/2} sqrt(psi) + z_{power} sqrt(psi - d^2))^2 / d^2`` solved for ``d`` at the discordant share ``psi``.

The study's named differences use these: gain, over-refusal difference, capability loss and attack-success drop
(Tango); over-refusal ratio and gain kept (paired bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

from saesteer.errors import SaesteerError

TANGO = "Tango asymptotic score interval (paired)"
PAIRED_T = "paired Student-t interval of per-item differences"
BOOTSTRAP = "paired percentile bootstrap (scipy.stats.bootstrap, paired=True)"


@dataclass(frozen=True)
class PairedEstimate:
    """An estimate with its interval, the number of shared items and the method that produced the interval."""

    estimate: float
    lo: float
    hi: float
    n: int
    method: str
    confidence: float = 0.95

    def includes(self, value: float) -> bool:
        """True when ``value`` lies inside the interval (an undefined interval includes everything)."""
        if math.isnan(self.lo) or math.isnan(self.hi):
            return True
        return self.lo <= value <= self.hi

    def includes_zero(self) -> bool:
        return self.includes(0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pairs(a: Sequence[Any], b: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise SaesteerError(f"paired samples differ in length ({len(a)} vs {len(b)}); score both on the same items")
    if not a:
        raise SaesteerError("no paired items; score both conditions on at least one item")
    return np.asarray(a, dtype=float), np.asarray(b, dtype=float)


def paired_counts(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, int, int]:
    """``(n11, n10, n01, n00)`` of two binary outcomes on the same items."""
    x, y = _pairs(a, b)
    if not np.isin(x, (0.0, 1.0)).all() or not np.isin(y, (0.0, 1.0)).all():
        raise SaesteerError("paired proportions need 0/1 outcomes; use paired_mean_diff_ci for continuous scores")
    return (
        int(((x == 1) & (y == 1)).sum()),
        int(((x == 1) & (y == 0)).sum()),
        int(((x == 0) & (y == 1)).sum()),
        int(((x == 0) & (y == 0)).sum()),
    )


def tango_score(n10: int, n01: int, n: int, d0: float) -> float:
    """Tango's score statistic ``T(d0)`` for ``mean(a) - mean(b) = d0``."""
    b = -n10 - n01 + (2 * n - n10 + n01) * d0
    c = -n01 * d0 * (1 - d0)
    q = (-b + math.sqrt(max(b * b - 8 * n * c, 0.0))) / (4 * n)
    var = n * (2 * q + d0 * (1 - d0))
    num = n10 - n01 - n * d0
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def paired_diff_ci(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> PairedEstimate:
    """``mean(a) - mean(b)`` of binary outcomes on the same items, with Tango's score interval."""
    _, n10, n01, _ = paired_counts(a, b)
    n = len(a)
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    d = (n10 - n01) / n
    eps = 1e-12

    def f(d0: float, target: float) -> float:
        return tango_score(n10, n01, n, d0) - target

    lo = -1.0 if f(-1 + eps, z) <= 0 else optimize.brentq(f, -1 + eps, min(d, 1 - eps), args=(z,), xtol=1e-12)
    hi = 1.0 if f(1 - eps, -z) >= 0 else optimize.brentq(f, max(d, -1 + eps), 1 - eps, args=(-z,), xtol=1e-12)
    return PairedEstimate(d, float(lo), float(hi), n, TANGO, confidence)


def paired_mean_diff_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedEstimate:
    """``mean(a - b)`` of continuous scores on the same items, with the paired t interval."""
    x, y = _pairs(a, b)
    diff = x - y
    n = len(diff)
    m = float(diff.mean())
    if n < 2:
        return PairedEstimate(m, math.nan, math.nan, n, PAIRED_T, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(diff.std(ddof=1)) / math.sqrt(n)
    return PairedEstimate(m, m - half, m + half, n, PAIRED_T, confidence)


def paired_bootstrap_ci(
    statistic: Callable[..., Any],
    samples: Sequence[Sequence[float]],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedEstimate:
    """``statistic(*samples)`` with a paired percentile bootstrap interval. ``statistic`` takes arrays whose last
    axis is the item axis and must be vectorised (NumPy). Resamples where it is undefined (NaN or infinite) are
    dropped; if more than 5% are, the interval is undefined (NaN), since it would describe a biased subset."""
    arrays = [np.asarray(s, dtype=float) for s in samples]
    n = len(arrays[0])
    if n == 0 or any(len(x) != n for x in arrays):
        raise SaesteerError("paired bootstrap needs samples of one non-zero length (the same items)")
    with np.errstate(divide="ignore", invalid="ignore"):
        est = float(statistic(*arrays))
        rng = np.random.default_rng(seed)
        dist = stats.bootstrap(
            arrays,
            lambda *xs, axis=-1: statistic(*xs),
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            method="percentile",
            rng=rng,
        ).bootstrap_distribution
    finite = dist[np.isfinite(dist)]
    if len(finite) < 0.95 * len(dist):
        return PairedEstimate(est, math.nan, math.nan, n, BOOTSTRAP + "; undefined in >5% of resamples", confidence)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return PairedEstimate(est, float(lo), float(hi), n, BOOTSTRAP, confidence)


# --- the study's named differences -----------------------------------------------------------------------------


def gain(base_refused: Sequence[bool], steered_refused: Sequence[bool]) -> PairedEstimate:
    """Refusal gain on harmful prompts: steered minus unsteered refusal rate (Tango)."""
    return paired_diff_ci(steered_refused, base_refused)


def over_refusal_diff(base_refused: Sequence[bool], steered_refused: Sequence[bool]) -> PairedEstimate:
    """Extra refusals of safe prompts: steered minus unsteered refusal rate on a safe set (Tango)."""
    return paired_diff_ci(steered_refused, base_refused)


def over_refusal_ratio(
    base_refused: Sequence[bool], steered_refused: Sequence[bool], n_resamples: int = 2000, seed: int = 0
) -> PairedEstimate:
    """Steered over unsteered refusal rate on a safe set (paired bootstrap; undefined when the base rate is 0)."""
    return paired_bootstrap_ci(
        lambda b, s: s.mean(axis=-1) / b.mean(axis=-1),
        [base_refused, steered_refused],
        n_resamples=n_resamples,
        seed=seed,
    )


def capability_loss(base_correct: Sequence[bool], steered_correct: Sequence[bool]) -> PairedEstimate:
    """Accuracy lost to steering: unsteered minus steered accuracy on the same questions (Tango)."""
    return paired_diff_ci(base_correct, steered_correct)


def asr_drop(base_success: Sequence[bool], steered_success: Sequence[bool]) -> PairedEstimate:
    """Attack-success rate removed by steering: unsteered minus steered ASR on the same attacks (Tango)."""
    return paired_diff_ci(base_success, steered_success)


def gain_kept(
    base_refused: Sequence[bool],
    full_refused: Sequence[bool],
    partial_refused: Sequence[bool],
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedEstimate:
    """Share of the full condition's refusal gain a partial one (a gated clamp) keeps:
    ``(mean(partial) - mean(base)) / (mean(full) - mean(base))``, paired bootstrap over items."""

    def ratio(b: np.ndarray, f: np.ndarray, p: np.ndarray) -> Any:
        den = f.mean(axis=-1) - b.mean(axis=-1)
        return np.where(den != 0, (p.mean(axis=-1) - b.mean(axis=-1)) / np.where(den != 0, den, 1.0), np.nan)

    return paired_bootstrap_ci(ratio, [base_refused, full_refused, partial_refused], n_resamples=n_resamples, seed=seed)


# --- power-aware wording ---------------------------------------------------------------------------------------


def mde_paired(n: int, discordant: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest ``|mean(a) - mean(b)|`` McNemar's test detects with ``power`` at two-sided ``alpha`` on ``n``
    pairs whose discordant share (pairs that differ) is ``discordant`` (Connor 1987). NaN if none is detectable."""
    if n < 1 or not 0 < alpha < 1 or not 0 < power < 1:
        raise SaesteerError(f"mde_paired needs n >= 1, 0 < alpha < 1, 0 < power < 1 (got {n}, {alpha}, {power})")
    if not 0 < discordant <= 1:
        raise SaesteerError(f"discordant share {discordant} must be in (0, 1]; a guess such as 0.1 will do")
    za, zb = float(stats.norm.ppf(1 - alpha / 2)), float(stats.norm.ppf(power))

    def needed(d: float) -> float:
        return (za * math.sqrt(discordant) + zb * math.sqrt(max(discordant - d * d, 0.0))) ** 2 / (d * d) - n

    top = discordant * (1 - 1e-12)
    if needed(top) > 0:
        return math.nan
    return float(optimize.brentq(needed, 1e-9, top, xtol=1e-10))


def discordant_share(a: Sequence[bool], b: Sequence[bool], floor: float = 0.05) -> float:
    """Observed share of pairs that differ, at least ``floor`` (a design value for :func:`mde_paired` that does not
    collapse to zero when a small sample happens to have no discordant pair)."""
    _, n10, n01, _ = paired_counts(a, b)
    return max(floor, (n10 + n01) / len(a))


def includes_chance(lo: float, hi: float, chance: float) -> bool:
    """True when a rate's interval ``[lo, hi]`` includes the chance rate (MMLU 0.25): the baseline is not
    distinguishable from guessing, so no loss can be measured on it."""
    return lo <= chance <= hi


def describe(label: str, est: PairedEstimate, mde: float | None = None, unit: str = "pts") -> str:
    """One power-aware claim: the estimate and interval when it excludes zero, else ``not detectable at n=...``
    with the minimum detectable effect."""
    scale = 100.0 if unit == "pts" else 1.0
    body = f"{scale * est.estimate:+.1f} {unit} [{scale * est.lo:+.1f}, {scale * est.hi:+.1f}] (n={est.n})"
    if not est.includes_zero():
        return f"{label}: {body}"
    tail = "" if mde is None or math.isnan(mde) else f"; minimum detectable effect {scale * mde:.1f} {unit}"
    return f"{label}: not detectable at n={est.n} ({body}{tail})"
