"""Threshold choice by the gain-vs-over-refusal objective, the budget rule and AUROC, against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.gating.threshold import Objective, auroc, best_under_budget, choose_threshold, fire_rate


def _j(pos, hard, alp, t, obj):  # type: ignore[no-untyped-def]
    return fire_rate(pos, t) - obj.lam_hard * fire_rate(hard, t) - obj.lam_alpaca * fire_rate(alp, t)


def test_objective_trades_gain_against_look_alike_firings() -> None:
    pos, hard, alp = [1.0, 2.0, 3.0, 4.0], [2.5], [0.0]
    # lam_hard 2: firing on the look-alike (t < 2.5) costs more than the two harmful prompts it would add
    assert choose_threshold(pos, hard, alp, Objective(2.0, 4.0)) == 2.75
    # a cheap look-alike: fire on every harmful prompt, still not on Alpaca (lam_alpaca 4)
    assert choose_threshold(pos, hard, alp, Objective(0.1, 4.0)) == 0.5
    # Alpaca free too: the lowest cut (ties go to the highest threshold, which is 0.5's J=0.9 vs -inf's 0.9)
    assert choose_threshold(pos, hard, alp, Objective(0.1, 0.0)) == 0.5


def test_chosen_threshold_is_optimal_and_monotone_in_the_penalty() -> None:
    g = torch.Generator().manual_seed(0)
    pos, hard, alp = (
        torch.randn(80, generator=g) + 1.5,
        torch.randn(60, generator=g) + 0.8,
        torch.randn(70, generator=g),
    )
    grid = torch.linspace(-5, 6, 2001).tolist()
    last = -math.inf
    for lam in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
        obj = Objective(lam, 2 * lam)
        t = choose_threshold(pos, hard, alp, obj)
        assert _j(pos, hard, alp, t, obj) >= max(_j(pos, hard, alp, u, obj) for u in grid) - 1e-12
        assert t >= last  # a dearer false alarm never lowers the threshold
        last = t


def test_best_under_budget_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    pos, hard, alp = (
        torch.randn(50, generator=g) + 1.0,
        torch.randn(40, generator=g) + 0.5,
        torch.randn(60, generator=g),
    )
    t, tpr = best_under_budget(pos, hard, alp, 0.15, 0.05)
    assert fire_rate(hard, t) <= 0.15 and fire_rate(alp, t) <= 0.05 and tpr == fire_rate(pos, t)
    ok = [u for u in torch.linspace(-5, 6, 4001).tolist() if fire_rate(hard, u) <= 0.15 and fire_rate(alp, u) <= 0.05]
    assert tpr == pytest.approx(max(fire_rate(pos, u) for u in ok))


def test_auroc_counts_pairs() -> None:
    g = torch.Generator().manual_seed(2)
    p, n = torch.randn(30, generator=g).round(decimals=1), torch.randn(40, generator=g).round(decimals=1)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in p.tolist() for b in n.tolist()]
    a, lo, hi = auroc(p, n)
    assert a == pytest.approx(sum(pairs) / len(pairs))
    assert lo < a < hi
    assert auroc([2.0, 3.0], [0.0, 1.0])[0] == 1.0
    for bad in ([], [float("nan")]):
        with pytest.raises(SaesteerError):
            choose_threshold(bad, [1.0], [1.0])
    with pytest.raises(SaesteerError):
        Objective(-1.0, 1.0)
