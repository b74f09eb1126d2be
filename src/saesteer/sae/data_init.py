"""Statistics of activation batches used to initialise an SAE: input scale, mean, geometric median."""

from __future__ import annotations

import math

import torch

from saesteer.errors import SaesteerError


def input_scale(x: torch.Tensor) -> float:
    """The factor s with E||s * x|| = sqrt(d_in) over the rows of ``x`` [N, d_in]."""
    mean_norm = x.float().norm(dim=-1).mean().item()
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise SaesteerError(f"activations have mean norm {mean_norm}; the cache holds no usable (finite, nonzero) data")
    return math.sqrt(x.shape[-1]) / mean_norm


def geometric_median(x: torch.Tensor, max_iter: int = 200, tol: float = 1e-6) -> torch.Tensor:
    """The point minimising the summed Euclidean distance to the rows of ``x`` (Weiszfeld's algorithm)."""
    x = x.float()
    m = x.mean(dim=0)
    for _ in range(max_iter):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * x).sum(dim=0) / w.sum()
        moved = (new - m).norm()
        m = new
        if moved <= tol * (m.norm() + 1e-12):
            break
    return m


def init_b_dec(x: torch.Tensor, how: str) -> torch.Tensor:
    """Decoder bias from data: ``"geometric_median"`` or ``"mean"`` of the rows (or ``"zeros"``)."""
    if how == "geometric_median":
        return geometric_median(x)
    if how == "mean":
        return x.float().mean(dim=0)
    if how == "zeros":
        return torch.zeros(x.shape[-1])
    raise SaesteerError(f"unknown b_dec_init {how!r}; use geometric_median, mean or zeros")
