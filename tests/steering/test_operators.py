"""Latent readers agree with the SAE's own encoder (they read only what a clamp needs)."""

from __future__ import annotations

import pytest
import torch

from saesteer.steering import operators
from tests.steering.helpers import tiny_sae


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
@pytest.mark.parametrize("rows", [5, 300])  # 300 rows takes the Top-k reader's row-gathering path
@pytest.mark.parametrize("b_dec_in", [False, True])
def test_reader_matches_encode(arch: str, rows: int, b_dec_in: bool) -> None:
    sae = tiny_sae(arch, k=8)
    sae.cfg.apply_b_dec_to_input = b_dec_in
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(0)) * 2
    feats = [3, 17, 200]
    z = operators.make_reader(sae, feats, torch.device("cpu"))(x)
    want = sae.encode(x)[:, feats].detach()
    assert (want > 0).any() and (want == 0).any()
    torch.testing.assert_close(z, want, atol=1e-5, rtol=1e-5)


def test_topk_column_reader_ignores_membership() -> None:
    sae = tiny_sae("topk", k=2)
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(1))
    approx = operators.make_reader(sae, [3], torch.device("cpu"), exact=False)(x)
    torch.testing.assert_close(approx, torch.relu(sae.pre_acts(x)[:, 3:4]).detach())
    exact = operators.make_reader(sae, [3], torch.device("cpu"), exact=True)(x)
    assert bool((approx > exact).any())  # active but outside the top 2 somewhere


def test_unknown_architecture_falls_back_to_encode() -> None:
    sae = tiny_sae("relu")
    sae.cfg.architecture = "custom"
    x = torch.randn(4, 64)
    z = operators.make_reader(sae, [1, 2], torch.device("cpu"))(x)
    torch.testing.assert_close(z, sae.encode(x)[:, [1, 2]].detach())
