"""Control feature choice on constructed statistics, and its neutrality check on a tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.features import discovery as dv
from saesteer.features.contexts import FeatureStats
from saesteer.features.control import ControlCheck, ControlVerifier, control_candidates, pick_control, stand_in
from saesteer.features.pipeline import load_prompts
from saesteer.features.rankers import Ranking
from saesteer.features.refusal_score import calibrate_score
from saesteer.model.adapter import ArchAdapter
from saesteer.stages import StageRunner
from tests.features.test_pipeline import PLANTED, judge, planted_sae, small_cfg


def _stats() -> FeatureStats:
    freq = torch.tensor([0.01, 0.5, 0.012, 0.009, 0.0, 0.011])
    mean = torch.tensor([2.0, 2.0, 1.9, 0.2, 0.0, 2.1])
    return FeatureStats(freq, mean, mean * 3, 1000)


def test_picks_the_topic_feature_with_the_closest_statistics() -> None:
    topics = Ranking("topic", [5, 1, 3, 2, 4], [5.0, 4.0, 3.0, 2.0, 1.0])
    cos = torch.tensor([0.9, 0.0, 0.05, 0.0, 0.0, 0.3])
    c = pick_control(topics, _stats(), target=0, exclude=[], cosine=cos, max_cos=0.1)
    # 5 is too aligned with the refusal direction, 1 fires 50x as often, 3 is 10x weaker, 4 is dead
    assert c.feature == 2 and c.topic_rank == 4 and c.considered == 3
    assert c.target_freq == pytest.approx(0.01) and c.distance is not None and c.distance < 0.11
    c2 = pick_control(topics, _stats(), target=0, exclude=[2], cosine=cos)
    assert c2.feature == 3  # next closest once 2 is excluded (e.g. it was screened)


def test_no_qualifying_control_gives_a_reason() -> None:
    topics = Ranking("topic", [0, 4], [1.0, 0.5])
    c = pick_control(topics, _stats(), target=0)
    assert c.feature is None and "none of the top" in c.reason
    assert c.to_dict()["feature"] is None


def test_candidates_exclude_decoders_aligned_with_the_chosen_feature() -> None:
    topics = Ranking("topic", [5, 1, 3, 2, 4], [5.0, 4.0, 3.0, 2.0, 1.0])
    chosen = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0, 0.0])  # feature 2's decoder is close to the chosen one's
    found = control_candidates(topics, _stats(), target=0, cosine=None, max_cos=0.1, chosen_cosine=chosen)
    assert [c.feature for c in found] == [5, 3, 1]  # by statistics distance; 2 is out
    assert found[0].cosine_with_chosen == 0.0 and found[0].considered == 3


def _verifier(chat: tuple[Any, Any], tmp_path: Path, sae: Any) -> ControlVerifier:
    """The verifier as find_features wires it: the screen's runner and clamped, judged generation."""
    model, tok = chat
    cfg = small_cfg(tmp_path, control_n_generate=2)
    run = dv.Run(ArchAdapter(model), tok, sae, cfg, judge(), load_prompts(cfg), "tiny", "fp", StageRunner(tmp_path))
    run.progress = False
    screen = run.screen
    gen = dv.clamp_generate(run, run.prompts.harm[:2], run.prompts.safe[:2])

    def refusals(f: int | None, v: float) -> tuple[list[bool], list[bool]]:
        (_, rh), (_, rs) = gen(f, v)
        return rh, rs

    calib = calibrate_score(screen.baseline, [False] * screen.n)  # the tiny model never refuses
    return ControlVerifier(screen.scores, screen.baseline, run.is_harm, calib, refusals, band=0.05, gen_band=0.1)


def test_verifier_rejects_a_refusal_feature_and_accepts_a_neutral_one(chat: tuple[Any, Any], tmp_path: Path) -> None:
    sae = planted_sae(*chat)  # PLANTED's decoder writes the refusal token "Sorry"
    neutral = 5
    with torch.no_grad():
        sae.W_dec[neutral] *= 1e-4  # clamping it barely moves the residual stream
    v = _verifier(chat, tmp_path, sae)
    bad = v.check(PLANTED, 60.0, 20.0)
    assert not bad.passed and bad.cheap_unsafe_delta > 0.05 and bad.gen_unsafe_delta is None  # no generation
    assert "outside the band" in bad.reason and bad.cheap_measure.startswith("sigmoid")
    good = v.check(neutral, 60.0, 20.0)
    assert good.passed and abs(good.cheap_unsafe_delta) < 1e-3 and abs(good.cheap_safe_delta) < 1e-3
    assert good.gen_n == 2 and good.gen_unsafe_delta == 0.0 and good.gen_safe_delta == 0.0
    assert good.to_dict()["band"] == 0.05


def _check(feature: int, unsafe: float, safe: float) -> ControlCheck:
    return ControlCheck(feature, 1.0, 2.0, 0.0, 0.0, "sigmoid", 32, unsafe, safe, 0, None, None, 0.05, 0.1, False, "")


def test_the_stand_in_is_the_candidate_that_moved_refusal_least() -> None:
    checks = [_check(1, -0.28, -0.06), _check(2, 0.09, 0.03), _check(3, -0.03, 0.09), _check(4, 0.09, -0.01)]
    best = stand_in(checks)
    assert best is not None and best.feature == 2  # max |change| 0.09 ties 3 and 4; the first (best match) wins
    assert stand_in([_check(5, 0.5, 0.0), _check(6, 0.0, -0.4)]).feature == 6  # type: ignore[union-attr]
    assert stand_in([]) is None
