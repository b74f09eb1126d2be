"""Fitting gate scorers from per-prompt readouts: a sparse probe on SAE latents, a difference-in-means direction.

Sparse probe: L1-regularised logistic regression on SAE latents ``z`` (standardised on the fit data),

    min_{w,b}  mean_i BCE(sigmoid(z_i . w + b), y_i) + l1 * ||w||_1,

solved by FISTA (proximal gradient with Nesterov momentum; the L1 prox is soft-thresholding). The
step is ``1/L`` with ``L = ||Z||_2^2 / (4n)``, the Lipschitz constant of the logistic loss's gradient.
A few latents get non-zero weight: the gate says which features fire. The scorer reads only those
latents (:class:`~saesteer.steering.gate.LatentProbeScorer`) and scores ``z_S . w_S + b`` per token.
The solver is written here (twenty lines of torch) rather than pulling in scikit-learn and SciPy.

Difference in means: ``d = mean(harmful) - mean(harmless)`` of the readouts; the score is the
projection ``x . d / ||d||``. Read at the instruction's last token it is a *harmfulness* direction;
at the last template token (Arditi et al.) it is the *refusal* direction.
"""

from __future__ import annotations

import torch

from saesteer.errors import SaesteerError
from saesteer.steering.gate import ProjectionScorer


def _check_xy(positive: torch.Tensor, negative: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if positive.ndim != 2 or negative.ndim != 2 or positive.shape[1] != negative.shape[1]:
        raise SaesteerError(f"{what}: give two (N, d) matrices of the same width")
    if positive.shape[0] == 0 or negative.shape[0] == 0:
        raise SaesteerError(f"{what}: need at least one positive and one negative example")
    x = torch.cat([positive, negative]).to(torch.float64)
    y = torch.cat([torch.ones(positive.shape[0]), torch.zeros(negative.shape[0])]).to(torch.float64)
    return x, y


def fit_sparse_probe(
    positive: torch.Tensor, negative: torch.Tensor, l1: float = 0.02, steps: int = 500
) -> tuple[list[int], torch.Tensor, float]:
    """L1 logistic regression (FISTA) on latents; returns (features with non-zero weight, their raw-scale
    weights, bias). Latents that never vary in the fit data get no weight."""
    x, y = _check_xy(positive, negative, "fit_sparse_probe")
    if l1 <= 0:
        raise SaesteerError(f"fit_sparse_probe: l1={l1} must be > 0 (it is what makes the probe sparse)")
    mu, sd = x.mean(0), x.std(0)
    live = sd > 1e-8
    xs = torch.zeros_like(x)
    xs[:, live] = (x[:, live] - mu[live]) / sd[live]
    n = xs.shape[0]
    lip = float(torch.linalg.matrix_norm(xs, 2)) ** 2 / (4 * n) + 1e-12
    step = 1.0 / lip
    w = torch.zeros(xs.shape[1], dtype=torch.float64)
    b = torch.zeros((), dtype=torch.float64)
    w_prev, b_prev, t = w, b, 1.0
    for _ in range(steps):
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        mom = (t - 1) / t_next
        vw, vb = w + mom * (w - w_prev), b + mom * (b - b_prev)
        g = torch.sigmoid(xs @ vw + vb) - y
        w_prev, b_prev = w, b
        z = vw - step * (xs.T @ g) / n
        w = torch.sign(z) * (z.abs() - step * l1).clamp(min=0.0)  # soft-thresholding: the L1 prox
        b = vb - step * g.mean()
        t = t_next
    feats = [int(i) for i in torch.nonzero(w).flatten()]
    w_raw = (w[feats] / sd[feats]).float()
    bias = float(b - (mu[feats] * w[feats] / sd[feats]).sum())
    return feats, w_raw, bias


def diff_in_means(positive: torch.Tensor, negative: torch.Tensor) -> ProjectionScorer:
    """The projection on the unit difference-in-means direction (positive minus negative readouts)."""
    x, _ = _check_xy(positive, negative, "diff_in_means")
    d = positive.double().mean(0) - negative.double().mean(0)
    if float(d.norm()) == 0.0:
        raise SaesteerError("diff_in_means: the two sets have the same mean; give distinct prompt sets")
    return ProjectionScorer(d.float(), normalize=True)
