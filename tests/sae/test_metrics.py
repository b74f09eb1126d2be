"""SAE metrics on held-out activations and spliced into a tiny random Qwen2 model."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE, SAEConfig
from saesteer.sae.metrics import activation_metrics, combine_spliced, first_token_mask, spliced_metrics
from tests.conftest import tiny_model
from tests.sae.conftest import random_sae

HOOK = "blocks.1.hook_resid_post"


def identity_relu_sae(d: int, hook: str = HOOK) -> SAE:
    """relu(x) - relu(-x) = x: a ReLU SAE that reconstructs perfectly (2d latents)."""
    sae = SAE.from_config(SAEConfig("relu", d_in=d, d_sae=2 * d, hook_name=hook))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def qwen() -> tuple[Any, ArchAdapter, torch.Tensor, torch.Tensor]:
    model = tiny_model("qwen2", vocab_size=256)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 256, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :7] = 0
    ids[mask == 0] = 0
    return model, ArchAdapter(model), ids, mask


def test_activation_metrics_streams_fvu_l0_dead_dense() -> None:
    torch.manual_seed(0)
    x = torch.randn(300, 8) * 2 + 1
    perfect = activation_metrics(identity_relu_sae(8), [x[:100], x[100:]], chunk=64)
    assert perfect["fvu"] < 1e-10 and perfect["n_tokens"] == 300
    assert perfect["dead_frac"] == 0.0 and perfect["l0"] == pytest.approx(8.0, abs=0.01)

    sae = random_sae("topk", d_in=8, d_sae=32, k=4)
    with torch.no_grad():
        sae.b_enc[:8] = -1e4  # never fire
        sae.b_enc[8] = 1e4  # fires on every token
    m = activation_metrics(sae, [x[:128], x[128:]], chunk=50)
    assert m["dead_frac"] == pytest.approx(8 / 32) and m["dense_frac"] >= 1 / 32
    recon = sae(x)
    fvu = ((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert m["fvu"] == pytest.approx(fvu, rel=1e-5) and m["l0"] == pytest.approx(4.0)
    with pytest.raises(SaesteerError, match="activation width 5 != SAE d_in 8"):
        activation_metrics(sae, [torch.randn(4, 5)])


def test_error_term_splice_changes_nothing(qwen: Any) -> None:
    model, adapter, ids, mask = qwen
    sae = random_sae("topk", d_in=64, d_sae=256, k=8, hook=HOOK)
    m = spliced_metrics(model, adapter, sae, ids, mask)
    assert abs(m["delta_ce_error_term"]) < 1e-5 and m["kl_error_term"] < 1e-6
    assert m["kl_spliced"] > 1e-4 and m["ce_spliced"] != m["ce_clean"]  # a random SAE does change the model
    assert m["n_predictions"] == 11 + 7 + 4  # pairs of attended positions only
    assert m["spliced_frac"] == 1.0


def test_perfect_sae_recovers_all_ce(qwen: Any) -> None:
    model, adapter, ids, mask = qwen
    m = spliced_metrics(model, adapter, identity_relu_sae(64), ids, mask)
    assert abs(m["ce_increase"]) < 1e-5 and m["ce_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert m["ce_zero_ablation"] > m["ce_clean"]


def test_padding_positions_are_ignored(qwen: Any) -> None:
    model, adapter, ids, mask = qwen
    sae = random_sae("jumprelu", d_in=64, d_sae=128, hook=HOOK)
    a = spliced_metrics(model, adapter, sae, ids, mask)
    other = ids.clone()
    other[mask == 0] = 77  # different pad tokens
    b = spliced_metrics(model, adapter, sae, other, mask)
    for key in ("ce_clean", "ce_spliced", "kl_spliced", "ce_zero_ablation"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_splice_mask_and_first_token_mask(qwen: Any) -> None:
    model, adapter, ids, mask = qwen
    sae = random_sae("topk", d_in=64, d_sae=256, k=8, hook=HOOK)
    none = spliced_metrics(model, adapter, sae, ids, mask, splice_mask=torch.zeros_like(mask))
    assert none["ce_spliced"] == pytest.approx(none["ce_clean"], abs=1e-6) and none["spliced_frac"] == 0.0
    ftm = first_token_mask(mask)
    assert ftm.sum() == mask.sum() - 3 and not ftm[1, 4] and ftm[1, 5]
    part = spliced_metrics(model, adapter, sae, ids, mask, splice_mask=ftm)
    assert 0 < part["spliced_frac"] < 1
    both = combine_spliced([none, part])
    assert both["n_predictions"] == 2 * none["n_predictions"]
    assert both["ce_clean"] == pytest.approx(none["ce_clean"])


def test_spliced_rejects_wrong_width_and_missing_hook(qwen: Any) -> None:
    model, adapter, ids, mask = qwen
    with pytest.raises(SaesteerError, match="SAE d_in 16 != model d_model 64"):
        spliced_metrics(model, adapter, random_sae("topk", d_in=16), ids, mask)
    with pytest.raises(SaesteerError, match="names no hook point"):
        spliced_metrics(model, adapter, random_sae("topk", d_in=64, hook=""), ids, mask)
