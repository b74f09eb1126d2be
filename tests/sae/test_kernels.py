"""Sparse kernels: exact top-k, and gradients equal to the dense reference computation."""

from __future__ import annotations

import pytest
import torch

from saesteer.sae.kernels import SparseDecode, SparsePattern, TopKEncode, topk_select


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_select_matches_torch_topk(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    pre = (torch.randn(300, 2048) + torch.linspace(-1, 1, 2048)).to(dtype)  # columns with different scales
    vals, idx = topk_select(pre, 32)
    ref, _ = pre.topk(32, dim=-1)
    assert torch.equal(vals.sort(-1).values, ref.sort(-1).values)
    assert torch.equal(pre.gather(1, idx), vals)
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # distinct latents


def test_topk_select_one_hot_heavy_column() -> None:
    """All top entries in one strided column group: the candidate stage must still find them."""
    pre = torch.zeros(4, 1024)
    group_cols = torch.arange(5, 1024, 1024 // 16)  # the 16 members of column 5
    pre[:, group_cols] = torch.arange(1, 17, dtype=torch.float32)
    vals, idx = topk_select(pre, 8)
    assert set(idx[0].tolist()) == set(group_cols[8:].tolist())
    assert sorted(vals[0].tolist()) == list(range(9, 17))


def test_sparse_pattern_products() -> None:
    torch.manual_seed(1)
    n, d_sae, k, d = 50, 40, 6, 9
    idx = torch.stack([torch.randperm(d_sae)[:k] for _ in range(n)])
    vals = torch.randn(n, k)
    x = torch.randn(n, d)
    w = torch.randn(d_sae, d)
    idx2 = torch.stack([torch.randperm(d_sae)[:3] for _ in range(n)])  # a second block (AuxK-like)
    vals2 = torch.randn(n, 3)
    dense = torch.zeros(n, d_sae).scatter(1, idx, vals)
    dense2 = torch.zeros(n, d_sae).scatter(1, idx2, vals2)
    both = torch.cat([dense, dense2])  # [2n, d_sae]
    p = SparsePattern([idx, idx2], d_sae)
    flat = torch.cat([vals.reshape(-1), vals2.reshape(-1)])
    torch.testing.assert_close(p.decode(flat, w), both @ w)
    x2 = torch.randn(2 * n, d)
    torch.testing.assert_close(p.t_matmul(flat, x2), both.T @ x2)
    torch.testing.assert_close(p.t_matmul(flat, x), (dense + dense2).T @ x)  # N rows shared by both blocks
    rd = p.row_dots(x2, w)
    torch.testing.assert_close(rd, torch.cat([(x2[:n] @ w.T).gather(1, idx).reshape(-1),
                                              (x2[n:] @ w.T).gather(1, idx2).reshape(-1)]))
    torch.testing.assert_close(p.col_sums(flat), both.sum(0))


def test_encode_decode_gradients_equal_dense_reference() -> None:
    torch.manual_seed(0)
    n, d, d_sae, k, k_aux = 64, 16, 256, 8, 5
    x = torch.randn(n, d)
    w_enc = torch.randn(d_sae, d, requires_grad=True)
    b_enc = (torch.randn(d_sae) * 0.1).requires_grad_()
    w_dec = torch.randn(d_sae, d, requires_grad=True)
    b_dec = torch.randn(d, requires_grad=True)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::3] = True
    params = (w_enc, b_enc, w_dec, b_dec)

    pats: list[SparsePattern] = []
    vals, idx, aux_vals, aux_idx = TopKEncode.apply(x, w_enc, b_enc, b_dec, k, dead, k_aux, torch.float32, pats)
    decoded = SparseDecode.apply(torch.cat([vals.reshape(-1), aux_vals.reshape(-1)]), pats[0], w_dec)
    err = x - (decoded[:n] + b_dec)
    e_hat = decoded[n:]
    loss = err.pow(2).sum() + 0.3 * (e_hat - err.detach()).pow(2).sum()
    grads = torch.autograd.grad(loss, params)

    pre = (x - b_dec) @ w_enc.T + b_enc
    tv, ti = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(1, ti, tv.relu())
    err2 = x - (z @ w_dec + b_dec)
    av, ai = torch.where(dead, pre, -torch.inf).topk(k_aux, dim=-1)
    za = torch.zeros_like(pre).scatter(1, ai, av.relu())
    loss2 = err2.pow(2).sum() + 0.3 * (za @ w_dec - err2.detach()).pow(2).sum()
    ref = torch.autograd.grad(loss2, params)

    assert torch.equal(idx.sort(-1).values, ti.sort(-1).values)
    assert dead[aux_idx].all()
    torch.testing.assert_close(loss, loss2)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-3)
