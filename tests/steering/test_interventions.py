"""Bad input gives one-line SaesteerErrors; direction interventions follow their formulas."""

from __future__ import annotations

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter
from saesteer.steering import (
    AblateDirection,
    AblateFeature,
    AddDirection,
    AddFeature,
    ClampFeature,
    Positions,
    ScaleFeature,
    Steering,
)
from tests.steering.helpers import tiny_sae


def _one_line(exc: pytest.ExceptionInfo[SaesteerError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m, s: Steering(m, s, [ClampFeature(256, 1.0)]), "out of range"),
        (lambda m, s: Steering(m, s, [ClampFeature(-1, 1.0)]), "out of range"),
        (lambda m, s: Steering(m, s, [ClampFeature(3, 1.0), ScaleFeature(3, 2.0)]), "two interventions edit feature 3"),
        (lambda m, s: Steering(m, s, [AddFeature(4, 1.0), AblateFeature(4)]), "two interventions edit feature 4"),
        (lambda m, s: Steering(m, tiny_sae(d_in=32), [ClampFeature(3, 1.0)]), "d_in 32 != model d_model 64"),
        (lambda m, s: Steering(m, s, [ClampFeature(3, 1.0)], hook="blocks.1.hook_resid_post"), "trained on blocks.2"),
        (lambda m, s: Steering(m, s, [ClampFeature(3, 1.0)], hook=3), "trained on blocks.2"),
        (lambda m, s: Steering(m, s, [ClampFeature(3, 1.0)], hook="blocks.9.hook_resid_post"), "layer 9 out of range"),
        (lambda m, s: Steering(m, None, [ClampFeature(3, 1.0)], hook=1), "need an SAE"),
        (lambda m, s: Steering(m, s, []), "no interventions"),
        (lambda m, s: Steering(m, s, ["clamp"]), "not an intervention"),
        (lambda m, s: Steering(m, s, [AddDirection(torch.ones(8))]), "d_model is 64"),
        (lambda m, s: Steering(m, s, [ClampFeature(3, 1.0)], positions="middle"), "unknown positions"),
        (lambda m, s: ClampFeature(3, float("nan")), "NaN"),
        (lambda m, s: ClampFeature(3, float("inf")), "finite"),
        (lambda m, s: ScaleFeature(3, torch.tensor([1.0, float("inf")])), "NaN or inf"),
        (lambda m, s: AddDirection(torch.tensor([1.0, float("nan")])), "NaN or inf"),
        (lambda m, s: AblateDirection(torch.zeros(64)), "all zeros"),
        (lambda m, s: ClampFeature(3, torch.ones(2, 2, 2)), "scalar, \\(batch,\\)"),
        (lambda m, s: Positions("mask"), "needs a bool tensor"),
    ],
)
def test_bad_input_one_line_errors(model, make, match):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", 2)
    with pytest.raises(SaesteerError, match=match) as exc:
        make(model, sae)
    _one_line(exc)


def test_resid_post_equals_next_resid_pre(model):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", 2)
    Steering(model, sae, [ClampFeature(3, 1.0)], hook="blocks.3.hook_resid_pre")  # the same tensor: allowed


def test_value_rows_must_match_batch(model, batch):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", 2)
    with Steering(model, sae, [ClampFeature(3, torch.tensor([1.0, 2.0]))]).apply():
        with pytest.raises(SaesteerError, match="2 rows but the model runs a batch of 3"), torch.no_grad():
            model(**batch)
    with Steering(model, sae, [ClampFeature(3, torch.zeros(3, 4))]).apply():
        with pytest.raises(SaesteerError, match="covers 4 positions"), torch.no_grad():
            model(**batch)


def test_direction_addition_and_ablation(model, batch):  # type: ignore[no-untyped-def]
    ad = ArchAdapter(model)
    r = torch.randn(64, generator=torch.Generator().manual_seed(5))
    hooks = ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"]
    x0, _ = ad.run_full(hooks[0], batch["input_ids"], batch["attention_mask"])
    seen: dict[str, torch.Tensor] = {}
    with Steering(model, None, [AblateDirection(r)], hook=hooks).apply():
        hs = [ad.add_hook(h, lambda t, h=h: seen.__setitem__(h, t.clone())) for h in hooks]  # type: ignore[misc]
        with torch.no_grad():
            model(**batch)
        for h in hs:
            h.remove()
    real = batch["attention_mask"].bool()
    unit = r / r.norm()
    for h in hooks:
        assert (seen[h][real] @ unit).abs().max() < 1e-4  # ablated at every listed point
    torch.testing.assert_close(seen[hooks[0]], torch.where(real.unsqueeze(-1), x0 - (x0 @ unit)[..., None] * unit, x0))
    with Steering(model, None, [AddDirection(r, torch.tensor([1.0, 0.0, -2.0]))], hook=hooks[0]).apply():
        h = ad.add_hook(hooks[0], lambda t: seen.__setitem__("add", t.clone()))  # type: ignore[func-returns-value]
        with torch.no_grad():
            model(**batch)
        h.remove()
    want = x0 + torch.tensor([1.0, 0.0, -2.0]).view(3, 1, 1) * r
    torch.testing.assert_close(seen["add"], torch.where(real.unsqueeze(-1), want, x0))
