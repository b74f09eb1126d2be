"""The hot path: read the SAE latents an edit needs, and apply the edits to one activation.

Reading ``z_f`` costs different amounts per architecture (readers are pluggable through
:data:`LATENT_READERS`, keyed by ``SAEConfig.architecture``):

* ReLU / JumpReLU: ``z_f`` depends on feature ``f`` alone, so only the columns ``W_enc[:, F]`` of
  the edited features are multiplied (``d_model x |F|`` per token, a negligible cost).
* Top-k: whether ``f`` is among the k largest pre-activations depends on every latent, so the
  exact reader needs the k-th largest pre-activation of the full encoder (``d_model x d_sae`` per
  token; ~3% of the default model's FLOPs at 16,384 latents) and keeps ``relu(pre_f)`` only where
  ``pre_f`` reaches it. Rows with ``pre_f <= 0`` skip the encoder; on the CPU it runs in bf16 with
  a float32 recheck of near-ties (:class:`saesteer.sae.kernels.TopkLatents`), deciding exactly as
  the float32 encoder. ``topk_exact=False`` reads
  ``relu(pre_f)`` from the columns alone: cheaper, but a clamp then also subtracts ``pre_f`` where
  the feature was outside the top k (not error-preserving there). Exact is the default.
* Any other registered architecture: the SAE's own ``encode`` (exact, full cost).

All arithmetic runs in float32; the edited activation is cast back to the model's dtype. On the
CPU only the selected rows (positions) are read and edited: unselected rows (padding, gated-off
examples, positions outside the mode) cost nothing and are copied bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.model.packed import packing_supported
from saesteer.model.rows import select_rows
from saesteer.sae.base import SAE
from saesteer.sae.kernels import TopkLatents
from saesteer.steering.interventions import Value
from saesteer.steering.positions import ForwardInfo

Reader = Callable[[torch.Tensor], torch.Tensor]  # x (N, d_model) float32 -> z (N, |F|) float32
ReaderFactory = Callable[[SAE, list[int], torch.device, bool], Reader]


def _fold_input(sae: SAE, device: torch.device, cols: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) float32 on ``device`` with ``pre = x @ W + b`` (b_dec-subtraction folded into b)."""
    w_full = sae.W_enc.detach()
    w = (w_full if cols is None else w_full[:, cols]).to(device, torch.float32)
    b = sae.b_enc.detach()
    b = (b if cols is None else b[cols]).to(device, torch.float32)
    if sae.cfg.apply_b_dec_to_input:
        b = b - sae.b_dec.detach().to(device, torch.float32) @ w
    return w.contiguous(), b.contiguous()


def relu_reader(sae: SAE, feats: list[int], device: torch.device, exact: bool) -> Reader:
    w, b = _fold_input(sae, device, feats)
    return lambda x: torch.relu(torch.addmm(b, x, w))


def jumprelu_reader(sae: SAE, feats: list[int], device: torch.device, exact: bool) -> Reader:
    w, b = _fold_input(sae, device, feats)
    thr = sae.threshold.detach()[feats].to(device, torch.float32)  # type: ignore[operator,index]

    def read(x: torch.Tensor) -> torch.Tensor:
        pre = torch.addmm(b, x, w)
        return pre * ((pre > thr) & (pre > 0))

    return read


GATHER_ROWS = 64  # above this many rows, the exact Top-k reader encodes only the rows that need it


def topk_reader(sae: SAE, feats: list[int], device: torch.device, exact: bool) -> Reader:
    """Exact Top-k latents of ``feats``: membership in the top k decided as by the float32 encoder.

    On the CPU, :class:`saesteer.sae.kernels.TopkLatents` skips rows where every edited feature's
    pre-activation is <= 0 and runs the encoder in bf16, rechecking near-ties in float32. Elsewhere
    the float32 encoder runs on every row of a decode step (a row test would synchronise a GPU) and
    only on rows with a positive pre-activation in a longer (prompt) pass.
    """
    if not exact:
        return relu_reader(sae, feats, device, exact)
    w, b = _fold_input(sae, device, None)
    k = int(sae.cfg.k or 1)
    if device.type == "cpu":
        low = torch.bfloat16 if packing_supported(device, torch.bfloat16) else torch.float32
        return TopkLatents(w, b, feats, k, low)
    w_f, b_f = _fold_input(sae, device, feats)
    full = TopkLatents(w, b, feats, k, torch.float32).full

    def read(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= GATHER_ROWS:
            return full(x)
        rows = (torch.addmm(b_f, x, w_f) > 0).any(-1).nonzero().squeeze(1)
        z = torch.zeros(x.shape[0], len(feats), device=x.device, dtype=torch.float32)
        if rows.numel():
            z[rows] = full(x.index_select(0, rows))
        return z

    return read


def encode_reader(sae: SAE, feats: list[int], device: torch.device, exact: bool) -> Reader:
    idx = torch.tensor(feats, device=device)
    return lambda x: sae.encode(x).to(torch.float32).index_select(-1, idx)


LATENT_READERS: dict[str, ReaderFactory] = {"relu": relu_reader, "jumprelu": jumprelu_reader, "topk": topk_reader}


def make_reader(sae: SAE, feats: Sequence[int], device: torch.device, exact: bool = True) -> Reader:
    """A function x (N, d_model) -> z (N, len(feats)) for ``sae``'s architecture."""
    factory = LATENT_READERS.get(sae.cfg.architecture, encode_reader)
    return factory(sae, list(feats), device, exact)


class StepContext:
    """The :class:`EditContext` of one forward step: lazily computed latents, cached vectors.

    ``x`` is the activation (batch, seq, d_model), or with ``rows`` the selected rows of its
    flattened (batch * seq, d_model) view; values are then gathered for the same rows.
    """

    def __init__(self, editor: Editor, x: torch.Tensor, info: ForwardInfo, rows: torch.Tensor | None = None):
        self.editor = editor
        self.x = x
        self.info = info
        self.rows = rows
        self._z: torch.Tensor | None = None

    def z(self, feature: int) -> torch.Tensor:
        if self._z is None:
            flat = self.x.reshape(-1, self.x.shape[-1])
            self._z = self.editor.reader(self.x.device)(flat).reshape(*self.x.shape[:-1], -1)
        return self._z[..., self.editor.feat_pos[feature]]

    def decoder_row(self, feature: int) -> torch.Tensor:
        return self.editor.dec_rows(self.x.device)[self.editor.dec_pos[feature]]

    def vector(self, key: int, vec: torch.Tensor) -> torch.Tensor:
        return self.editor.cached(("vec", key, self.x.device), lambda: vec.to(self.x.device, torch.float32))

    def value(self, value: Value) -> torch.Tensor | float:
        if not isinstance(value, torch.Tensor):
            return float(value)  # a Python number: no host-to-device copy (which would stall a GPU) per step
        dev = self.x.device
        v = self.editor.cached(("value", id(value), dev), lambda: value.to(dev, torch.float32))
        if v.ndim == 0:
            return v
        v = select_rows(v, self.info.batch, "per-example value")
        if v.ndim == 1:
            v = v.unsqueeze(1).expand(self.info.batch, self.info.seq)
        else:
            pos = self.info.abs_positions(dev)
            if self.info.past + self.info.seq > v.shape[1]:
                raise SaesteerError(
                    f"per-position value covers {v.shape[1]} positions but the model reached position "
                    f"{self.info.past + self.info.seq - 1}; give one column per position (prompt and generated)"
                )
            v = v[:, pos]
        if self.rows is not None:
            return v.reshape(-1).index_select(0, self.rows).unsqueeze(-1)
        return v.unsqueeze(-1)


class Editor:
    """Applies a list of interventions to activations (batch, seq, d_model) at selected positions."""

    def __init__(self, sae: SAE | None, interventions: Sequence[Any], keep_error: bool = True, topk_exact: bool = True):
        self.sae = sae
        self.interventions = list(interventions)
        self.keep_error = keep_error
        self.topk_exact = topk_exact
        read: list[int] = []
        dec: list[int] = []
        for iv in self.interventions:
            for f in iv.features:
                if f not in read:
                    read.append(f)
            for f in (*iv.features, *getattr(iv, "edits", ())):
                if f not in dec:
                    dec.append(f)
        self.read_feats = read
        self.feat_pos = {f: i for i, f in enumerate(read)}
        self.dec_feats = dec
        self.dec_pos = {f: i for i, f in enumerate(dec)}
        self.adds = [iv for iv in self.interventions if iv.stage == "add"]
        self.projects = [iv for iv in self.interventions if iv.stage == "project"]
        self._cache: dict[Any, Any] = {}

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def reader(self, device: torch.device) -> Reader:
        assert self.sae is not None
        sae = self.sae
        return self.cached(("reader", device), lambda: make_reader(sae, self.read_feats, device, self.topk_exact))

    def dec_rows(self, device: torch.device) -> torch.Tensor:
        assert self.sae is not None
        w_dec = self.sae.W_dec
        return self.cached(("dec", device), lambda: w_dec.detach()[self.dec_feats].to(device, torch.float32))

    def apply(self, x: torch.Tensor, sel: torch.Tensor | None, info: ForwardInfo) -> torch.Tensor:
        """The edited activation; positions where ``sel`` is False keep ``x`` bit for bit.

        On the CPU the edit runs on the selected rows only (finding them costs no device sync there).
        """
        if sel is not None and x.device.type == "cpu":
            rows = sel.reshape(-1).nonzero().squeeze(1)
            if rows.numel() == 0:
                return x
            flat = x.reshape(-1, x.shape[-1])
            new = self._edit(flat.index_select(0, rows), StepContext(self, flat, info, rows))
            return flat.index_copy(0, rows, new.to(x.dtype)).view_as(x)
        new = self._edit(x, StepContext(self, x, info)).to(x.dtype)
        return new if sel is None else torch.where(sel.unsqueeze(-1), new, x)

    def _edit(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The interventions on ``x`` (any leading shape) in float32."""
        xf = x.to(torch.float32)
        ctx.x = xf
        if self.keep_error or self.sae is None:
            out = xf
        else:
            out = self.sae(xf).to(torch.float32)  # the reconstruction: the error term dropped
        for iv in self.adds:
            out = out + iv.delta(ctx)
        for iv in self.projects:
            out = iv.project(out, ctx)
        return out
