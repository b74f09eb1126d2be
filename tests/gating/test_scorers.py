"""Sparse probe on SAE latents (L1 logistic), the latent-probe scorer, difference in means."""

from __future__ import annotations

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.gating.scorers import diff_in_means, fit_sparse_probe
from saesteer.steering.gate import LatentProbeScorer
from tests.steering.helpers import tiny_sae


def _latents(n: int, informative: list[int], label: int, g: torch.Generator) -> torch.Tensor:
    z = torch.relu(torch.randn(n, 40, generator=g))  # non-negative, like SAE latents
    for f in informative:
        z[:, f] += 2.0 * label
    return z


def test_sparse_probe_finds_the_informative_latents() -> None:
    g = torch.Generator().manual_seed(0)
    pos, neg = _latents(150, [4, 17], 1, g), _latents(150, [4, 17], 0, g)
    feats, w, b = fit_sparse_probe(pos, neg, l1=0.05)
    assert {4, 17} <= set(feats) and len(feats) <= 8
    assert (w[[feats.index(4), feats.index(17)]] > 0).all()
    acc = (((pos[:, feats] @ w + b) > 0).float().mean() + ((neg[:, feats] @ w + b) <= 0).float().mean()) / 2
    assert acc > 0.9
    fewer, _, _ = fit_sparse_probe(pos, neg, l1=0.3)
    assert 1 <= len(fewer) <= len(feats)  # a stronger penalty keeps fewer latents
    with pytest.raises(SaesteerError):
        fit_sparse_probe(pos, neg, l1=0.0)


def test_latent_probe_scores_the_sae_encoding() -> None:
    sae = tiny_sae("topk", 1, d_in=32)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    scorer = LatentProbeScorer(sae, [3, 50, 7], [0.5, -1.0, 2.0], 0.25)
    want = sae.encode(x.reshape(-1, 32))[:, [3, 50, 7]] @ torch.tensor([0.5, -1.0, 2.0]) + 0.25
    torch.testing.assert_close(scorer.token_scores(x), want.reshape(2, 5))
    with pytest.raises(SaesteerError):
        LatentProbeScorer(sae, [3], [1.0, 2.0])
    with pytest.raises(SaesteerError):
        LatentProbeScorer(sae, [10_000], [1.0])


def test_diff_in_means_is_the_unit_mean_difference() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(20, 8, generator=g) + 1.0, torch.randn(30, 8, generator=g)
    s = diff_in_means(a, b)
    d = a.mean(0) - b.mean(0)
    torch.testing.assert_close(s.weight, d / d.norm())
    with pytest.raises(SaesteerError):
        diff_in_means(a, a)
