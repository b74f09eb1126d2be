"""KL / cross-entropy of a steered model on the unsteered model's own answers, against a plain recomputation."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch

from saesteer.evaluation.divergence import base_responses, steering_divergence
from saesteer.steering import AddDirection, Steering
from saesteer.steering.gate import Gate, ProjectionScorer, prompt_scores

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["Write a haiku about rain.", "List three fruits.", "What is 2 + 2?", "Name a colour."]


def one_row_reference(model: Any, tok: Any, prompt: str, response: str, steering: Steering) -> tuple[float, float]:
    """KL and steered CE of one prompt from two unbatched forwards over the whole chat text."""
    chat = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ctx = tok(chat, add_special_tokens=False)["input_ids"]
    ans = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + ans])
    with torch.no_grad():
        p = torch.log_softmax(model(ids).logits[0, len(ctx) - 1 : -1].float(), -1)
        with steering.apply(model):
            q = torch.log_softmax(model(ids).logits[0, len(ctx) - 1 : -1].float(), -1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    ce = float(-q.gather(-1, torch.tensor(ans)[:, None]).mean())
    return kl, ce


def test_divergence_matches_unbatched_recomputation(tiny_qwen_chat: tuple[Any, Any]) -> None:
    model, tok = tiny_qwen_chat
    responses = base_responses(model, tok, PROMPTS, max_new_tokens=6, batch_size=4)
    steer = Steering(
        model, None, [AddDirection(torch.randn(64, generator=torch.Generator().manual_seed(0)), 4.0)], hook=HOOK
    )
    res = steering_divergence(model, tok, PROMPTS, responses, steer, batch_size=3)
    assert res.n == 4 and res.kl > 0 and res.kl_ci[0] <= res.kl <= res.kl_ci[1]
    for i, (p, r) in enumerate(zip(PROMPTS, responses, strict=True)):
        kl, ce = one_row_reference(model, tok, p, r, steer)
        assert res.records[i]["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-6)
        assert res.records[i]["ce_steered"] == pytest.approx(ce, rel=1e-4)
    assert res.delta_ce == pytest.approx(res.ce_steered - res.ce_base, abs=1e-9)


def test_no_op_steering_gives_zero(tiny_qwen_chat: tuple[Any, Any]) -> None:
    model, tok = tiny_qwen_chat
    responses = base_responses(model, tok, PROMPTS[:2], max_new_tokens=5)
    res = steering_divergence(model, tok, PROMPTS[:2], responses, nullcontext)
    assert res.kl == pytest.approx(0.0, abs=1e-6) and res.delta_ce == pytest.approx(0.0, abs=1e-6)


def test_gated_steering_leaves_unfired_prompts_untouched(tiny_qwen_chat: tuple[Any, Any]) -> None:
    model, tok = tiny_qwen_chat
    responses = base_responses(model, tok, PROMPTS, max_new_tokens=5)
    gate = Gate(ProjectionScorer(torch.randn(64, generator=torch.Generator().manual_seed(3))), 0.0, HOOK, "mean")
    s = prompt_scores(model, tok, PROMPTS, gate).sort().values
    gate = gate.with_threshold(float(s[1:3].mean()))  # two of four fire
    steer = Steering(model, None, [AddDirection(torch.ones(64), 4.0)], hook=HOOK, gate=gate)
    res = steering_divergence(model, tok, PROMPTS, responses, steer)
    assert res.settings["gate"]["fired"] == 2
    assert sorted(r["kl"] == 0.0 for r in res.records) == [False, False, True, True]
