"""The one-pass refusal score: token sets, the score itself, AUROC, calibration, batching."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.features.refusal_score import (
    RefusalTokens,
    auroc,
    calibrate_score,
    first_token_ids,
    score_prompts,
)


def test_first_token_ids_dedupes_and_takes_the_first_piece(qwen_tokenizer: Any) -> None:
    ids = first_token_ids(qwen_tokenizer, ["I", "I'm", "Sorry", "I cannot", ""])
    assert len(ids) == 2
    assert qwen_tokenizer.decode([ids[0]]) == "I"
    assert qwen_tokenizer.decode([ids[1]]) == "Sorry"


def test_logodds_score_matches_its_definition() -> None:
    tok = RefusalTokens([1, 3], [0], mode="logodds")
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.0, 0.0], [3.0, -2.0, 0.0, -4.0, 1.0]])
    p = torch.softmax(logits, -1)
    pr = p[:, 1] + p[:, 3]
    want = torch.log(pr / (1 - pr))
    assert torch.allclose(tok.score(logits), want, atol=1e-5)
    # refusal mass near 1 stays finite and large
    sharp = torch.tensor([[0.0, 40.0, 0.0, 0.0, 0.0]])
    assert math.isfinite(float(tok.score(sharp))) and float(tok.score(sharp)) > 30


def test_diff_score_and_overlap_removal() -> None:
    tok = RefusalTokens([1], [1, 2], mode="diff")
    assert tok.compliance_ids == [2]  # a refusal token is never counted as compliance
    logits = torch.tensor([[0.0, 1.0, 3.0]])
    assert float(tok.score(logits)) == pytest.approx(-2.0, abs=1e-5)


def test_bad_token_settings() -> None:
    with pytest.raises(SaesteerError, match="refusal first tokens"):
        RefusalTokens([], [1])
    with pytest.raises(SaesteerError, match="mode"):
        RefusalTokens([1], [2], mode="nope")
    with pytest.raises(SaesteerError, match="vocabulary"):
        RefusalTokens([99], [2]).validate(10)


def test_auroc_known_values() -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert math.isnan(auroc([0.1, 0.2], [True, True]))


def test_calibration_threshold_and_degenerate_cases() -> None:
    c = calibrate_score([-3.0, -2.0, 1.0, 2.0, 0.5], [False, False, True, True, False])
    assert c.threshold is not None and 0.5 < c.threshold < 1.0
    assert c.agreement == 1.0 and c.auroc == 1.0 and c.n_refusals == 2
    assert c.threshold == pytest.approx(0.75)
    assert c.predict(torch.tensor([0.7, 0.8])).tolist() == [False, True]
    none = calibrate_score([1.0, 2.0], [False, False])
    assert none.threshold is None and none.agreement == 1.0
    assert not none.predict(torch.tensor([5.0])).any()
    with pytest.raises(SaesteerError):
        calibrate_score([1.0], [True, False])


def test_batched_left_padded_scores_equal_single_prompt_scores(chat: tuple[Any, Any]) -> None:
    model, tok = chat
    rt = RefusalTokens.from_words(tok)
    prompts = ["Hi", "Write a long poem about the sea and the sky at night", "How are you?"]
    batched = score_prompts(model, tok, prompts, rt, batch_size=3)
    single = torch.cat([score_prompts(model, tok, [p], rt, batch_size=1) for p in prompts])
    assert torch.allclose(batched, single, atol=1e-4)
    with pytest.raises(SaesteerError, match="no prompts"):
        score_prompts(model, tok, [], rt)
