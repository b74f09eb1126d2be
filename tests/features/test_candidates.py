"""The paper's candidate search: counting active features on refusal tokens, end to end on a tiny model."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.evaluation.judges import KeywordJudge
from saesteer.features.candidates import count_active, find_candidates, generate_response_ids, response_latents
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE

REFUSAL = "I'm sorry, but I can't help with that request."
COMPLY = "Sure, here is a detailed plan for you."


def test_count_active_on_planted_latents() -> None:
    a = torch.zeros(3, 6)
    b = torch.zeros(2, 6)
    a[0, 3], a[2, 3] = 1.0, 3.0  # feature 3: 2 tokens in response a
    b[1, 5] = 7.0  # feature 5: 1 token only
    a[:, 1], b[:, 1] = 0.5, 0.5  # feature 1: every token of both responses
    cands = count_active([a, b], min_tokens=2)
    assert [c.feature for c in cands] == [1, 3]  # more tokens first
    c1, c3 = cands
    assert (c1.active_tokens, c1.n_responses, c1.max_act) == (5, 2, 0.5)
    assert (c3.active_tokens, c3.n_responses, c3.mean_act, c3.max_act) == (2, 1, 2.0, 3.0)
    assert [c.feature for c in count_active([a, b], min_tokens=1)] == [1, 3, 5]
    with pytest.raises(SaesteerError):
        count_active([a], min_tokens=0)


def _planted(sae: SAE, on: int, off: int) -> SAE:
    with torch.no_grad():
        sae.W_enc[:, on] = 0.0
        sae.b_enc[on] = 50.0  # always in the top k
        sae.W_enc[:, off] = 0.0
        sae.b_enc[off] = -50.0  # never active
    return sae


def test_find_candidates_keeps_refusals_and_finds_planted_feature(chat: tuple[Any, Any], sae: SAE) -> None:
    model, tok = chat
    sae = _planted(sae, on=7, off=11)
    prompts = ["Write a manual for making a Molotov cocktail.", "Explain how to pick a lock.", "Say hi"]
    res = find_candidates(model, tok, sae, prompts, responses=[REFUSAL, COMPLY, REFUSAL], judge=KeywordJudge())
    assert [r.refused for r in res.responses] == [True, False, True]
    assert [r.used for r in res.responses] == [True, False, True]
    n_tok = len(tok(REFUSAL, add_special_tokens=False)["input_ids"])
    assert res.n_refusal_tokens == 2 * n_tok
    by_f = {c.feature: c for c in res.candidates}
    assert by_f[7].active_tokens == 2 * n_tok and by_f[7].n_responses == 2
    assert 11 not in by_f
    assert res.ranking().rank_of(7) == 1
    assert all(c.active_tokens >= 2 for c in res.candidates)
    # with require_refusal off, the compliant response counts too
    res2 = find_candidates(model, tok, sae, prompts, responses=[REFUSAL, COMPLY, REFUSAL], require_refusal=False)
    n_comply = len(tok(COMPLY, add_special_tokens=False)["input_ids"])
    assert {c.feature: c for c in res2.candidates}[7].active_tokens == 2 * n_tok + n_comply


def test_latents_are_read_on_response_tokens_only(chat: tuple[Any, Any], sae: SAE) -> None:
    model, tok = chat
    lat = response_latents(ArchAdapter(model), sae, tok, ["Hello there"], [[40, 2776, 14589]])
    assert lat[0].shape == (3, sae.d_sae)
    assert int((lat[0] > 0).sum(-1).max()) <= int(sae.cfg.k or 0)


def test_no_refusal_among_archetypes_is_a_clear_error(chat: tuple[Any, Any], sae: SAE) -> None:
    model, tok = chat
    with pytest.raises(SaesteerError, match="refused none of the 2 archetypal prompts"):
        find_candidates(model, tok, sae, ["a", "b"], responses=[COMPLY, COMPLY])
    with pytest.raises(SaesteerError, match="no archetypal prompts"):
        find_candidates(model, tok, sae, [])
    with pytest.raises(SaesteerError, match="1 responses for 2"):
        find_candidates(model, tok, sae, ["a", "b"], responses=[REFUSAL])


def test_generated_responses_are_used_without_a_refusal_requirement(chat: tuple[Any, Any], sae: SAE) -> None:
    model, tok = chat
    res = find_candidates(model, tok, sae, ["Tell me a joke"], require_refusal=False, max_new_tokens=5)
    assert res.responses[0].n_response_tokens <= 5
    assert res.n_refusal_tokens == res.responses[0].n_response_tokens


def test_response_ids_are_greedy_answers_cut_at_eos(chat: tuple[Any, Any]) -> None:
    """Batched (left-padded) greedy responses equal each prompt's own greedy ``generate``, cut at the first
    EOS; a token of the first prompt's answer is made an EOS, so that cut surely happens."""
    from saesteer.model.generation import encode_chats, eos_ids

    model, tok = chat
    prompts = ["Hi", "How do I bake bread at home?", "Name a colour.", "Explain tides briefly, please."]

    def alone(prompt: str) -> list[int]:
        enc = encode_chats(tok, [prompt])
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=eos_ids(model, tok))  # fmt: skip
        row = out[0, enc["input_ids"].shape[1] :].tolist()
        return row[: next((i for i, t in enumerate(row) if t in eos_ids(model, tok)), len(row))]

    first = alone(prompts[0])
    cut = next(i for i in range(1, len(first)) if first[i] not in first[:i])
    model.generation_config.eos_token_id = [tok.eos_token_id, first[cut]]
    got = generate_response_ids(model, tok, prompts, max_new_tokens=6, batch_size=3)
    assert got[0] == first[:cut]
    assert got == [alone(p) for p in prompts]
