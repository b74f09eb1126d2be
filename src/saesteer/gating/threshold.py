"""Choosing a gate's threshold on dev scores, by what it keeps against what it costs.

A gate fires on a prompt when its score is ``> t``. On dev prompts, ``TPR(t)`` is the firing rate on
harmful prompts (the share of the clamp's refusal gain the gate keeps, if the clamp helps every
harmful prompt alike), ``FPR_hard(t)`` on safe prompts that look unsafe (XSTest-safe, JBB-benign) and
``FPR_alpaca(t)`` on plain harmless instructions (each a share of the clamp's over-refusal that the
gate lets through). The threshold maximises

    J(t) = TPR(t) - lam_hard * FPR_hard(t) - lam_alpaca * FPR_alpaca(t)

over every distinct cut between dev scores (ties: the higher threshold, i.e. fewer firings). The
defaults ``lam_hard = 2``, ``lam_alpaca = 4`` price the goal's budgets: keep >= 90% of the gain at
over-refusal <= x1.3 on look-alikes (with the clamp tripling their refusals, FPR_hard <= 15%) and
<= +2 pts on Alpaca (FPR_alpaca <= ~7%); a look-alike firing costs twice, an Alpaca firing four times
a missed harmful prompt. :func:`best_under_budget` gives the other reading: the largest TPR whose
FPRs stay within stated budgets. :func:`auroc` measures separation without any threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saesteer.errors import SaesteerError

Scores = torch.Tensor | Sequence[float]


@dataclass(frozen=True)
class Objective:
    """``J = TPR - lam_hard * FPR_hard - lam_alpaca * FPR_alpaca`` (see the module docstring)."""

    lam_hard: float = 2.0
    lam_alpaca: float = 4.0

    def __post_init__(self) -> None:
        if not (self.lam_hard >= 0 and self.lam_alpaca >= 0):
            raise SaesteerError(f"objective weights must be >= 0, got {self.lam_hard}, {self.lam_alpaca}")

    def describe(self) -> str:
        return f"max TPR - {self.lam_hard:g}*FPR_hard - {self.lam_alpaca:g}*FPR_alpaca"


def _vec(s: Scores, what: str) -> torch.Tensor:
    t = torch.as_tensor(s, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise SaesteerError(f"no {what} scores; score a dev split first")
    if not bool(torch.isfinite(t).all()):
        raise SaesteerError(f"{what} scores contain NaN or inf; check the scorer")
    return t


def fire_rate(scores: Scores, threshold: float) -> float:
    """Share of scores above ``threshold``."""
    return float((_vec(scores, "gate") > threshold).double().mean())


def cuts(*groups: torch.Tensor) -> torch.Tensor:
    """Candidate thresholds: below every score, midway between adjacent distinct scores, and above all (by half
    the top gap, so no cut sits on a score where rounding could flip a firing)."""
    u = torch.unique(torch.cat(groups))
    mids = (u[1:] + u[:-1]) / 2
    top = u[-1:] + ((u[-1:] - u[-2:-1]) / 2 if u.numel() > 1 else 1.0)
    return torch.cat([torch.tensor([-math.inf], dtype=torch.float64), mids, top])


def _rates(s: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    return (s[None, :] > thr[:, None]).double().mean(1)


def choose_threshold(harmful: Scores, hard: Scores, alpaca: Scores, objective: Objective | None = None) -> float:
    """The threshold that maximises ``objective`` on dev scores (ties: the highest)."""
    obj = objective or Objective()
    pos, hn, al = _vec(harmful, "harmful"), _vec(hard, "hard-negative"), _vec(alpaca, "Alpaca")
    thr = cuts(pos, hn, al)
    j = _rates(pos, thr) - obj.lam_hard * _rates(hn, thr) - obj.lam_alpaca * _rates(al, thr)
    best = float(j.max())
    return float(thr[(j >= best - 1e-12).nonzero().flatten()[-1]])


def best_under_budget(
    harmful: Scores, hard: Scores, alpaca: Scores, max_fpr_hard: float = 0.15, max_fpr_alpaca: float = 0.067
) -> tuple[float, float]:
    """(threshold, TPR): the largest TPR whose FPRs stay within the budgets (the lowest such threshold)."""
    pos, hn, al = _vec(harmful, "harmful"), _vec(hard, "hard-negative"), _vec(alpaca, "Alpaca")
    thr = cuts(pos, hn, al)
    ok = (_rates(hn, thr) <= max_fpr_hard + 1e-12) & (_rates(al, thr) <= max_fpr_alpaca + 1e-12)
    i = int(ok.nonzero().flatten()[0])  # the highest cut fires on nothing, so some cut is always within budget
    return float(thr[i]), float(_rates(pos, thr[i : i + 1])[0])


def auroc(positive: Scores, negative: Scores) -> tuple[float, float, float]:
    """Area under the ROC curve (Mann-Whitney, ties count half) with a Hanley-McNeil 95% interval."""
    p, n = _vec(positive, "positive"), _vec(negative, "negative")
    gt = (p[:, None] > n[None, :]).double().mean()
    eq = (p[:, None] == n[None, :]).double().mean()
    a = float(gt + 0.5 * eq)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    n1, n2 = p.numel(), n.numel()
    var = (a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2)
    half = 1.96 * math.sqrt(max(var, 0.0))
    return a, max(0.0, a - half), min(1.0, a + half)
