"""Pick a control feature: one unrelated to safety, with activation statistics like the chosen feature's.

The paper's ablation clamps a "philosophy" feature as a control, to separate the effect of steering
refusal from the effect of clamping *any* feature that hard. Here the control is found automatically:

1. topic features: mean activation over the tokens of topic prompts (default: philosophy questions)
   minus the mean over harmless prompts, best first (:func:`topic_ranking`);
2. among the top ``n_topic`` with a positive score, drop the chosen feature, every feature in
   ``exclude`` (the safety rankers' top lists and the screened pool) and every feature whose decoder
   row has ``|cosine| > max_cos`` with the refusal direction;
3. keep the one whose firing frequency and mean activation are closest to the chosen feature's
   (distance ``|log10 freq ratio| + |log10 mean-activation ratio|``), ties by topic rank.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

import torch

from saesteer.features.contexts import ContextStore, FeatureStats
from saesteer.features.rankers import Ranking, rank_scores

DEFAULT_TOPIC_PROMPTS: tuple[str, ...] = (
    "What did Kant mean by the categorical imperative?",
    "Explain Plato's allegory of the cave and what it says about knowledge.",
    "Is free will compatible with determinism? Summarise the main philosophical positions.",
    "What is the difference between utilitarianism and virtue ethics?",
    "Describe Descartes' argument 'I think, therefore I am'.",
    "What is existentialism, according to Sartre and Camus?",
    "Explain the problem of induction raised by David Hume.",
    "What is the mind-body problem in the philosophy of mind?",
)


@dataclass
class ControlChoice:
    """The control feature and why it was picked."""

    feature: int | None
    topic_rank: int | None
    topic_score: float | None
    freq: float | None
    mean_act: float | None
    target: int
    target_freq: float
    target_mean_act: float
    distance: float | None
    cosine_with_direction: float | None
    considered: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def topic_ranking(store: ContextStore, topic_source: str = "topic", baseline_source: str = "harmless") -> Ranking:
    """Mean activation (zeros included) on topic-prompt tokens minus on baseline-prompt tokens."""
    t, b = store.stats([topic_source]), store.stats([baseline_source])
    score = t.freq * t.mean_act - b.freq * b.mean_act
    return rank_scores(
        "topic", score, f"mean activation on {topic_source} prompts - on {baseline_source} prompts", keep=score > 0
    )


def _log_ratio(a: float, b: float) -> float:
    return abs(math.log10(max(a, 1e-12)) - math.log10(max(b, 1e-12)))


def pick_control(
    topics: Ranking,
    stats: FeatureStats,
    target: int,
    exclude: Collection[int] = (),
    cosine: torch.Tensor | None = None,
    max_cos: float = 0.1,
    n_topic: int = 50,
) -> ControlChoice:
    """The control feature (see the module docstring); ``feature`` is None with a reason when none qualifies."""
    tf, tm = float(stats.freq[target]), float(stats.mean_act[target])
    excluded = set(int(f) for f in exclude) | {int(target)}
    best: tuple[float, int, int] | None = None
    considered = 0
    for rank, f in enumerate(topics.features[:n_topic], 1):
        if f in excluded or float(stats.freq[f]) <= 0:
            continue
        if cosine is not None and abs(float(cosine[f])) > max_cos:
            continue
        considered += 1
        dist = _log_ratio(float(stats.freq[f]), tf) + _log_ratio(float(stats.mean_act[f]), tm) if tf > 0 else 0.0
        if best is None or (dist, rank) < (best[0], best[1]):
            best = (dist, rank, f)
    if best is None:
        return ControlChoice(
            None,
            None,
            None,
            None,
            None,
            target,
            tf,
            tm,
            None,
            None,
            0,
            f"none of the top {n_topic} topic features is active, unrelated to safety "
            f"(|cos| <= {max_cos}, not in the safety rankers' top lists) and distinct from the target",
        )
    dist, rank, f = best
    return ControlChoice(
        f,
        rank,
        topics.score_of(f),
        float(stats.freq[f]),
        float(stats.mean_act[f]),
        target,
        tf,
        tm,
        dist,
        None if cosine is None else float(cosine[f]),
        considered,
        f"topic feature (rank {rank}) closest in frequency and mean activation to feature {target} "
        f"among {considered} safety-unrelated topic features",
    )
