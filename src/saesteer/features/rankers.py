"""Rankers: orderings of SAE features by how likely each is to steer refusal, for the causal screen.

Each ranker returns a :class:`Ranking` over all features, best first (ties broken by feature id):

* :func:`contrastive_ranking` -- mean latent activation on harmful minus harmless chat prompts at the
  post-instruction positions (the template tokens after the user message, where the model decides);
* :func:`direction_cosine_ranking` -- cosine of each decoder row with the difference-in-means refusal
  direction at the SAE's hook (:func:`diff_in_means`);
* :func:`attribution_ranking` -- gradient x activation of each latent for the refusal score
  (:mod:`saesteer.features.refusal_score`) at the first assistant position, summed over prompt
  positions, averaged over harmful prompts (attribution patching: the first-order effect of removing
  the feature);
* the paper's procedure lives in :mod:`saesteer.features.candidates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.features.refusal_score import RefusalTokens, length_batches
from saesteer.model.adapter import ArchAdapter, HookPoint
from saesteer.sae.base import SAE


@dataclass
class Ranking:
    """Features ordered best first, with the score that ordered them."""

    name: str
    features: list[int]
    scores: list[float]
    description: str = ""

    def __post_init__(self) -> None:
        self._pos = {f: i for i, f in enumerate(self.features)}

    def rank_of(self, feature: int) -> int | None:
        """1-based rank of ``feature`` (None if the ranking does not list it)."""
        i = self._pos.get(int(feature))
        return None if i is None else i + 1

    def score_of(self, feature: int) -> float | None:
        i = self._pos.get(int(feature))
        return None if i is None else self.scores[i]

    def top(self, n: int) -> list[int]:
        return self.features[:n]

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        n = len(self.features) if limit is None else min(limit, len(self.features))
        return {
            "name": self.name,
            "description": self.description,
            "n_ranked": len(self.features),
            "top": [{"feature": f, "score": s} for f, s in zip(self.features[:n], self.scores[:n], strict=True)],
        }


def rank_scores(name: str, scores: torch.Tensor, description: str = "", keep: torch.Tensor | None = None) -> Ranking:
    """A ranking of all features by ``scores`` (d_sae,), descending, ties by feature id; ``keep`` masks some out."""
    s = scores.detach().double().cpu()
    ok = torch.isfinite(s)
    if keep is not None:
        ok &= keep.cpu().bool()
    feats = torch.nonzero(ok).squeeze(1).tolist()
    feats.sort(key=lambda f: (-float(s[f]), f))
    return Ranking(name, feats, [float(s[f]) for f in feats], description)


def _dev(model: Any) -> torch.device:
    return next(model.parameters()).device


def diff_in_means(harmful: torch.Tensor, harmless: torch.Tensor, position: int = -1) -> torch.Tensor:
    """Difference-in-means direction (d_model,) at one post-instruction position of (n, n_post, d) activations."""
    return harmful[:, position].mean(0) - harmless[:, position].mean(0)


@torch.no_grad()
def encode_mean(sae: SAE, acts: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Mean SAE latent (d_sae,) over every row of ``acts`` (..., d_model)."""
    flat = acts.reshape(-1, acts.shape[-1])
    dev = sae.W_enc.device
    total = torch.zeros(sae.d_sae, dtype=torch.float64)
    for i in range(0, flat.shape[0], chunk):
        total += sae.encode(flat[i : i + chunk].to(dev)).double().sum(0).cpu()
    return (total / max(flat.shape[0], 1)).float()


def contrastive_ranking(sae: SAE, harmful_acts: torch.Tensor, harmless_acts: torch.Tensor) -> Ranking:
    """Mean activation at post-instruction positions, harmful minus harmless (features never active dropped)."""
    mh, ms = encode_mean(sae, harmful_acts), encode_mean(sae, harmless_acts)
    return rank_scores(
        "contrastive",
        mh - ms,
        "mean latent at post-instruction positions, harmful - harmless",
        keep=(mh > 0) | (ms > 0),
    )


def direction_cosine_ranking(sae: SAE, direction: torch.Tensor) -> Ranking:
    """Cosine of each decoder row with ``direction`` (the difference-in-means refusal direction)."""
    r = direction.detach().float().cpu()
    if r.ndim != 1 or r.shape[0] != sae.d_in:
        raise SaesteerError(f"direction has shape {tuple(r.shape)}; the SAE needs ({sae.d_in},)")
    if float(r.norm()) == 0.0:
        raise SaesteerError("the refusal direction is zero (harmful and harmless means coincide); use other prompts")
    cos = decoder_cosine(sae, r)
    return rank_scores("direction_cosine", cos, "cosine of the decoder row with the diff-in-means refusal direction")


def decoder_cosine(sae: SAE, v: torch.Tensor) -> torch.Tensor:
    """Cosine (d_sae,) of every decoder row with the vector ``v`` (d_in,)."""
    w, r = sae.W_dec.detach().float().cpu(), v.detach().float().cpu()
    return (w @ r) / (w.norm(dim=1).clamp_min(1e-12) * r.norm().clamp_min(1e-12))


def attribution_ranking(
    model: Any,
    tokenizer: Any,
    sae: SAE,
    prompts: Sequence[Any],
    tokens: RefusalTokens,
    hook: str | HookPoint | None = None,
    batch_size: int = 8,
    system_prompt: str | None = None,
    progress: bool = False,
) -> Ranking:
    """Gradient x activation of each latent for the refusal score, summed over real prompt positions and
    averaged over ``prompts``. The SAE is spliced in with its error term kept, so the forward is unchanged."""
    from tqdm.auto import tqdm

    from saesteer.model.generation import encode_chats

    if len(prompts) == 0:
        raise SaesteerError("empty prompt set for the attribution ranker; give at least one harmful prompt")
    adapter = model if isinstance(model, ArchAdapter) else ArchAdapter(model)
    hp = adapter.check(hook or sae.cfg.hook_name)
    net = adapter.model
    dev = _dev(net)
    tokens.validate(adapter.vocab_size)
    total = torch.zeros(sae.d_sae, dtype=torch.float64)
    grads: dict[str, torch.Tensor] = {}

    def splice(x: torch.Tensor) -> torch.Tensor:
        z = sae.encode(x.detach()).float().requires_grad_(True)
        grads["z"] = z
        recon = sae.decode(z)
        return (recon + (x.float() - recon).detach()).to(x.dtype)

    flags = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)
    handle = adapter.add_hook(hp, splice)
    try:
        for idx in tqdm(
            length_batches([len(str(p)) for p in prompts], batch_size), desc="attribution", disable=not progress
        ):
            enc = encode_chats(tokenizer, [prompts[i] for i in idx], system_prompt)
            ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
            with torch.enable_grad():
                score = tokens.score(adapter.forward(ids, mask, mask_positions=True, last_only=True)).sum()
                z = grads["z"]
                (g,) = torch.autograd.grad(score, z)
            contrib = (g * z.detach()) * mask.unsqueeze(-1).to(g.dtype)
            total += contrib.sum((0, 1)).double().cpu()
    finally:
        handle.remove()
        for p, f in zip(net.parameters(), flags, strict=True):
            p.requires_grad_(f)
    return rank_scores(
        "attribution", total / len(prompts), "gradient x activation for the refusal score, summed over prompt positions"
    )
