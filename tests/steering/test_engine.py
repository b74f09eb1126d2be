"""Steering engine on tiny random fp32 models: exact no-op, KV-cache decoding, padding, coexistence."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter
from saesteer.model.rows import example_rows
from saesteer.steering import AblateFeature, AddFeature, ClampFeature, Positions, ScaleFeature, Steering
from tests.steering.helpers import VOCAB, tiny_model, tiny_sae

LAYER = 2
HOOK = f"blocks.{LAYER}.hook_resid_post"
FEAT = 5


def gen(model: torch.nn.Module, batch: dict[str, torch.Tensor], n: int = 5, **kw: object):  # type: ignore[no-untyped-def]
    return model.generate(
        **batch,
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
        **kw,
    )


def manual_logits(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, edit: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    """Full forward without cache; ``edit(x)`` replaces the hook activation (an independent reference)."""
    ad = ArchAdapter(model)
    handle = ad.add_hook(HOOK, edit) if edit is not None else None
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        if handle is not None:
            handle.remove()


def clamp_edit(
    sae: torch.nn.Module, feat: int, value: float, where: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """x + (c - z_f) W_dec[f] at positions ``where`` (batch, seq), computed with the SAE's own encode."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        z = sae.encode(x)[..., feat]
        new = x + (value - z).unsqueeze(-1) * sae.W_dec[feat]
        return torch.where(where.unsqueeze(-1), new, x)

    return edit


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_clamp_to_own_value_is_exact_noop(model, batch, arch):  # type: ignore[no-untyped-def]
    sae = tiny_sae(arch, LAYER)
    x, base = ArchAdapter(model).run_full(HOOK, batch["input_ids"], batch["attention_mask"])
    z = sae.encode(x)[..., FEAT].detach()
    assert (z > 0).any() and z.std() > 1e-3  # the feature is active and varies: the no-op is not trivial
    steering = Steering(model, sae, [ClampFeature(FEAT, z)])  # per-position values: its own activation
    with torch.no_grad(), steering.apply():
        out = model(**batch).logits
    rel = (out - base).abs().max() / base.abs().max()
    assert rel < 1e-5
    with torch.no_grad(), Steering(model, sae, [ClampFeature(FEAT, z + 3.0)]).apply():
        moved = model(**batch).logits
    assert (moved - base).abs().max() / base.abs().max() > 1e-3  # and a different value does change it


@pytest.mark.parametrize("mode", ["all", "generated", "prompt"])
def test_kv_cache_decoding_matches_manual_computation(model, batch, mode):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    c = 8.0
    base = gen(model, batch)
    with Steering(model, sae, [ClampFeature(FEAT, c)], positions=mode).apply():
        out = gen(model, batch)
    seqs = out.sequences
    s0 = batch["input_ids"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(3, seqs.shape[1] - s0, dtype=torch.long)], dim=1)
    pos = torch.arange(seqs.shape[1]).unsqueeze(0)
    where = {"all": torch.ones_like(pos, dtype=torch.bool), "generated": pos >= s0, "prompt": pos < s0}[mode]
    where = where & mask.bool()
    ref = manual_logits(model, seqs, mask, clamp_edit(sae, FEAT, c, where))
    plain = manual_logits(model, seqs, mask, None)
    for step, logits in enumerate(out.logits):
        p = s0 - 1 + step
        torch.testing.assert_close(logits, ref[:, p], atol=1e-4, rtol=1e-4)
        if mode == "all" or (mode == "prompt") or step > 0:  # 'generated' leaves the first new token unsteered
            assert (logits - plain[:, p]).abs().amax(-1).min() > 1e-3, f"step {step} not steered in every row"
        else:
            torch.testing.assert_close(logits, plain[:, p], atol=1e-5, rtol=1e-5)
    assert not torch.equal(out.sequences, base.sequences) or mode == "prompt"


def test_padding_positions_untouched(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    ad = ArchAdapter(model)
    seen: list[torch.Tensor] = []
    x0, _ = ad.run_full(HOOK, batch["input_ids"], batch["attention_mask"])
    with Steering(model, sae, [ClampFeature(FEAT, 50.0), AddFeature(7, 2.0)]).apply():
        grab = ad.add_hook(HOOK, lambda x: seen.append(x.clone()) or None)  # type: ignore[func-returns-value]
        with torch.no_grad():
            model(**batch)
        grab.remove()
    pad = batch["attention_mask"] == 0
    assert pad.any()
    assert torch.equal(seen[0][pad], x0[pad])  # bit for bit
    assert (seen[0][~pad] - x0[~pad]).abs().amax(-1).min() > 1.0


def test_batch_invariance_and_per_example_values(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("relu", LAYER)
    values = torch.tensor([4.0, -2.0, 9.0])
    with Steering(model, sae, [ClampFeature(FEAT, values)]).apply():
        together = gen(model, batch, n=4)
    for i in range(3):
        real = batch["attention_mask"][i].bool()
        single = {
            "input_ids": batch["input_ids"][i : i + 1, real],
            "attention_mask": batch["attention_mask"][i : i + 1, real],
        }
        with Steering(model, sae, [ClampFeature(FEAT, float(values[i]))]).apply():
            alone = gen(model, single, n=4)
        assert torch.equal(together.sequences[i, -4:], alone.sequences[0, -4:])
        for a, b in zip(together.logits, alone.logits, strict=True):
            torch.testing.assert_close(a[i], b[0], atol=1e-4, rtol=1e-4)


def test_explicit_mask_and_beyond(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    m = torch.zeros(3, 7, dtype=torch.bool)
    m[0, 5] = True  # one prompt position of row 0 only
    with Steering(model, sae, [ClampFeature(FEAT, 30.0)], positions=Positions.explicit(m)).apply():
        out = gen(model, batch, n=3)
    base = gen(model, batch, n=3)
    assert not torch.allclose(out.logits[0][0], base.logits[0][0])
    torch.testing.assert_close(out.logits[0][1:], base.logits[0][1:])  # rows 1, 2 untouched
    with Steering(model, sae, [ClampFeature(FEAT, 30.0)], positions=Positions.explicit(m, beyond=True)).apply():
        out2 = gen(model, batch, n=3)
    assert (out2.logits[2][1:] - base.logits[2][1:]).abs().max() > 1e-3  # generated positions steered everywhere


def test_other_interventions_match_formulas(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("jumprelu", LAYER)
    ad = ArchAdapter(model)
    x, _ = ad.run_full(HOOK, batch["input_ids"], batch["attention_mask"])
    z = sae.encode(x)
    real = batch["attention_mask"].bool().unsqueeze(-1)
    want = x + (0.5 - 1.0) * z[..., 3:4] * sae.W_dec[3] - z[..., 4:5] * sae.W_dec[4] + 1.5 * sae.W_dec[9]
    want = torch.where(real, want, x)
    seen: list[torch.Tensor] = []
    ivs = [ScaleFeature(3, 0.5), AblateFeature(4), AddFeature(9, 1.5)]
    with Steering(model, sae, ivs).apply():
        h = ad.add_hook(HOOK, lambda t: seen.append(t.clone()) or None)  # type: ignore[func-returns-value]
        with torch.no_grad():
            model(**batch)
        h.remove()
    torch.testing.assert_close(seen[0], want.detach(), atol=1e-5, rtol=1e-5)


def test_drop_error_term_uses_reconstruction(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    ad = ArchAdapter(model)
    x, _ = ad.run_full(HOOK, batch["input_ids"], batch["attention_mask"])
    z = sae.encode(x)
    z[..., FEAT] = 6.0
    want = torch.where(batch["attention_mask"].bool().unsqueeze(-1), sae.decode(z), x).detach()
    seen: list[torch.Tensor] = []
    with Steering(model, sae, [ClampFeature(FEAT, 6.0)], keep_error=False).apply():
        h = ad.add_hook(HOOK, lambda t: seen.append(t.clone()) or None)  # type: ignore[func-returns-value]
        with torch.no_grad():
            model(**batch)
        h.remove()
    torch.testing.assert_close(seen[0], want, atol=1e-5, rtol=1e-5)


def test_topk_approximate_reader_differs_only_outside_topk(model, batch):  # type: ignore[no-untyped-def]
    """Clamping a feature to its own exact Top-k value is a no-op for the exact reader. The approximate
    reader reads relu(pre_f) instead: the same where f is in the top k, but positive where f is active yet
    not in the top k; there it edits by (z_f - relu(pre_f)) W_dec[f], which the reference below applies."""
    sae = tiny_sae("topk", LAYER, k=4)
    x, base = ArchAdapter(model).run_full(HOOK, batch["input_ids"], batch["attention_mask"])
    z = sae.encode(x)[..., FEAT].detach()
    pre = torch.relu(sae.pre_acts(x)[..., FEAT]).detach()
    real = batch["attention_mask"].bool()
    outside = (pre > 0) & (z == 0) & real
    assert outside.any() and ((z > 0) & real).any()  # both cases happen with k=4 of 256 latents
    with torch.no_grad(), Steering(model, sae, [ClampFeature(FEAT, z)], topk_exact=False).apply():
        approx = model(**batch).logits

    def edit(a: torch.Tensor) -> torch.Tensor:
        return a + ((z - pre) * outside).unsqueeze(-1) * sae.W_dec[FEAT]

    want = manual_logits(model, batch["input_ids"], batch["attention_mask"], edit)
    torch.testing.assert_close(approx, want, rtol=1e-4, atol=1e-4)
    assert (approx - base)[real].abs().max() > 1e-4
    with torch.no_grad(), Steering(model, sae, [ClampFeature(FEAT, z)], topk_exact=True).apply():
        exact = model(**batch).logits
    torch.testing.assert_close(exact[real], base[real], rtol=1e-5, atol=1e-5)


def test_handle_and_context_manager_remove_hooks(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    with torch.no_grad():
        base = model(**batch).logits
    steering = Steering(model, sae, [ClampFeature(FEAT, 20.0)])
    handle = steering.attach()
    with torch.no_grad():
        steered = model(**batch).logits
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active
    with pytest.raises(ValueError), steering.apply():
        raise ValueError("boom")
    with torch.no_grad():
        after = model(**batch).logits
    assert not torch.allclose(steered, base)
    assert torch.equal(after, base)


def test_two_steered_models_coexist(batch):  # type: ignore[no-untyped-def]
    a, b, a_copy = tiny_model(0), tiny_model(1), tiny_model(0)
    sae_a, sae_b = tiny_sae("topk", LAYER, seed=1), tiny_sae("relu", 1, seed=2)
    st_a = Steering(a, sae_a, [ClampFeature(FEAT, 9.0)], positions="generated")
    st_b = Steering(b, sae_b, [ClampFeature(3, -4.0)], positions="all")
    with st_a.apply():
        solo_a = gen(a, batch, n=4)
    with st_b.apply():
        solo_b = gen(b, batch, n=4)
    plain = gen(a_copy, batch, n=4)
    with st_a.apply(), st_b.apply():
        # interleave the models' decode steps by generating alternately with fresh prompts each time
        for _ in range(2):
            both_a = gen(a, batch, n=4)
            both_b = gen(b, batch, n=4)
            also_plain = gen(a_copy, batch, n=4)
            assert torch.equal(both_a.sequences, solo_a.sequences)
            assert torch.equal(both_b.sequences, solo_b.sequences)
            assert torch.equal(also_plain.sequences, plain.sequences)
    assert not torch.equal(solo_a.sequences, plain.sequences)


def test_beam_search_expands_per_example_values(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    values = torch.tensor([4.0, -2.0, 9.0])
    with Steering(model, sae, [ClampFeature(FEAT, values)]).apply():
        with pytest.raises(SaesteerError, match="3 rows but the model runs a batch of 6"):
            gen(model, batch, n=3, num_beams=2)  # an undeclared expansion is an error, not a guess
        with example_rows(repeat=2):
            out = gen(model, batch, n=3, num_beams=2)
    with Steering(model, sae, [ClampFeature(FEAT, 9.0)]).apply():
        last = gen(model, {k: v[2:] for k, v in batch.items()}, n=3, num_beams=2)
    assert torch.equal(out.sequences[2, -3:], last.sequences[0, -3:])


def test_per_example_rows_never_repeat_silently(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("relu", LAYER)
    one_row = torch.tensor([4.0])  # 1 divides the batch of 3: this used to be repeated to every row
    with Steering(model, sae, [ClampFeature(FEAT, one_row)]).apply(), torch.no_grad():
        with pytest.raises(SaesteerError, match="1 rows but the model runs a batch of 3"):
            model(**batch)
    mask = torch.ones(1, 7, dtype=torch.bool)
    with Steering(model, sae, [ClampFeature(FEAT, 3.0)], positions=mask).apply(), torch.no_grad():
        with pytest.raises(SaesteerError, match="positions mask has 1 rows"):
            model(**batch)


def test_declared_rows_pick_each_rows_value(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("relu", LAYER)
    values = torch.tensor([7.0, 4.0, -2.0, 9.0, 1.0])  # five examples; the batch holds examples 3, 1, 2
    with Steering(model, sae, [ClampFeature(FEAT, values)]).apply(), torch.no_grad():
        with example_rows([3, 1, 2]):
            got = model(**batch).logits
    with Steering(model, sae, [ClampFeature(FEAT, values[[3, 1, 2]])]).apply(), torch.no_grad():
        want = model(**batch).logits
    assert torch.equal(got, want)
    with Steering(model, sae, [ClampFeature(FEAT, values)]).apply(), torch.no_grad():
        with pytest.raises(SaesteerError, match="example 7 is being generated"), example_rows([7, 1, 2]):
            model(**batch)


def test_inputs_without_attention_mask(model):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    ids = torch.randint(2, VOCAB, (2, 5))
    with torch.no_grad():
        base = model(ids).logits
        with Steering(model, sae, [ClampFeature(FEAT, 12.0)]).apply():
            out = model(ids).logits  # positional input_ids, no mask: the way lm-eval's HFLM calls a model
    assert (out - base).abs().amax(-1).min() > 1e-4
