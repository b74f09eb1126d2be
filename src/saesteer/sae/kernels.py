"""Sparse kernels for Top-k SAE training: only the k selected latents cost work after the encoder matmul.

* :func:`topk_select` -- exact top-k per row via a two-stage search (group maxima, then candidates).
* :class:`SparsePattern` -- the (token, latent) pairs of a batch sorted by latent, built once per step;
  ``S^T @ X`` products (gradients of the encoder and decoder weights) are then one ``embedding_bag``.
* :class:`TopKEncode` -- encoder forward (dense matmul, optionally bf16) + Top-k (+ AuxK selection on dead
  latents); its backward touches only the selected entries: dW_enc = S_g^T x, db_enc = bincount, and
  db_dec = -db_enc @ W_enc (for inputs centred by b_dec).
* :class:`SparseDecode` -- decode from (values, indices) gathering k decoder rows, forward and backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx


def topk_select(pre: torch.Tensor, k: int, group: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries of each row of ``pre`` [N, D], unsorted.

    Latents are split into ``group`` strided slices (latent j is in column j % G of a [group, G] view);
    the k columns with the largest maxima contain the top k (any entry outside them is <= k column maxima),
    so the final top-k runs on k * group candidates instead of D. Falls back to ``torch.topk`` when D is
    small or not divisible.
    """
    n, d = pre.shape
    if d % group or d // group < 4 * k or pre.device.type != "cpu":
        return pre.topk(k, dim=-1, sorted=False)
    g = d // group
    col_max = pre.view(n, group, g).amax(dim=1)
    _, cols = col_max.topk(k, dim=-1, sorted=False)
    cand_idx = (cols.unsqueeze(-1) + g * torch.arange(group, device=pre.device)).reshape(n, k * group)
    cand = pre.gather(1, cand_idx)
    vals, pos = cand.topk(k, dim=-1, sorted=False)
    return vals, cand_idx.gather(1, pos)


class SparsePattern:
    """The nonzeros of a sparse [R, D] matrix whose rows are blocks of [N, k_b] (values, indices) pairs.

    ``blocks`` are index tensors [N, k_b] (e.g. the Top-k latents and the AuxK latents of the same N
    tokens); block b occupies rows b*N .. (b+1)*N-1. The entries are sorted by latent once (a radix sort
    of int32 keys), so ``S^T @ X`` is a single ``embedding_bag`` with one bag per latent.
    """

    def __init__(self, blocks: list[torch.Tensor], d: int):
        n = blocks[0].shape[0]
        dev = blocks[0].device
        self.n, self.d, self.n_rows = n, d, n * len(blocks)
        self.cols = torch.cat([b.reshape(-1) for b in blocks])
        self.rows = torch.cat([torch.arange(n, device=dev).repeat_interleave(b.shape[1]) + i * n
                               for i, b in enumerate(blocks)])
        starts, pos = [], 0
        for b in blocks:
            starts.append(torch.arange(pos, pos + b.numel(), max(b.shape[1], 1), device=dev)[:n])
            pos += b.numel()
        self.bag_offsets = torch.cat(starts)
        self.order = torch.sort(self.cols.to(torch.int32), stable=True).indices  # radix sort: ~100x argsort(int64)
        self.sorted_rows = self.rows[self.order]
        counts = torch.bincount(self.cols, minlength=d)
        self.offsets = torch.zeros(d, dtype=torch.long, device=dev)
        if d > 1:
            torch.cumsum(counts[:-1], 0, out=self.offsets[1:])

    def decode(self, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """[R, d_w]: row r = sum of values * weight[latent] over row r's entries (``values`` flat [nnz])."""
        return F.embedding_bag(self.cols, weight, self.bag_offsets, mode="sum",
                               per_sample_weights=values.to(weight.dtype))

    def t_matmul(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``S^T @ x`` -> [D, d_x] for ``values`` flat [nnz]; ``x`` has R rows, or N rows shared by all blocks."""
        rows = self.sorted_rows if x.shape[0] == self.n_rows else self.sorted_rows % self.n
        w = values[self.order].to(x.dtype)
        return F.embedding_bag(rows, x, self.offsets, mode="sum", per_sample_weights=w)

    def row_dots(self, grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """[nnz]: <grad_out[row], weight[latent]> for every entry (``grad_out`` [R, d])."""
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            grad_out.contiguous(), weight, self.cols, self.bag_offsets, self.rows, 0, -1
        )

    def col_sums(self, values: torch.Tensor) -> torch.Tensor:
        """[D]: the sum of ``values`` (flat [nnz]) per latent."""
        return torch.zeros(self.d, dtype=values.dtype, device=values.device).index_add_(0, self.cols, values)


class TopKEncode(torch.autograd.Function):
    """``vals, idx, aux_vals, aux_idx`` = Top-k (and AuxK) of ``relu((x - b_dec) @ W_enc_t.T + b_enc)``.

    ``W_enc_t`` is the encoder in [d_sae, d_in] layout; the matmul runs in ``compute_dtype`` (bf16 for
    speed). With ``dead`` (bool [d_sae]) and ``k_aux`` > 0 it also selects the ``k_aux`` largest dead
    latents per token. The :class:`SparsePattern` of both selections is appended to ``patterns`` so the
    decoder reuses it. The backward touches only the selected entries.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, W_enc_t: torch.Tensor, b_enc: torch.Tensor,  # type: ignore[override]
                b_dec: torch.Tensor, k: int, dead: torch.Tensor | None, k_aux: int,
                compute_dtype: torch.dtype, patterns: list[SparsePattern]) -> tuple[torch.Tensor, ...]:
        xc = x.float() - b_dec
        d_sae = W_enc_t.shape[0]
        pre = F.linear(xc.to(compute_dtype), W_enc_t.to(compute_dtype), b_enc.to(compute_dtype))
        vals, idx = topk_select(pre, k)
        vals = vals.float().relu()
        aux_vals = vals.new_zeros(x.shape[0], 0)
        aux_idx = idx.new_zeros(x.shape[0], 0)
        if dead is not None and k_aux > 0:
            dead_ids = dead.nonzero().squeeze(1)
            a_vals, a_pos = pre[:, dead_ids].topk(k_aux, dim=-1, sorted=False)
            aux_vals, aux_idx = a_vals.float().relu(), dead_ids[a_pos]
        del pre
        pattern = SparsePattern([idx, aux_idx] if aux_idx.numel() else [idx], d_sae)
        patterns.append(pattern)
        ctx.save_for_backward(xc, W_enc_t, vals, aux_vals)
        ctx.pattern = pattern  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(idx, aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx: Any, g_vals: torch.Tensor, _g_idx: Any, g_aux: torch.Tensor, _g_aux_idx: Any) -> tuple[Any, ...]:
        xc, W_enc_t, vals, aux_vals = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        g = (g_vals * (vals > 0)).reshape(-1)
        if aux_vals.numel():
            ga = g_aux if g_aux is not None else torch.zeros_like(aux_vals)
            g = torch.cat([g, (ga * (aux_vals > 0)).reshape(-1)])
        grad_W = pattern.t_matmul(g, xc)
        grad_b = pattern.col_sums(g)
        grad_b_dec = -(grad_b @ W_enc_t)
        return None, grad_W, grad_b, grad_b_dec, None, None, None, None, None


class SparseDecode(torch.autograd.Function):
    """``out[r] = sum_j values[j] * W_dec[latent_j]`` over the entries of row r (no bias), [R, d_in].

    ``values`` is flat [nnz] in the pattern's order (the Top-k values, then the AuxK values). The
    backward gathers the same rows: dW_dec = S^T grad, dvalues = <grad[row], W_dec[latent]>.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, values: torch.Tensor, pattern: SparsePattern,  # type: ignore[override]
                W_dec: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(values, W_dec)
        ctx.pattern = pattern  # type: ignore[attr-defined]
        return pattern.decode(values, W_dec)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        values, W_dec = ctx.saved_tensors
        pattern: SparsePattern = ctx.pattern
        grad_out = grad_out.to(W_dec.dtype)
        grad_values = pattern.row_dots(grad_out, W_dec) if ctx.needs_input_grad[0] else None
        grad_W = pattern.t_matmul(values, grad_out) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_W
