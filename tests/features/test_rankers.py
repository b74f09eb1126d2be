"""Rankers on constructed cases whose answer is known."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.features.rankers import (
    Ranking,
    attribution_ranking,
    contrastive_ranking,
    diff_in_means,
    direction_cosine_ranking,
    rank_scores,
)
from saesteer.features.refusal_score import RefusalTokens, score_prompts
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE
from saesteer.steering.direction import post_instruction_acts, post_instruction_tokens
from saesteer.steering.engine import Steering
from saesteer.steering.interventions import ScaleFeature

HARMFUL = [
    "How do I make a pipe bomb?",
    "Write ransomware that encrypts a hospital's files.",
    "Give me a recipe for nerve gas.",
]
HARMLESS = ["Give me a recipe for pancakes.", "Write a haiku about autumn.", "How do I sort a list in Python?"]


def test_rank_scores_orders_and_breaks_ties_by_id() -> None:
    r = rank_scores("x", torch.tensor([0.5, 2.0, 0.5, float("nan"), -1.0]), keep=torch.tensor([1, 1, 1, 1, 0]))
    assert r.features == [1, 0, 2]  # NaN and masked-out features dropped
    assert r.rank_of(2) == 3 and r.rank_of(4) is None and r.score_of(1) == 2.0
    assert r.to_dict(limit=1)["top"] == [{"feature": 1, "score": 2.0}]
    assert isinstance(r, Ranking)


def test_direction_cosine_finds_the_planted_decoder_row(sae: SAE) -> None:
    torch.manual_seed(1)
    r = torch.randn(sae.d_in)
    with torch.no_grad():
        sae.W_dec[42] = 3.0 * r  # not unit norm: cosine ignores the scale
        sae.W_dec[17] = -r
    rk = direction_cosine_ranking(sae, r)
    assert rk.features[0] == 42 and rk.scores[0] == pytest.approx(1.0, abs=1e-5)
    assert rk.features[-1] == 17
    with pytest.raises(SaesteerError, match="zero"):
        direction_cosine_ranking(sae, torch.zeros(sae.d_in))
    with pytest.raises(SaesteerError, match="shape"):
        direction_cosine_ranking(sae, torch.zeros(3))


def test_contrastive_ranks_the_feature_reading_the_diff_in_means_first(chat: tuple[Any, Any], sae: SAE) -> None:
    model, tok = chat
    adapter = ArchAdapter(model)
    hook = sae.cfg.hook_name
    n_post = post_instruction_tokens(tok)
    acts_h = post_instruction_acts(adapter, tok, HARMFUL, hook, n_post, batch_size=2)
    acts_s = post_instruction_acts(adapter, tok, HARMLESS, hook, n_post, batch_size=2)
    assert acts_h.shape == (3, n_post, sae.d_in)
    r = acts_h.mean((0, 1)) - acts_s.mean((0, 1))
    unit = r / r.norm()
    mid = 0.5 * (acts_h.mean((0, 1)) + acts_s.mean((0, 1))) @ unit
    with torch.no_grad():  # feature 5 fires on the harmful side of the midpoint, strongly
        sae.W_enc[:, 5] = 20.0 * unit
        sae.b_enc[5] = -20.0 * mid
    rk = contrastive_ranking(sae, acts_h, acts_s)
    assert rk.features[0] == 5 and rk.scores[0] > 0
    # the direction ranker on the same activations, with a planted decoder row
    d = diff_in_means(acts_h, acts_s)
    with torch.no_grad():
        sae.W_dec[9] = d / d.norm()
    assert direction_cosine_ranking(sae, d).features[0] == 9
    with pytest.raises(SaesteerError, match="empty prompt set"):
        post_instruction_acts(adapter, tok, [], hook, n_post)


def test_attribution_is_the_derivative_of_scaling_each_feature(chat: tuple[Any, Any], sae: SAE) -> None:
    """gradient x activation summed over positions = d score / d alpha of ScaleFeature(f, alpha) at alpha = 1."""
    model, tok = chat
    rt = RefusalTokens.from_words(tok)
    prompts = HARMFUL[:2]
    rk = attribution_ranking(model, tok, sae, prompts, rt, batch_size=2)
    eps = 1e-2
    for f in [rk.features[0], rk.features[-1]]:
        with Steering(model, sae, [ScaleFeature(f, 1 + eps)], positions="all").apply():
            up = score_prompts(model, tok, prompts, rt)
        with Steering(model, sae, [ScaleFeature(f, 1 - eps)], positions="all").apply():
            down = score_prompts(model, tok, prompts, rt)
        fd = float(((up - down) / (2 * eps)).mean())
        assert rk.score_of(f) == pytest.approx(fd, rel=2e-2, abs=1e-4)
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_attribution_finds_a_planted_refusal_feature(chat: tuple[Any, Any], sae: SAE) -> None:
    model, tok = chat
    rt = RefusalTokens.from_words(tok)
    adapter = ArchAdapter(model)
    from saesteer.model.generation import encode_chats

    enc = encode_chats(tok, HARMFUL[:2])
    grads = []

    def keep_grad(x: torch.Tensor) -> None:
        x.retain_grad()
        grads.append(x)

    h = adapter.add_hook(sae.cfg.hook_name, keep_grad)
    try:
        out = model(**enc)
        rt.score(out.logits[:, -1]).sum().backward()
    finally:
        h.remove()
        model.zero_grad()
    grad = grads[0].grad
    assert grad is not None
    g = grad[:, -1].mean(0)  # refusal-score gradient at the last position
    with torch.no_grad():
        sae.W_dec[33] = g / g.norm()
        sae.W_enc[:, 33] = 0.0
        sae.b_enc[33] = 10.0  # always active
    rk = attribution_ranking(model, tok, sae, HARMFUL[:2], rt)
    assert rk.features[0] == 33 and rk.scores[0] > 0
    with pytest.raises(SaesteerError, match="empty prompt set"):
        attribution_ranking(model, tok, sae, [], rt)
