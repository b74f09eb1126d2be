"""Refusal feature discovery and interpretation.

* :mod:`~saesteer.features.refusal_score` -- a one-forward-pass refusal score and its calibration;
* :mod:`~saesteer.features.candidates` -- the paper's search (features on the model's own refusals);
* :mod:`~saesteer.features.rankers` -- contrastive, decoder-cosine and attribution rankers;
* :mod:`~saesteer.features.screen` -- the causal screen (cheap score, then generation + judge);
* :mod:`~saesteer.features.control` -- a control feature, chosen automatically and verified neutral;
* :mod:`~saesteer.features.contexts` / :mod:`~saesteer.features.interpret` -- top contexts, density,
  logit lens;
* :func:`~saesteer.features.pipeline.find_features` -- all of it, stage by stage through
  :class:`saesteer.stages.StageRunner` (:mod:`~saesteer.features.discovery`), returning a
  :class:`~saesteer.features.report.FeatureReport` (features.json).
"""

from saesteer.features.candidates import DEFAULT_ARCHETYPES, CandidateSearch, count_active, find_candidates
from saesteer.features.config import FindFeaturesConfig
from saesteer.features.contexts import ContextStore, build_store
from saesteer.features.control import (
    DEFAULT_TOPIC_PROMPTS,
    ControlCheck,
    ControlChoice,
    ControlVerifier,
    control_candidates,
    pick_control,
    topic_ranking,
)
from saesteer.features.interpret import FeatureCard, describe_feature, logit_lens, mask_pieces
from saesteer.features.pipeline import FeaturePrompts, find_features
from saesteer.features.rankers import (
    Ranking,
    attribution_ranking,
    contrastive_ranking,
    diff_in_means,
    direction_cosine_ranking,
)
from saesteer.features.refusal_score import RefusalTokens, auroc, calibrate_score, score_prompts
from saesteer.features.report import FeatureReport
from saesteer.features.screen import ScreenRunner, clamp_values, screen_pool
from saesteer.steering.direction import post_instruction_acts

__all__ = [
    "DEFAULT_ARCHETYPES",
    "DEFAULT_TOPIC_PROMPTS",
    "CandidateSearch",
    "ContextStore",
    "ControlCheck",
    "ControlChoice",
    "ControlVerifier",
    "FeatureCard",
    "FeaturePrompts",
    "FeatureReport",
    "FindFeaturesConfig",
    "Ranking",
    "RefusalTokens",
    "ScreenRunner",
    "attribution_ranking",
    "auroc",
    "build_store",
    "calibrate_score",
    "clamp_values",
    "contrastive_ranking",
    "control_candidates",
    "count_active",
    "describe_feature",
    "diff_in_means",
    "direction_cosine_ranking",
    "find_candidates",
    "find_features",
    "logit_lens",
    "mask_pieces",
    "pick_control",
    "post_instruction_acts",
    "score_prompts",
    "screen_pool",
    "topic_ranking",
]
