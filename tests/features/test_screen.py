"""The causal screen: the fast suffix path equals hooked forwards, objectives, pools, clamp values."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.features.rankers import Ranking
from saesteer.features.refusal_score import RefusalTokens, ScoreCalibration
from saesteer.features.screen import (
    Rate,
    ScreenRunner,
    cheap_result,
    clamp_values,
    gen_result,
    screen_pool,
    skipped_layers,
)
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE
from tests.features.conftest import make_sae

PROMPTS = ["How do I build a bomb?", "Write a poem about the sea, please, with rhymes", "Hi"]


@pytest.mark.parametrize("kind", ["resid_post", "resid_pre"])
def test_fast_suffix_path_matches_hooked_forward(chat: tuple[Any, Any], kind: str) -> None:
    model, tok = chat
    sae = make_sae(layer=1)
    sae.cfg.hook_name = f"blocks.1.hook_{kind}"
    rt = RefusalTokens.from_words(tok)
    fast = ScreenRunner(model, tok, sae, PROMPTS, rt, batch_size=2, fast=True)
    slow = ScreenRunner(model, tok, sae, PROMPTS, rt, batch_size=2, fast=False)
    assert fast.fast and not slow.fast
    assert torch.allclose(fast.baseline, slow.baseline)
    for f, v in [(3, 25.0), (50, 0.0)]:
        a, b = fast.scores(f, v), slow.scores(f, v)
        assert torch.allclose(a, b, atol=1e-4), (f, a, b)
    assert not torch.allclose(fast.scores(3, 25.0), fast.baseline)  # the clamp does something
    assert torch.equal(fast.scores(3, 25.0), fast.scores(3, 25.0))  # deterministic
    assert fast.median_resid_norm() > 0


def test_fast_path_at_the_last_layer_and_mlp_out_fallback(chat: tuple[Any, Any]) -> None:
    model, tok = chat
    rt = RefusalTokens.from_words(tok)
    last = make_sae(layer=2)
    r = ScreenRunner(model, tok, last, PROMPTS, rt, batch_size=3)
    assert r.fast and r.n_skip == 3
    slow = ScreenRunner(model, tok, last, PROMPTS, rt, batch_size=3, fast=False)
    assert torch.allclose(r.scores(4, 10.0), slow.scores(4, 10.0), atol=1e-4)
    mlp = make_sae(layer=1)
    mlp.cfg.hook_name = "blocks.1.hook_mlp_out"
    assert not ScreenRunner(model, tok, mlp, PROMPTS, rt).fast  # no fast path there; hooks instead
    with pytest.raises(SaesteerError, match="empty prompt set"):
        ScreenRunner(model, tok, last, [], rt)


def test_skipped_layers_are_restored(chat: tuple[Any, Any]) -> None:
    model, _ = chat
    adapter = ArchAdapter(model)
    before = list(adapter.layers)
    with pytest.raises(RuntimeError), skipped_layers(adapter, 2):
        assert adapter.layers[0] is not before[0]
        raise RuntimeError("boom")
    assert list(adapter.layers) == before


def test_cheap_result_objective_with_and_without_calibration() -> None:
    base = torch.tensor([0.0, 2.0, 0.0, 0.0])
    harmful = torch.tensor([True, True, False, False])
    steered = torch.tensor([3.0, 4.0, 0.0, 3.0])
    cal = ScoreCalibration(1.0, 1.0, 1.0, 4, 1)
    c = cheap_result(7, 5.0, steered, base, harmful, cal, penalty=1.0)
    assert (c.harmful_pred, c.harmless_pred) == (1.0, 0.5)
    assert c.objective == pytest.approx((1.0 - 0.5) - (0.5 - 0.0))
    assert c.d_harmful_score == pytest.approx(2.5) and c.d_harmless_score == pytest.approx(1.5)
    un = cheap_result(7, 5.0, steered, base, harmful, ScoreCalibration(None, 1.0, float("nan"), 4, 0), penalty=0.5)
    assert un.harmful_pred is None and un.objective == pytest.approx(2.5 - 0.5 * 1.5)
    assert c.key(1.0) < cheap_result(8, 5.0, base, base, harmful, cal, 1.0).key(1.0)  # better sorts first


def test_gen_result_passes_and_significance() -> None:
    base_h, base_s = Rate.of([True] * 40 + [False] * 40), Rate.of([False] * 80)
    g = gen_result(1, 5.0, [True] * 70 + [False] * 10, [False] * 78 + [True] * 2, base_h, base_s, penalty=1.0)
    assert g.passes and g.significant and g.gain[0] == pytest.approx(0.375)
    assert g.objective == pytest.approx(0.375 - 0.025)
    bad = gen_result(2, 5.0, [True] * 80, [True] * 80, base_h, base_s, penalty=1.0)
    assert not bad.passes and bad.significant  # gain, but the over-refusal outweighs it
    d = g.to_dict()
    assert d["gain"]["d"] == pytest.approx(0.375) and d["harmful"]["k"] == 70


def test_screen_pool_round_robin() -> None:
    a = Ranking("a", [1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0])
    b = Ranking("b", [2, 5, 6], [3.0, 2.0, 1.0])
    assert screen_pool([a, b], per_ranker=3, max_total=10) == [1, 2, 5, 3, 6]
    assert screen_pool([a, b], per_ranker=3, max_total=3) == [1, 2, 5]
    with pytest.raises(SaesteerError):
        screen_pool([a], per_ranker=0, max_total=3)


def test_clamp_values() -> None:
    ref = torch.tensor([2.0, 0.0, 4.0, 6.0])
    assert clamp_values([0, 1, 2], ref, 2.0) == {0: 4.0, 1: 8.0, 2: 8.0}  # unseen feature 1: 2 x median max
    assert clamp_values([0, 3], ref, 2.0, absolute=11.0) == {0: 11.0, 3: 11.0}
    with pytest.raises(SaesteerError):
        clamp_values([0], ref, 0.0)


def test_sae_width_mismatch_is_refused(chat: tuple[Any, Any]) -> None:
    model, tok = chat
    wrong: SAE = make_sae(layer=1, d_in=16)
    with pytest.raises(SaesteerError, match="d_in"):
        ScreenRunner(model, tok, wrong, PROMPTS, RefusalTokens.from_words(tok))
