"""A store of token contexts and their sparse SAE codes, for feature statistics and top-activating contexts.

Rows are token sequences (corpus windows, chat prompts, prompt + response conversations), each with a
source label. For every real token the store keeps its ``keep`` largest latents (values, indices): for
a Top-k SAE with ``keep >= k`` that is its exact code; for ReLU / JumpReLU SAEs, latents outside the
``keep`` largest of a token are dropped (statistics of rarely-strong features are then slight
underestimates). The first token of each row (the attention sink, whose norm is an outlier) is kept
for display but left out of the statistics.

Saved as one safetensors file (``contexts.safetensors``) with the SAE's fingerprint in its metadata,
so ``saesteer feature show --run DIR`` reuses a discovery run's contexts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saesteer.config import atomic_write_bytes
from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter, HookPoint
from saesteer.sae.base import SAE

FILE = "contexts.safetensors"


def sae_fingerprint(sae: SAE) -> str:
    """A short hash of the SAE's shape, hook and decoder weights (tells whether a store belongs to it)."""
    h = hashlib.sha256(f"{sae.cfg.architecture}:{sae.d_in}:{sae.d_sae}:{sae.cfg.hook_name}".encode())
    h.update(sae.W_dec.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class FeatureStats:
    """Per-feature statistics over the store's statistic tokens (d_sae,) each."""

    freq: torch.Tensor  # fraction of tokens on which the feature is active
    mean_act: torch.Tensor  # mean activation where active (0 if never)
    max_act: torch.Tensor
    n_tokens: int


@dataclass
class Context:
    """A window of a row around the feature's strongest token: text pieces and per-token activations."""

    source: str
    row: int
    position: int  # the peak token's index inside ``tokens``
    peak: float
    tokens: list[int]
    acts: list[float]


class ContextStore:
    """Token rows, their sources, and each token's sparse SAE code."""

    def __init__(
        self,
        tokens: torch.Tensor,
        offsets: torch.Tensor,
        sources: list[str],
        vals: torch.Tensor,
        idx: torch.Tensor,
        d_sae: int,
        fingerprint: str = "",
    ):
        self.tokens = tokens.long()  # (n_tokens,) flat, rows concatenated
        self.offsets = offsets.long()  # (n_rows + 1,)
        self.sources = sources
        self.vals = vals.float()  # (n_tokens, keep)
        self.idx = idx.long()
        self.d_sae = d_sae
        self.fingerprint = fingerprint
        starts = torch.zeros(self.n_tokens, dtype=torch.bool)
        starts[self.offsets[:-1][self.offsets[:-1] < self.n_tokens]] = True
        self.stat_mask = ~starts

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_rows(self) -> int:
        return len(self.sources)

    def row_of(self, token_index: int) -> int:
        return int(torch.searchsorted(self.offsets, torch.tensor(token_index), right=True)) - 1

    def feature_acts(self, feature: int) -> torch.Tensor:
        """The feature's activation on every stored token (n_tokens,)."""
        if not 0 <= feature < self.d_sae:
            raise SaesteerError(f"feature {feature} out of range; this SAE has features 0..{self.d_sae - 1}")
        return (self.vals * (self.idx == feature)).sum(-1)

    def stats(self, sources: Sequence[str] | None = None) -> FeatureStats:
        """Frequency, mean activation (where active) and max per feature, over statistic tokens."""
        m = self.stat_mask.clone()
        if sources is not None:
            keep_rows = torch.tensor([s in sources for s in self.sources], dtype=torch.bool)
            lengths = self.offsets[1:] - self.offsets[:-1]
            m &= keep_rows.repeat_interleave(lengths)
        vals, idx = self.vals[m], self.idx[m]
        n = int(m.sum())
        active = vals > 0
        counts = torch.zeros(self.d_sae, dtype=torch.float64).index_add_(
            0, idx[active], torch.ones(int(active.sum()), dtype=torch.float64)
        )
        sums = torch.zeros(self.d_sae, dtype=torch.float64).index_add_(0, idx[active], vals[active].double())
        maxes = torch.zeros(self.d_sae).scatter_reduce_(0, idx[active], vals[active], "amax", include_self=True)
        mean = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums)).float()
        return FeatureStats((counts / max(n, 1)).float(), mean, maxes, n)

    def top_contexts(self, feature: int, n: int = 10, left: int = 24, right: int = 8) -> list[Context]:
        """The ``n`` strongest activations of ``feature`` (one per row, identical windows shown once, e.g. a
        chat template's system prompt repeated in every chat row), each with its surrounding tokens."""
        acts = self.feature_acts(feature)
        order = torch.argsort(acts, descending=True, stable=True)
        out: list[Context] = []
        seen: set[int] = set()
        windows: set[tuple[int, ...]] = set()
        for t in order.tolist():
            if float(acts[t]) <= 0 or len(out) >= n:
                break
            row = self.row_of(t)
            if row in seen:
                continue
            seen.add(row)
            lo = max(int(self.offsets[row]), t - left)
            hi = min(int(self.offsets[row + 1]), t + right + 1)
            key = tuple(self.tokens[lo:hi].tolist())
            if key in windows:
                continue
            windows.add(key)
            out.append(
                Context(
                    self.sources[row],
                    row,
                    t - lo,
                    float(acts[t]),
                    self.tokens[lo:hi].tolist(),
                    [round(float(a), 4) for a in acts[lo:hi]],
                )
            )
        return out

    # --- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        from safetensors.torch import save

        meta = {
            "format": "saesteer.contexts.v1",
            "d_sae": str(self.d_sae),
            "fingerprint": self.fingerprint,
            "sources": json.dumps(self.sources),
        }
        tensors = {
            "tokens": self.tokens.int().contiguous(),
            "offsets": self.offsets.contiguous(),
            "vals": self.vals.half().contiguous(),
            "idx": self.idx.int().contiguous(),
        }
        atomic_write_bytes(path, save(tensors, meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ContextStore:
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise SaesteerError(f"context store {p} not found; run `saesteer find-features` or pass --model")
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                t = {k: fh.get_tensor(k) for k in ("tokens", "offsets", "vals", "idx")}
            sources = list(json.loads(meta["sources"]))
            d_sae = int(meta["d_sae"])
        except Exception as exc:  # safetensors and json raise several types on a corrupt file
            raise SaesteerError(f"context store {p} is unreadable ({exc}); delete it and rerun") from None
        return cls(t["tokens"], t["offsets"], sources, t["vals"], t["idx"], d_sae, meta.get("fingerprint", ""))


def _encode_sparse(sae: SAE, x: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    z = sae.encode(x)
    k = min(keep, z.shape[-1])
    vals, idx = z.topk(k, dim=-1)
    return vals.float().cpu(), idx.int().cpu()


@torch.no_grad()
def build_store(
    model: Any,
    sae: SAE,
    rows: Sequence[Sequence[int]],
    sources: Sequence[str],
    hook: str | HookPoint | None = None,
    batch_size: int = 16,
    keep: int | None = None,
    progress: bool = False,
    desc: str = "contexts",
) -> ContextStore:
    """Run every token row through the model to the SAE's hook and keep each token's sparse code."""
    from tqdm.auto import tqdm

    if len(rows) != len(sources):
        raise SaesteerError(f"{len(rows)} rows but {len(sources)} source labels")
    if not rows or any(len(r) == 0 for r in rows):
        raise SaesteerError("no token rows to encode (or an empty row); give corpus texts or prompts")
    adapter = model if isinstance(model, ArchAdapter) else ArchAdapter(model)
    hp = adapter.check(hook or sae.cfg.hook_name)
    keep = keep or int(sae.cfg.k or 64)
    dev = next(adapter.model.parameters()).device
    pad = 0
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    codes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        idx = order[start : start + batch_size]
        width = max(len(rows[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for j, i in enumerate(idx):  # left padding
            ids[j, width - len(rows[i]) :] = torch.tensor(list(rows[i]))
            mask[j, width - len(rows[i]) :] = 1
        x = adapter.run_to(hp, ids.to(dev), mask.to(dev))
        for j, i in enumerate(idx):
            codes[i] = _encode_sparse(sae, x[j, width - len(rows[i]) :].to(sae.W_enc.device), keep)
    lengths = torch.tensor([len(r) for r in rows])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    tokens = torch.tensor([t for r in rows for t in r], dtype=torch.long)
    vals = torch.cat([codes[i][0] for i in range(len(rows))])
    idxs = torch.cat([codes[i][1] for i in range(len(rows))])
    return ContextStore(tokens, offsets, list(sources), vals, idxs, sae.d_sae, sae_fingerprint(sae))


def corpus_rows(tokenizer: Any, texts: Sequence[str], context_len: int, n_windows: int) -> list[list[int]]:
    """Up to ``n_windows`` windows of ``context_len`` tokens from ``texts`` (EOS-joined)."""
    from saesteer.activations.sources import pack_tokens

    out: list[list[int]] = []
    for w in pack_tokens(tokenizer, texts, context_len):
        out.append(w)
        if len(out) >= n_windows:
            break
    return out


def merge_stores(stores: Sequence[ContextStore]) -> ContextStore:
    """One store holding the rows of several (same SAE)."""
    if not stores:
        raise SaesteerError("no context stores to merge")
    base = 0
    offsets = [torch.zeros(1, dtype=torch.long)]
    for s in stores:
        if s.d_sae != stores[0].d_sae:
            raise SaesteerError("context stores of different SAEs cannot be merged")
        offsets.append(s.offsets[1:] + base)
        base += s.n_tokens
    keep = max(s.vals.shape[1] for s in stores)

    def widen(t: torch.Tensor, fill: float) -> torch.Tensor:
        return torch.cat([t, torch.full((t.shape[0], keep - t.shape[1]), fill, dtype=t.dtype)], 1)

    return ContextStore(
        torch.cat([s.tokens for s in stores]),
        torch.cat(offsets),
        [x for s in stores for x in s.sources],
        torch.cat([widen(s.vals, 0.0) for s in stores]),
        torch.cat([widen(s.idx, 0) for s in stores]),
        stores[0].d_sae,
        stores[0].fingerprint,
    )
