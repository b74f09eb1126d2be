"""Sparse kernels: pattern products, and step gradients equal to the dense reference computation."""

from __future__ import annotations

import pytest
import torch

from saesteer.sae.kernels import SparsePattern, topk_step


def test_sparse_pattern_products() -> None:
    torch.manual_seed(1)
    n, d_sae, k, d = 50, 40, 6, 9
    idx = torch.stack([torch.randperm(d_sae)[:k] for _ in range(n)])
    vals = torch.randn(n, k)
    x = torch.randn(n, d)
    w = torch.randn(d_sae, d)
    dense = torch.zeros(n, d_sae).scatter(1, idx, vals)
    p = SparsePattern(idx, d_sae)
    torch.testing.assert_close(p.decode(vals, w), dense @ w)
    torch.testing.assert_close(p.t_matmul(vals, x), dense.T @ x)
    torch.testing.assert_close(p.row_dots(x, w), (x @ w.T).gather(1, idx))
    torch.testing.assert_close(p.col_sums(vals), dense.sum(0))


@pytest.mark.parametrize("with_aux", [True, False])
def test_topk_step_gradients_equal_autograd_on_the_dense_reference(with_aux: bool) -> None:
    torch.manual_seed(0)
    n, d, d_sae, k, k_aux, alpha = 64, 16, 256, 8, 5, 0.3
    x = torch.randn(n, d) * 2 + 1
    w_enc = torch.randn(d_sae, d, requires_grad=True)
    b_enc = (torch.randn(d_sae) * 0.1).requires_grad_()
    w_dec = torch.randn(d_sae, d, requires_grad=True)
    b_dec = torch.randn(d, requires_grad=True)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::3] = True
    params = (w_enc, b_enc, w_dec, b_dec)
    out = topk_step(
        x,
        w_enc.detach(),
        b_enc.detach(),
        w_dec.detach(),
        b_dec.detach(),
        k,
        dead if with_aux else None,
        k_aux if with_aux else 0,
        alpha,
        torch.float32,
    )

    pre = (x - b_dec) @ w_enc.T + b_enc
    tv, ti = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(1, ti, tv.relu())
    err = x - (z @ w_dec + b_dec)
    total_var = (x - x.mean(0)).pow(2).sum()
    fvu = err.pow(2).sum() / total_var
    loss = fvu
    if with_aux:
        av, ai = torch.where(dead, pre, -torch.inf).topk(k_aux, dim=-1)
        za = torch.zeros_like(pre).scatter(1, ai, av.relu())
        auxk = (za @ w_dec - err.detach()).pow(2).sum() / total_var
        loss = fvu + alpha * auxk
        torch.testing.assert_close(out.auxk, auxk.detach())
    ref = torch.autograd.grad(loss, params)

    torch.testing.assert_close(out.fvu, fvu.detach())
    assert torch.equal(out.idx.sort(-1).values, ti.sort(-1).values)
    torch.testing.assert_close(out.vals.gather(1, out.idx.argsort(-1)), tv.relu().gather(1, ti.argsort(-1)))
    got = (out.grad_W_enc_t, out.grad_b_enc, out.grad_W_dec, out.grad_b_dec)
    for name, g, r in zip(("W_enc_t", "b_enc", "W_dec", "b_dec"), got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=name)
