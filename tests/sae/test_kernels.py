"""Sparse kernels: pattern products, and step gradients equal to the dense reference computation."""

from __future__ import annotations

import pytest
import torch

from saesteer.model.packed import packing_supported
from saesteer.sae.kernels import CHUNK_ROWS, SparsePattern, TopkLatents, topk_step


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


def near_tie_encoder(d_in: int = 64, d_sae: int = 512, k: int = 8, seed: int = 0):  # type: ignore[no-untyped-def]
    """An encoder whose 2k columns J (feature 0 among them) differ by ~1e-4 relative: along v they tie
    at bf16 precision, so only float32 orders them; x has a large component along v in half the rows."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    v = torch.randn(d_in, generator=g)
    v = v / v.norm()
    jitter = 1 + 1e-4 * torch.randn(2 * k, generator=g)
    w[:, : 2 * k] = v.unsqueeze(1) * jitter
    b = 0.01 * torch.randn(d_sae, generator=g)
    n = 400
    x = torch.randn(n, d_in, generator=g) * 0.3
    x += (torch.rand(n, 1, generator=g) - 0.5).sign().clamp(min=0) * 6.0 * v  # half the rows along v
    x -= (torch.rand(n, 1, generator=g) < 0.25).float() * 6.0 * v  # a quarter against it: pre_f <= 0
    return w, b, x.to(torch.bfloat16).float(), k  # x representable in bf16, as in a bf16 model


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float32])
def test_topk_latents_decide_exactly_as_float32(low: torch.dtype) -> None:
    w, b, x, k = near_tie_encoder()
    feats = [0, 3, 100]  # two near-tied columns and an ordinary one
    kern = TopkLatents(w, b, feats, k, low)
    pre = x @ w + b  # the float32 reference decision, computed independently
    kth = pre.topk(k, dim=-1).values[:, -1:]
    want = torch.relu(pre[:, feats]) * (pre[:, feats] >= kth)
    got = kern(x)
    assert torch.equal(got > 0, want > 0)  # membership decided exactly
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    member = want[:, :2] > 0
    assert member.any() and (~member & (pre[:, :2] > 0)).any()  # near-tied features both in and out of the top k
    assert 0 < kern.rows_encoded < x.shape[0]  # rows with pre_f <= 0 skipped the encoder
    assert kern.rows_encoded > 2 * CHUNK_ROWS  # the rows span several encoder blocks
    if low == torch.bfloat16:
        assert 0 < kern.rows_rechecked < kern.rows_encoded  # near-ties went to float32, clear rows did not
        lo = (x.to(low) @ w.to(low)).float() + b  # the bf16 encoder alone would decide some rows wrongly
        naive = lo[:, feats] >= lo.topk(k, dim=-1).values[:, -1:]
        assert ((naive != (pre[:, feats] >= kth)) & (pre[:, feats] > 0)).any()


def test_topk_latents_band_covers_bf16_error() -> None:
    """The bound E on |bf16 pre - float32 pre| holds on every entry (what the exactness rests on)."""
    w, b, x, k = near_tie_encoder(seed=2)
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(5)) * 4  # fp32 x: its rounding counts too
    kern = TopkLatents(w, b, [0], k, torch.bfloat16)
    lo = (x.to(torch.bfloat16) @ w.to(torch.bfloat16)).float() + b
    err = (lo - (x @ w + b)).abs().amax(-1)
    band = kern.c * kern.w_max * x.norm(dim=-1)
    assert bool((err <= band).all()) and float((err / band).max()) > 0.02  # holds, and is not vacuous


@pytest.mark.skipif(
    not packing_supported(torch.device("cpu"), torch.bfloat16), reason="needs a CPU with bf16 oneDNN kernels"
)
def test_packed_linear_is_bitwise_f_linear() -> None:
    from saesteer.model.packed import linear, packed_linears

    lin = torch.nn.Linear(64, 96).to(torch.bfloat16).requires_grad_(False)
    for rows in (1, 5, 16, 70):
        x = torch.randn(rows, 3, 64).to(torch.bfloat16)
        with torch.no_grad(), packed_linears(lin) as n:
            assert n == 1 and torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
        with torch.no_grad():
            assert torch.equal(linear(lin, x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    assert "forward" not in lin.__dict__  # the swap is undone
    with torch.no_grad():
        lin.weight.mul_(2.0)  # an in-place change invalidates the packed copy
        x = torch.randn(4, 64).to(torch.bfloat16)
        assert torch.equal(linear(lin, x), torch.nn.functional.linear(x, lin.weight, lin.bias))
