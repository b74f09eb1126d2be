"""Steering on the fast decode path: the exactness guarantees of the engine hold there too, and
per-example values follow their prompts through batched ``generate``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saesteer.model.adapter import ArchAdapter
from saesteer.model.decode import decode
from saesteer.model.generation import GenerationConfig, generate
from saesteer.steering import ClampFeature, Steering
from tests.steering.helpers import tiny_sae
from tests.steering.test_engine import FEAT, HOOK, LAYER, clamp_edit, manual_logits


def fast_gen(model: Any, batch: dict[str, torch.Tensor], n: int = 5) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Tokens of the fast path and the logits it chose them from (captured at the model's output)."""
    logits: list[torch.Tensor] = []
    grab = model.register_forward_hook(lambda _m, _a, o: logits.append(o.logits[:, -1].detach().clone()))
    try:
        new = decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=n, eos_ids=[], pad_id=0)
    finally:
        grab.remove()
    return torch.cat([batch["input_ids"], new], dim=1), logits


@pytest.mark.parametrize("mode", ["all", "generated", "prompt"])
def test_fast_path_kv_decoding_matches_full_recompute(model, batch, mode):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    c = 8.0
    plain_seqs, _ = fast_gen(model, batch)
    with Steering(model, sae, [ClampFeature(FEAT, c)], positions=mode).apply():
        seqs, logits = fast_gen(model, batch)
    s0 = batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(3, seqs.shape[1] - s0, dtype=torch.long)], dim=1)
    pos = torch.arange(seqs.shape[1]).unsqueeze(0)
    where = {"all": torch.ones_like(pos, dtype=torch.bool), "generated": pos >= s0, "prompt": pos < s0}[mode]
    ref = manual_logits(model, seqs, mask, clamp_edit(sae, FEAT, c, where & mask.bool()))
    plain = manual_logits(model, seqs, mask, None)
    for step, lg in enumerate(logits):
        p = s0 - 1 + step
        torch.testing.assert_close(lg, ref[:, p], atol=1e-4, rtol=1e-4)
        if mode != "generated" or step > 0:
            assert (lg - plain[:, p]).abs().amax(-1).min() > 1e-3, f"step {step} not steered in every row"
        else:
            torch.testing.assert_close(lg, plain[:, p], atol=1e-5, rtol=1e-5)
    assert not torch.equal(seqs, plain_seqs) or mode == "prompt"


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_fast_path_clamp_to_own_value_is_noop(model, batch, arch):  # type: ignore[no-untyped-def]
    sae = tiny_sae(arch, LAYER)
    ad = ArchAdapter(model)
    seen: list[torch.Tensor] = []
    grab = ad.add_hook(HOOK, lambda t: seen.append(t.detach().clone()) or None)  # type: ignore[func-returns-value]
    base_seqs, base_logits = fast_gen(model, batch, n=6)
    grab.remove()
    own = sae.encode(torch.cat(seen, dim=1))[..., FEAT].detach()  # (batch, prompt + generated) own values
    assert (own > 0).float().mean() > 0.1 and own.std() > 1e-3
    with Steering(model, sae, [ClampFeature(FEAT, own)]).apply():
        seqs, logits = fast_gen(model, batch, n=6)
    assert torch.equal(seqs, base_seqs)
    for a, b in zip(logits, base_logits, strict=True):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5
    with Steering(model, sae, [ClampFeature(FEAT, own + 3.0)]).apply():
        _, moved = fast_gen(model, batch, n=6)
    assert (moved[0] - base_logits[0]).abs().max() > 1e-3  # and another value does change the output


def test_fast_path_leaves_padding_untouched(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    ad = ArchAdapter(model)
    x0, _ = ad.run_full(HOOK, batch["input_ids"], batch["attention_mask"])
    seen: list[torch.Tensor] = []
    with Steering(model, sae, [ClampFeature(FEAT, 50.0)]).apply():
        grab = ad.add_hook(HOOK, lambda x: seen.append(x.clone()) or None)  # type: ignore[func-returns-value]
        fast_gen(model, batch, n=3)
        grab.remove()
    pad = batch["attention_mask"] == 0
    assert pad.any() and seen[0].shape[1] == pad.shape[1]  # the prompt pass
    assert torch.equal(seen[0][pad], x0[pad])  # bit for bit
    assert (seen[0][~pad] - x0[~pad]).abs().amax(-1).min() > 1.0


PROMPTS = [  # different lengths, in an order that sorting by length changes
    "Write a long and detailed poem about the sea, the wind and the harbour at night.",
    "Hi",
    "What is the capital city of France, and why?",
    "Say yes.",
]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("batch_size", [4, 2])
def test_per_example_values_follow_their_prompts(chat_model, chat_tokenizer, fast, batch_size):  # type: ignore[no-untyped-def]
    sae = tiny_sae("relu", layer=1, d_in=32, d_sae=64)
    values = torch.tensor([40.0, -40.0, 0.0, 80.0])
    cfg = GenerationConfig(max_new_tokens=6, batch_size=batch_size, fast=fast)
    with Steering(chat_model, sae, [ClampFeature(FEAT, values)]).apply():
        together = generate(chat_model, chat_tokenizer, PROMPTS, cfg)
    alone = []
    for p, v in zip(PROMPTS, values.tolist(), strict=True):
        with Steering(chat_model, sae, [ClampFeature(FEAT, v)]).apply():
            alone += generate(chat_model, chat_tokenizer, [p], GenerationConfig(max_new_tokens=6, fast=fast))
    swapped = []  # the values as they would land if they followed the batch rows instead of the prompts
    for p, v in zip(PROMPTS, values.flip(0).tolist(), strict=True):
        with Steering(chat_model, sae, [ClampFeature(FEAT, v)]).apply():
            swapped += generate(chat_model, chat_tokenizer, [p], GenerationConfig(max_new_tokens=6, fast=fast))
    assert swapped != alone  # the values matter: a misassignment would show
    assert together == alone


def test_dropping_finished_rows_keeps_each_rows_tokens_gate_and_values(model, batch):  # type: ignore[no-untyped-def]
    """The fast path drops rows that ended from its batch: every row's tokens equal the full batch's, with a gate
    decided on the prompt pass and per-example clamp values still following their rows."""
    from saesteer.steering.gate import Gate, ProjectionScorer

    sae = tiny_sae("topk", LAYER)
    probe = Gate(
        ProjectionScorer(torch.randn(64, generator=torch.Generator().manual_seed(4))),
        0.0,
        "blocks.1.hook_resid_post",
        "mean",
    )
    s = probe.scores(
        ArchAdapter(model).run_to(probe.hook, batch["input_ids"], batch["attention_mask"]),
        batch["attention_mask"].bool(),
    )
    gate = probe.with_threshold(float(s[1:].mean()))  # row 1, which ends first, and row 2 decide differently
    steer = Steering(model, sae, [ClampFeature(FEAT, torch.tensor([15.0, -9.0, 30.0]))], gate=gate)
    sizes: list[int] = []
    seen = model.register_forward_pre_hook(
        lambda _m, a, kw: sizes.append(int(kw["input_ids"].shape[0])), with_kwargs=True
    )

    def run(shrink: bool, eos: list[int]) -> torch.Tensor:
        sizes.clear()
        with steer.apply():
            return decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=8, eos_ids=eos,
                          pad_id=0, shrink=shrink)  # fmt: skip

    try:
        free = run(False, [])
        eos = [int(free[1, 1])]  # row 1 ends at step 2 (or earlier), the others later or never
        full = run(False, eos)
        assert sizes == [3] * len(sizes)
        dropped = run(True, eos)
        assert min(sizes) < 3  # rows did leave the batch
    finally:
        seen.remove()
    assert torch.equal(dropped, full)
    assert full.shape[1] > 2 and bool((full[1, 2:] == 0).all())  # row 1 ended at step 2, the batch went on
    with Steering(model, sae, [ClampFeature(FEAT, torch.tensor([15.0, -9.0, 30.0]))]).apply():
        ungated = decode(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=8, eos_ids=eos, pad_id=0)
    assert not torch.equal(ungated, dropped)  # the gate's decision matters, so a misindexed one would show
