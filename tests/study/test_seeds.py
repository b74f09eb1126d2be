"""Seed spread: gain and over-refusal per seed against the shared baseline, and feature matching by decoder cosine."""

import math

import pytest
import torch

from saesteer.report.results import ResultRow, ResultsTable
from saesteer.study.seeds import SeedRun, seed_summary


def _table() -> ResultsTable:
    t = ResultsTable()
    t.add(ResultRow.from_rate("baseline", "baseline", "unsafe_refusal", 10, 40))
    t.add(ResultRow.from_rate("baseline", "baseline", "safe_refusal", 4, 40))
    return t


def _unit(*v: float) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(v), dim=0)


def test_spread_and_matching() -> None:
    runs = [
        SeedRun(0, 7, _unit(1.0, 0.0, 0.0), "clamp", unsafe=0.50, safe=0.20, n_unsafe=40, n_safe=40),
        SeedRun(1, 9, _unit(0.8, 0.6, 0.0), "clamp", unsafe=0.40, safe=0.10, n_unsafe=40, n_safe=40),  # cos 0.8
        SeedRun(2, 7, _unit(0.0, 1.0, 0.0), "clamp", unsafe=0.60, safe=0.30, n_unsafe=40, n_safe=40),  # same index
    ]
    s = seed_summary(runs, _table())
    gains = [r["gain"] for r in s["seeds"]]
    assert gains == pytest.approx([0.25, 0.15, 0.35])
    assert s["gain"]["min"] == pytest.approx(0.15) and s["gain"]["max"] == pytest.approx(0.35)
    assert s["gain"]["sd"] == pytest.approx(0.1)
    assert [r["over_refusal"] for r in s["seeds"]] == pytest.approx([2.0, 1.0, 3.0])
    assert [r["same_feature"] for r in s["seeds"]] == [True, True, True] and s["all_match"]
    runs[1] = SeedRun(1, 9, _unit(0.6, 0.8, 0.0), "clamp", unsafe=0.4, safe=0.1, n_unsafe=40, n_safe=40)  # cos 0.6
    s = seed_summary(runs, _table())
    assert s["seeds"][1]["cos_first"] == pytest.approx(0.6) and not s["seeds"][1]["same_feature"]
    assert not s["all_match"]


def test_a_seed_without_a_feature_has_no_gain() -> None:
    runs = [SeedRun(0, 7, _unit(1.0, 0.0), "clamp", 0.5, 0.2, 40, 40), SeedRun(1, None, None, None)]
    s = seed_summary(runs, _table())
    assert math.isnan(s["seeds"][1]["gain"]) and s["gain"]["n_seeds"] == 1


def test_paired_intervals_per_seed() -> None:
    """Each seed's gain and over-refusal get intervals paired on the baseline's items; 'holds in every seed'
    needs every seed's interval to exclude no effect."""
    base = [1.0] * 10 + [0.0] * 30  # unsafe: 10 of 40 refused; safe: the same 10 of 40
    t = ResultsTable()
    t.add(ResultRow.from_rate("baseline", "baseline", "unsafe_refusal", 10, 40), items=dict(enumerate(base)))
    t.add(ResultRow.from_rate("baseline", "baseline", "safe_refusal", 10, 40), items=dict(enumerate(base)))
    strong = {str(i): 1.0 if i < 30 else 0.0 for i in range(40)}  # 20 more refusals, none lost
    same = {str(i): v for i, v in enumerate(base)}
    runs = [
        SeedRun(0, 7, _unit(1.0, 0.0), "clamp", 0.75, 0.75, 40, 40, strong, strong),
        SeedRun(1, 9, _unit(0.0, 1.0), "clamp", 0.25, 0.25, 40, 40, same, same),
    ]
    s = seed_summary(runs, t)
    lo, hi = s["seeds"][0]["gain_ci"]
    assert 0 < lo < 0.5 < hi <= 1 and s["seeds"][0]["over_refusal_ci"][0] > 1
    lo, hi = s["seeds"][1]["gain_ci"]
    assert lo < 0 < hi  # no change: the interval straddles zero
    assert not s["gain_positive_every_seed"] and not s["over_refusal_every_seed"]
    runs[1] = SeedRun(1, 9, _unit(0.0, 1.0), "clamp", 0.75, 0.75, 40, 40, strong, strong)
    s = seed_summary(runs, t)
    assert s["gain_positive_every_seed"] and s["over_refusal_every_seed"]
