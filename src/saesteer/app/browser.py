"""The feature browser's data: search, feature pages, nearest features, clamp bounds.

* **Feature page**: the feature card of :func:`saesteer.features.interpret.describe_feature` (top contexts
  with per-token activations, density histogram, logit lens ``W_U (g * W_dec[f])``), the nearest
  features by decoder cosine ``cos(W_dec[f], W_dec[g]) = W_dec[f] . W_dec[g] / (|W_dec[f]| |W_dec[g]|)``,
  and the feature's entries in ``features.json`` (labels, screen results, clamp mapping) when given.
* **Top tokens** of a feature: the distinct tokens at which it is most active in the activation cache
  (each token counted at its strongest occurrence); searching a token finds the features it tops.
* **Clamp bounds**: ``+- value_multiple * max_act[f]`` with ``max_act`` observed in the cache (the median
  max of the live features when ``f`` never fired there); ``+- value_bound`` until the cache is ready.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from saesteer.app.config import AppConfig
from saesteer.features.contexts import ContextStore, FeatureStats
from saesteer.features.interpret import deny_pattern, describe_feature, logit_lens, mask_pieces
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE

TOP_TOKENS = 5


def _labels(features_json: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    """Per-feature label, notes and role (chosen / control) from a features.json."""
    out: dict[int, dict[str, Any]] = {}
    if not features_json:
        return out
    for key, card in (features_json.get("features") or {}).items():
        if isinstance(card, dict) and str(key).isdigit():
            out[int(key)] = {
                "label": str(card.get("title") or card.get("label") or ""),
                "notes": str(card.get("notes") or card.get("explanation") or ""),
            }
    for role in ("chosen", "control"):
        entry = features_json.get(role)
        if isinstance(entry, dict) and isinstance(entry.get("feature"), int):
            info = out.setdefault(int(entry["feature"]), {"label": "", "notes": ""})
            info["role"] = role
            if not info["label"]:
                info["label"] = f"{role} refusal feature" if role == "chosen" else "control feature"
    return out


class FeatureBrowser:
    """Feature search and pages over one SAE, its model and (once built) the activation cache."""

    def __init__(self, model: Any, tokenizer: Any, sae: SAE, cfg: AppConfig, features_json: dict[str, Any] | None):
        self.model = model
        self.adapter = ArchAdapter(model)
        self.tokenizer = tokenizer
        self.sae = sae
        self.cfg = cfg
        self.features_json = features_json
        self.labels = _labels(features_json)
        w = sae.W_dec.detach().float().cpu()
        self.unit_dec = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.store: ContextStore | None = None
        self.stats: FeatureStats | None = None
        self.typical_max = 0.0
        self.top_tokens: dict[int, list[dict[str, Any]]] = {}
        self.token_index: dict[str, list[tuple[float, int]]] = {}
        self._mask = deny_pattern()

    @property
    def d_sae(self) -> int:
        return self.sae.d_sae

    # --- cache-derived data -------------------------------------------------------------------------------
    def attach_store(self, store: ContextStore) -> None:
        """Statistics and the top-token index of a freshly built or loaded activation cache."""
        stats = store.stats()
        alive = stats.max_act[stats.max_act > 0]
        self.typical_max = float(alive.median()) if alive.numel() else 0.0
        self.top_tokens, self.token_index = self._index_tokens(store)
        self.stats = stats
        self.store = store

    def _index_tokens(self, store: ContextStore) -> tuple[dict[int, list[dict[str, Any]]], dict[str, list[Any]]]:
        m = store.stat_mask
        vals, idx = store.vals[m].numpy(), store.idx[m].numpy()
        toks = np.broadcast_to(store.tokens[m].numpy()[:, None], idx.shape)
        act = vals > 0
        f, v, t = idx[act].astype(np.int64), vals[act], toks[act].astype(np.int64)
        order = np.lexsort((-v, f))  # by feature, then strongest first
        f, v, t = f[order], v[order], t[order]
        _, first = np.unique(f * (int(t.max(initial=0)) + 1) + t, return_index=True)  # each (feature, token) once
        first.sort()
        f, v, t = f[first], v[first], t[first]
        starts = np.searchsorted(f, f, side="left")
        keep = (np.arange(len(f)) - starts) < TOP_TOKENS
        top: dict[int, list[dict[str, Any]]] = {}
        index: dict[str, list[tuple[float, int]]] = {}
        for fi, vi, ti in zip(f[keep].tolist(), v[keep].tolist(), t[keep].tolist(), strict=True):
            text = mask_pieces([self.tokenizer.decode([ti])], self._mask)[0][0]
            top.setdefault(fi, []).append({"token": text, "act": round(vi, 4)})
            index.setdefault(text.strip().lower(), []).append((vi, fi))
        return top, index

    # --- bounds -------------------------------------------------------------------------------------------
    def value_bounds(self, feature: int) -> dict[str, Any]:
        """The range a clamp value of ``feature`` must lie in, and where it comes from."""
        if self.stats is None:
            b = self.cfg.value_bound
            return {"lo": -b, "hi": b, "max_act": None, "basis": f"fixed bound +-{b:g} (activation cache not ready)"}
        mx = float(self.stats.max_act[feature])
        ref, basis = (mx, "observed max") if mx > 0 else (self.typical_max, "median max of live features")
        if ref <= 0:
            b = self.cfg.value_bound
            return {"lo": -b, "hi": b, "max_act": mx, "basis": f"fixed bound +-{b:g} (no feature fired)"}
        b = self.cfg.value_multiple * ref
        return {"lo": -b, "hi": b, "max_act": mx, "basis": f"+-{self.cfg.value_multiple:g} x {basis} ({ref:.4g})"}

    # --- search -------------------------------------------------------------------------------------------
    def summary(self, feature: int) -> dict[str, Any]:
        info = self.labels.get(feature, {})
        out: dict[str, Any] = {
            "feature": feature,
            "label": info.get("label", ""),
            "role": info.get("role"),
            "top_tokens": self.top_tokens.get(feature, []),
        }
        if self.stats is not None:
            out["freq"] = float(self.stats.freq[feature])
            out["max_act"] = float(self.stats.max_act[feature])
        return out

    def search(self, query: str, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """Features matching ``query``: an id, a token (``tok:the``) or label/notes text (``text:refus``);
        a bare word searches tokens and labels. An empty query lists labelled, then most frequent features."""
        q = query.strip()
        kind = "list"
        if q.isdigit():
            kind, hits = "id", [int(q)] if int(q) < self.d_sae else []
        elif q:
            prefix, _, rest = q.partition(":")
            kind = prefix if prefix in ("tok", "text") and rest else "any"
            term = (rest if kind != "any" else q).strip().lower()
            hits = []
            if kind in ("tok", "any"):
                hits += [f for _, f in sorted(self.token_index.get(term, []), reverse=True)]
            if kind in ("text", "any"):
                hits += [
                    f
                    for f, info in sorted(self.labels.items())
                    if term in (info.get("label", "") + " " + info.get("notes", "")).lower()
                ]
            hits = list(dict.fromkeys(hits))
        else:
            hits = list(self.labels)
            if self.stats is not None:
                by_freq = torch.argsort(self.stats.freq, descending=True, stable=True).tolist()
                hits += [f for f in by_freq if float(self.stats.freq[f]) > 0]
            else:
                hits += list(range(min(self.d_sae, offset + limit)))
            hits = list(dict.fromkeys(hits))
        page = hits[offset : offset + limit]
        return {"query": query, "kind": kind, "total": len(hits), "results": [self.summary(f) for f in page]}

    # --- page ---------------------------------------------------------------------------------------------
    def nearest(self, feature: int, k: int = 10) -> list[dict[str, Any]]:
        cos = self.unit_dec @ self.unit_dec[feature]
        cos[feature] = -math.inf
        top = torch.topk(cos, min(k, self.d_sae - 1))
        return [
            {"feature": int(i), "cosine": round(float(c), 4), "label": self.labels.get(int(i), {}).get("label", "")}
            for c, i in zip(top.values, top.indices, strict=True)
        ]

    def screen(self, feature: int) -> dict[str, Any] | None:
        """This feature's entries in features.json: screen results, clamp mapping, ranks, card."""
        fj = self.features_json
        if not fj:
            return None
        sc = fj.get("screen") or {}
        out: dict[str, Any] = {
            "cheap": [r for r in sc.get("cheap") or [] if r.get("feature") == feature],
            "generation": [r for r in sc.get("generation") or [] if r.get("feature") == feature],
            "clamp": ((sc.get("clamp") or {}).get("per_feature") or {}).get(str(feature)),
            "ranks": (sc.get("pool_ranks") or {}).get(str(feature)),
            "role": self.labels.get(feature, {}).get("role"),
        }
        if not any(out.values()):
            return None
        return out

    def page(self, feature: int, n_contexts: int = 12) -> dict[str, Any]:
        """Everything the feature page shows."""
        info = self.labels.get(feature, {})
        out: dict[str, Any] = {
            "feature": feature,
            "d_sae": self.d_sae,
            "label": info.get("label", ""),
            "notes": info.get("notes", ""),
            "role": info.get("role"),
            "nearest": self.nearest(feature),
            "screen": self.screen(feature),
            "bounds": self.value_bounds(feature),
            "top_tokens": self.top_tokens.get(feature, []),
        }
        store = self.store
        if store is None:
            out.update(card=None, logit_lens=logit_lens(self.adapter, self.tokenizer, self.sae, feature))
            return out
        card = describe_feature(self.model, self.tokenizer, self.sae, store, feature, n_contexts, title=out["label"])
        d = card.to_dict()
        out.update(card=d, logit_lens=d.pop("logit_lens"))
        return out
