"""Sparse kernels for Top-k SAEs: training steps where only the k selected latents cost work after the
encoder matmul, and the exact Top-k latents of a few features at the cost of a bf16 encoder.

* :class:`SparsePattern` -- the (token, latent) pairs of a batch sorted by latent, built once per step;
  decoding is one ``embedding_bag`` over the k selected decoder rows, and ``S^T @ X`` products (the
  weight gradients) are one ``embedding_bag`` with a bag per latent.
* :func:`topk_step` -- the loss (FVU + AuxK) and its exact gradients in closed form: the encoder matmul
  is the only dense operation; the backward touches only the selected entries (dW_enc = S_g^T x,
  db_enc = per-latent sums, dW_dec = S_v^T G, dvalues = <G, W_dec[latent]>). Computing the gradients by
  hand instead of through autograd saves several passes over [N, d_in] and [d_sae, d_in] tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from saesteer.model.packed import linear


class SparsePattern:
    """The nonzeros of a sparse [N, D] matrix with k entries per row (``idx`` [N, k]), sorted by latent.

    The entries are sorted by latent once (a radix sort of int32 keys, ~100x faster than argsort of
    int64), so ``S^T @ X`` is a single ``embedding_bag`` with one bag per latent.
    """

    def __init__(self, idx: torch.Tensor, d: int):
        n, k = idx.shape
        self.idx, self.d = idx, d
        self.cols = idx.reshape(-1)
        self.bag_offsets = torch.arange(0, n * k, k, device=idx.device)
        self.rows = torch.arange(n * k, device=idx.device) // k  # the bag (token) of each entry
        self.order = torch.sort(self.cols.to(torch.int32), stable=True).indices
        self.sorted_rows = self.rows[self.order]
        counts = torch.bincount(self.cols, minlength=d)
        self.offsets = torch.zeros(d, dtype=torch.long, device=idx.device)
        if d > 1:
            torch.cumsum(counts[:-1], 0, out=self.offsets[1:])

    def decode(self, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``S @ weight`` -> [N, d_w]: row n = sum_j values[n, j] * weight[idx[n, j]]."""
        return F.embedding_bag(self.idx, weight, mode="sum", per_sample_weights=values.to(weight.dtype))

    def t_matmul(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``S^T @ x`` -> [D, d_x] for ``values`` [N, k] and ``x`` [N, d_x]."""
        w = values.reshape(-1)[self.order].to(x.dtype)
        return F.embedding_bag(self.sorted_rows, x, self.offsets, mode="sum", per_sample_weights=w)

    def row_dots(self, grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """[N, k]: <grad_out[n], weight[idx[n, j]]> for every entry."""
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            grad_out.contiguous(), weight, self.cols, self.bag_offsets, self.rows, 0, -1
        )
        return out.view(self.idx.shape)

    def col_sums(self, values: torch.Tensor) -> torch.Tensor:
        """[D]: the sum of ``values`` [N, k] per latent."""
        return torch.zeros(self.d, dtype=values.dtype, device=values.device).index_add_(
            0, self.cols, values.reshape(-1)
        )


@dataclass
class StepOutput:
    """Losses, selections and gradients of one Top-k SAE step (see :func:`topk_step`)."""

    fvu: torch.Tensor
    auxk: torch.Tensor
    vals: torch.Tensor
    idx: torch.Tensor
    grad_W_enc_t: torch.Tensor
    grad_b_enc: torch.Tensor
    grad_W_dec: torch.Tensor
    grad_b_dec: torch.Tensor


def _buffer(
    ws: dict[str, torch.Tensor] | None, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A tensor kept in ``ws`` across steps (reusing memory avoids page-faulting fresh buffers every step)."""
    if ws is None:
        return torch.empty(shape, dtype=dtype, device=device)
    buf = ws.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
        buf = ws[name] = torch.empty(shape, dtype=dtype, device=device)
    return buf


@torch.no_grad()
def topk_step(
    x: torch.Tensor,
    W_enc_t: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    k: int,
    dead: torch.Tensor | None = None,
    k_aux: int = 0,
    auxk_scale: float = 0.0,
    compute_dtype: torch.dtype = torch.bfloat16,
    ws: dict[str, torch.Tensor] | None = None,
) -> StepOutput:
    """Loss ``fvu + auxk_scale * auxk`` of a Top-k SAE on ``x`` [N, d_in] (fp32) and its gradients.

    ``pre = (x - b_dec) @ W_enc_t.T + b_enc`` (matmul in ``compute_dtype``); ``z`` = ReLU of the top k;
    ``x_hat = z @ W_dec + b_dec``; ``fvu = ||x - x_hat||^2 / ||x - mean(x)||^2``. With ``dead`` (bool
    [d_sae]) and ``k_aux`` > 0, the ``k_aux`` largest dead pre-activations decode the residual
    ``e = x - x_hat`` (held fixed): ``auxk = ||e_hat - e||^2 / ||x - mean(x)||^2`` (unscaled in the output).
    The main path is sparse (k decoder rows per token); the AuxK path runs as dense ``compute_dtype``
    matmuls over the dead latents only (k_aux ~ d_in / 2 per token would make gathers memory-bound).
    Matmuls and row gathers read ``compute_dtype`` copies of the weights (bf16: autocast precision,
    fp32 accumulation); losses, biases and the returned gradients are fp32.
    ``ws`` (a dict the caller keeps) holds the large per-step buffers between calls.
    """
    (n, d_in), d_sae, dev = x.shape, W_enc_t.shape[0], x.device
    cd = compute_dtype
    xc = x - b_dec
    xc_c = _buffer(ws, "xc", (n, d_in), cd, dev).copy_(xc)
    w_c = _buffer(ws, "w_enc", (d_sae, d_in), cd, dev).copy_(W_enc_t)
    pre = torch.addmm(b_enc.to(cd), xc_c, w_c.T, out=_buffer(ws, "pre", (n, d_sae), cd, dev))
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    vals = vals.float().relu_()
    aux: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    if dead is not None and k_aux > 0:
        dead_ids = dead.nonzero().squeeze(1)
        a_vals, a_pos = pre[:, dead_ids].topk(k_aux, dim=-1, sorted=False)
        aux = (dead_ids, a_pos, a_vals.relu_())
    del pre
    pattern = SparsePattern(idx, d_sae)
    w_dec_c = W_dec if cd == W_dec.dtype else _buffer(ws, "w_dec", tuple(W_dec.shape), cd, dev).copy_(W_dec)
    neg_err = pattern.decode(vals, w_dec_c).float().add_(b_dec).sub_(x)  # x_hat - x
    mean = xc.mean(dim=0)
    total_var = (torch.linalg.vector_norm(xc).square() - n * mean.dot(mean)).clamp_min(1e-12)
    fvu = neg_err.square().sum() / total_var
    auxk = fvu.new_zeros(())
    aux_grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    if aux is not None:
        dead_ids, a_pos, a_vals = aux
        z_aux = torch.zeros(n, dead_ids.shape[0], dtype=cd, device=dev).scatter_(1, a_pos, a_vals)
        w_dead = w_dec_c[dead_ids]
        resid = torch.mm(z_aux, w_dead).float().add_(neg_err)  # e_hat - e
        auxk = resid.square().sum() / total_var
        g_aux = resid.mul_(2 * auxk_scale / total_var).to(cd)  # dL/de_hat
        g_z = torch.mm(g_aux, w_dead.T).gather(1, a_pos).float().mul_(a_vals > 0)  # dL/d(selected pre-acts)
        grad_w_dead = torch.mm(z_aux.T, g_aux).float()
        g_pre = z_aux.zero_().scatter_(1, a_pos, g_z.to(cd))
        grad_enc_dead = torch.mm(g_pre.T, xc_c).float()
        grad_b_dead = torch.zeros(dead_ids.shape[0], device=dev).index_add_(0, a_pos.reshape(-1), g_z.reshape(-1))
        aux_grads = (grad_w_dead, grad_enc_dead, grad_b_dead)
    g = neg_err.mul_(2 / total_var)  # dL/dx_hat
    g_c = g.to(cd)

    def as_fp32(t: torch.Tensor, name: str) -> torch.Tensor:  # into a kept buffer: no fresh pages to fault in
        return t if t.dtype == torch.float32 else _buffer(ws, name, tuple(t.shape), torch.float32, dev).copy_(t)

    grad_W_dec = as_fp32(pattern.t_matmul(vals, g_c), "grad_w_dec")
    # CUDA's per-sample-weight backward has no bf16 kernel: dot products in fp32 there
    on_cpu = dev.type == "cpu"
    grad_vals = pattern.row_dots(g_c if on_cpu else g, w_dec_c if on_cpu else W_dec).float().mul_(vals > 0)
    grad_W_enc_t = as_fp32(pattern.t_matmul(grad_vals, xc_c), "grad_w_enc")
    grad_b_enc = pattern.col_sums(grad_vals)
    if aux is not None and aux_grads is not None:
        grad_W_dec.index_add_(0, aux[0], aux_grads[0])
        grad_W_enc_t.index_add_(0, aux[0], aux_grads[1])
        grad_b_enc.index_add_(0, aux[0], aux_grads[2])
    grad_b_dec = g.sum(dim=0) - grad_b_enc @ W_enc_t
    return StepOutput(
        fvu=fvu,
        auxk=auxk,
        vals=vals,
        idx=idx,
        grad_W_enc_t=grad_W_enc_t,
        grad_b_enc=grad_b_enc,
        grad_W_dec=grad_W_dec,
        grad_b_dec=grad_b_dec,
    )


# rows per encoder block: a (rows, d_sae) float32 block small enough that the allocator reuses its memory (a
# fresh multi-MB block per call costs more in page faults than the product itself on a prompt pass)
CHUNK_ROWS = 128


class TopkLatents:
    """Exact Top-k latents of a few features, decided in fp32 at the cost of a bf16 encoder.

    With ``pre = x @ W + b`` in float32 (``W`` (d_in, d_sae), the b_dec-subtraction folded into
    ``b``), feature ``f``'s latent is ``z_f = relu(pre_f)`` if ``pre_f`` is at least the k-th largest
    pre-activation ``T``, else 0. Only ``T`` needs the whole encoder:

    1. ``pre_f`` from the feature's own column, in float32. Rows with ``pre_f <= 0`` for every
       feature have ``z = 0`` and stop here.
    2. For the other rows, ``lo = bf16(x) @ bf16(W) + b`` (float32 accumulation; prepacked oneDNN
       weights on the CPU) and ``T_lo`` = its k-th largest value. Each entry is within
       ``E = c * ||x|| * max_j ||W[:, j]||`` of the float32 one (rounding of x, of W and of the
       bf16 product: 3 * 2^-9 relative to ``sum_i |x_i W_ij| <= ||x|| ||W_j||``, plus float32
       accumulation on both sides, times a 1.25 margin), so ``|T - T_lo| <= E``: the k-th order
       statistic moves no more than its inputs.
    3. ``pre_f >= T_lo + E``: in the top k; ``pre_f < T_lo - E``: not. For rows in between
       (near-ties), every latent that can reach ``T`` has ``lo_j >= T_lo - 2E``; those candidate
       columns (and ``f``'s, so ``pre_f`` and ``T`` come from one computation) are recomputed in
       float32 and their k-th largest value is ``T`` exactly (latents below ``T`` do not move it).

    Without bf16 support the encoder runs in float32 (E then covers accumulation order only).
    Counters ``rows_seen``, ``rows_encoded``, ``rows_rechecked`` and ``cols_rechecked`` record the cost.
    """

    def __init__(self, w: torch.Tensor, b: torch.Tensor, feats: list[int], k: int, low: torch.dtype):
        self.wt = w.t().contiguous()  # (d_sae, d_in): candidate rows gather contiguously
        self.b = b
        self.k = k
        self.idx = torch.tensor(feats, device=w.device)
        self.w_f = w[:, feats].contiguous()
        self.b_f = b[feats].contiguous()
        self.low = low
        self.lin = torch.nn.Linear(w.shape[0], w.shape[1], bias=False, device=w.device, dtype=low)
        self.lin.weight.data = self.wt.to(low)
        self.lin.requires_grad_(False)
        d_in = w.shape[0]
        unit = 3 * 2.0**-9 if low != torch.float32 else 0.0
        self.c = 1.25 * (unit + 2 * d_in * 2.0**-24)
        self.w_max = float(w.norm(dim=0).max())
        self.rows_seen = self.rows_encoded = self.rows_rechecked = self.cols_rechecked = 0

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """The float32 reference: (N, |F|) latents from the whole encoder."""
        pre = torch.addmm(self.b, x, self.wt.t())
        kth = pre.topk(self.k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        pre_f = pre.index_select(-1, self.idx)
        return torch.relu(pre_f) * (pre_f >= kth)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, |F|) float32 latents of float32 rows ``x`` (N, d_in)."""
        pre_f = torch.addmm(self.b_f, x, self.w_f)
        z = torch.zeros_like(pre_f)
        self.rows_seen += x.shape[0]
        rows = (pre_f > 0).any(-1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return z
        xr, pf = x.index_select(0, rows), pre_f.index_select(0, rows)
        self.rows_encoded += rows.numel()
        zr = torch.cat(
            [self._decide(xr[i : i + CHUNK_ROWS], pf[i : i + CHUNK_ROWS]) for i in range(0, len(xr), CHUNK_ROWS)]
        )
        z[rows] = zr
        return z

    def _decide(self, xr: torch.Tensor, pf: torch.Tensor) -> torch.Tensor:
        """Steps 2-3 on rows that passed step 1: (n, |F|) latents of rows ``xr`` with pre-activations ``pf``."""
        lo = linear(self.lin, xr.to(self.low)).float().add_(self.b)
        t_lo = lo.topk(self.k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
        band = (self.c * self.w_max) * torch.linalg.vector_norm(xr, dim=-1, keepdim=True)
        band = band + 2.0**-20 * t_lo.abs()  # the float32 bias additions on both sides
        zr = torch.relu(pf) * (pf >= t_lo + band)
        near = ((pf >= t_lo - band) & (pf < t_lo + band) & (pf > 0)).any(-1).nonzero().squeeze(1)
        if near.numel():
            reach = (lo.index_select(0, near) >= t_lo[near] - 2 * band[near]).any(0)
            cand = reach.index_fill_(0, self.idx, True).nonzero().squeeze(1)  # the features too: one computation
            xn = xr.index_select(0, near)
            pre_c = torch.addmm(self.b.index_select(0, cand), xn, self.wt.index_select(0, cand).t())
            kth = pre_c.topk(self.k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
            pfn = pre_c.index_select(1, torch.searchsorted(cand, self.idx))
            zr[near] = torch.relu(pfn) * (pfn >= kth)
            self.rows_rechecked += near.numel()
            self.cols_rechecked += cand.numel()
        return zr
