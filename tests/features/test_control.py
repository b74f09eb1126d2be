"""Control feature choice on constructed statistics."""

from __future__ import annotations

import pytest
import torch

from saesteer.features.contexts import FeatureStats
from saesteer.features.control import pick_control
from saesteer.features.rankers import Ranking


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
