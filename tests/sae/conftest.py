"""Fixtures for SAE tests: small synthetic activation streams with a known sparse structure."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from saesteer.sae.base import SAE, SAEConfig


class SparseSource:
    """Activations that are sparse sums of ``n_feat`` fixed unit directions, plus an offset.

    ``batches(start)`` yields the same deterministic sequence of batches from index ``start`` on, like
    ``ActivationStore.batches(..., start_step=start)``.
    """

    def __init__(
        self, d: int = 32, n_feat: int = 128, active: int = 4, batch: int = 128, seed: int = 0, scale: float = 7.0
    ):
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(n_feat, d, generator=g)
        self.features = feats / feats.norm(dim=1, keepdim=True)
        self.offset = torch.randn(d, generator=g) * 2
        self.d, self.n_feat, self.active, self.batch, self.seed, self.scale = d, n_feat, active, batch, seed, scale

    def make(self, n: int, g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, self.n_feat, (n, self.active), generator=g)
        vals = torch.rand(n, self.active, generator=g) * self.scale
        return (vals[:, :, None] * self.features[idx]).sum(1) + self.offset

    def batches(self, start: int = 0) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + 1)
        i = 0
        while True:
            b = self.make(self.batch, g)
            if i >= start:
                yield b
            i += 1

    def held_out(self, n: int = 2048) -> torch.Tensor:
        return self.make(n, torch.Generator().manual_seed(self.seed + 999))


@pytest.fixture
def source() -> SparseSource:
    return SparseSource()


def random_sae(
    arch: str,
    d_in: int = 16,
    d_sae: int = 64,
    k: int | None = 8,
    hook: str = "blocks.1.hook_resid_post",
    seed: int = 0,
    apply_b_dec: bool = True,
) -> SAE:
    """An SAE of ``arch`` with random (nonzero) biases and thresholds."""
    cfg = SAEConfig(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        k=k if arch == "topk" else None,
        hook_name=hook,
        model_name="tiny",
        apply_b_dec_to_input=apply_b_dec,
    )
    torch.manual_seed(seed)
    sae = SAE.from_config(cfg)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
        if arch == "jumprelu":
            sae.threshold.uniform_(0.0, 0.3)  # type: ignore[operator]
    return sae


@pytest.fixture
def make_sae() -> Callable[..., SAE]:
    return random_sae
