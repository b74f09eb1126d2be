"""SAE quality metrics: reconstruction on held-out activations, and the SAE spliced into the model.

* :func:`activation_metrics` -- fraction of variance unexplained (FVU), L0, dead and dense latent fractions.
* :func:`spliced_metrics` -- next-token CE and KL versus the clean model with the SAE output replacing the
  activation at ``sae.cfg.hook_name``; CE recovered relative to zero-ablation; and the same splice with the
  error term added back (must change nothing). Padding positions are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE, TopKSAE


@torch.no_grad()
def _reconstruct(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction, active latent ids (flat), L0 per row) for rows ``x`` [n, d_in]."""
    if isinstance(sae, TopKSAE):
        vals, idx = sae.topk(x)
        recon = sae.decode_sparse(vals, idx)
        active = vals > 0
        return recon, idx[active], active.sum(dim=-1)
    z = sae.encode(x)
    active = z != 0
    return sae.decode(z), active.nonzero()[:, 1], active.sum(dim=-1)


@torch.no_grad()
def activation_metrics(
    sae: SAE, batches: Iterable[torch.Tensor], chunk: int = 4096, dense_threshold: float = 0.1
) -> dict[str, float]:
    """FVU, MSE, L0, dead and dense fractions of ``sae`` over raw activation batches [N, d_in].

    FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all tokens. A latent is dead if it never fires
    on these tokens, dense if it fires on more than ``dense_threshold`` of them.
    """
    dev, dtype = sae.W_enc.device, sae.W_enc.dtype
    fires = torch.zeros(sae.d_sae, dtype=torch.long, device=dev)
    sq_err = sum_x2 = l0_sum = 0.0
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64, device=dev)
    n = 0
    for batch in batches:
        if batch.shape[-1] != sae.d_in:
            raise SaesteerError(f"activation width {batch.shape[-1]} != SAE d_in {sae.d_in}; use matching data")
        for x in batch.reshape(-1, sae.d_in).split(chunk):
            x = x.to(dev, dtype)
            if not torch.isfinite(x).all():
                raise SaesteerError("held-out activations hold NaN or inf values; rebuild the activation cache")
            recon, ids, l0 = _reconstruct(sae, x)
            xd = x.double()
            sq_err += (xd - recon.double()).pow(2).sum().item()
            sum_x2 += xd.pow(2).sum().item()
            sum_x += xd.sum(dim=0)
            l0_sum += l0.sum().item()
            fires += torch.bincount(ids, minlength=sae.d_sae)
            n += x.shape[0]
    if n == 0:
        raise SaesteerError("no held-out activations given; pass at least one batch")
    total_var = sum_x2 - (sum_x.pow(2).sum().item() / n)
    freq = fires.double() / n
    return {
        "fvu": sq_err / max(total_var, 1e-30),
        "mse": sq_err / (n * sae.d_in),
        "l0": l0_sum / n,
        "dead_frac": (fires == 0).double().mean().item(),
        "dense_frac": (freq > dense_threshold).double().mean().item(),
        "n_tokens": float(n),
    }


def _token_stats(
    logits: torch.Tensor, input_ids: torch.Tensor, valid: torch.Tensor, ref_logp: torch.Tensor | None
) -> tuple[float, float]:
    """(mean next-token CE, mean KL(ref || this)) over ``valid`` [B, T-1] prediction positions."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ce = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    n = valid.sum().clamp_min(1)
    mean_ce = (ce * valid).sum() / n
    kl = torch.zeros(())
    if ref_logp is not None:
        kl_pos = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        kl = (kl_pos * valid).sum() / n
    return mean_ce.item(), kl.item()


@torch.no_grad()
def spliced_metrics(
    model: nn.Module,
    adapter: ArchAdapter,
    sae: SAE,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    splice_mask: torch.Tensor | None = None,
    outlier_factor: float = 0.0,
) -> dict[str, Any]:
    """CE / KL of the model with ``sae`` spliced in at ``sae.cfg.hook_name``, on one token batch.

    ``splice_mask`` [B, T] (bool, optional) limits where the SAE replaces the activation (default: every
    attended position); elsewhere the clean activation stays. With ``outlier_factor`` > 0, positions whose
    activation norm exceeds that many times the median (attention sinks, which harvesting drops from the
    training data) stay clean too. Returns ``ce_clean``, ``ce_spliced``,
    ``ce_zero_ablation``, ``ce_error_term`` (SAE output + its error: must equal clean), ``kl_spliced``,
    ``kl_error_term``, ``ce_increase``, ``ce_recovered`` ((CE_zero - CE_sae) / (CE_zero - CE_clean)),
    ``delta_ce_error_term``, ``n_predictions`` and ``spliced_frac`` (share of attended positions replaced).
    """
    if sae.d_in != adapter.d_model:
        raise SaesteerError(
            f"SAE d_in {sae.d_in} != model d_model {adapter.d_model}; this SAE was trained on another model"
        )
    if not sae.cfg.hook_name:
        raise SaesteerError("the SAE names no hook point (cfg.hook_name); set metadata.hook_name in its cfg.json")
    point = adapter.check(sae.cfg.hook_name)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mask = attention_mask.bool()
    where = mask if splice_mask is None else (mask & splice_mask.to(mask.device).bool())
    valid = (mask[:, :-1] & mask[:, 1:]).float()
    if outlier_factor > 0:
        act = adapter.run_to(point, input_ids, attention_mask).float()
        norms = act.norm(dim=-1)
        where = where & (norms <= outlier_factor * norms[mask].median())

    def run(replace: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        handle = None
        if replace is not None:

            def hook(act: torch.Tensor) -> torch.Tensor:
                new = replace(act.float()).to(act.dtype)
                return torch.where(where[..., None].to(act.device), new, act)

            handle = adapter.add_hook(point, hook)
        try:
            return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        finally:
            if handle is not None:
                handle.remove()

    def sae_out(a: torch.Tensor) -> torch.Tensor:
        return sae(a.to(sae.W_enc.dtype)).float()

    def with_error(a: torch.Tensor) -> torch.Tensor:
        rec = sae_out(a)
        return rec + (a - rec)

    clean = run(None)
    ref_logp = F.log_softmax(clean[:, :-1].float(), dim=-1)
    ce_clean, _ = _token_stats(clean, input_ids, valid, None)
    del clean
    ce_sae, kl_sae = _token_stats(run(sae_out), input_ids, valid, ref_logp)
    ce_zero, _ = _token_stats(run(torch.zeros_like), input_ids, valid, None)
    ce_err, kl_err = _token_stats(run(with_error), input_ids, valid, ref_logp)
    denom = ce_zero - ce_clean
    return {
        "ce_clean": ce_clean,
        "ce_spliced": ce_sae,
        "ce_zero_ablation": ce_zero,
        "ce_error_term": ce_err,
        "kl_spliced": kl_sae,
        "kl_error_term": kl_err,
        "ce_increase": ce_sae - ce_clean,
        "ce_recovered": (ce_zero - ce_sae) / denom if abs(denom) > 1e-12 else float("nan"),
        "delta_ce_error_term": ce_err - ce_clean,
        "n_predictions": int(valid.sum().item()),
        "spliced_frac": where.sum().item() / max(int(mask.sum().item()), 1),
    }


def first_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True at every attended position except each row's first (left padding aware)."""
    mask = attention_mask.bool()
    first = mask.long().argmax(dim=1)
    out = mask.clone()
    out[torch.arange(mask.shape[0]), first] = False
    return out


def combine_spliced(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Prediction-weighted means of several :func:`spliced_metrics` results (ratios recomputed)."""
    total = sum(r["n_predictions"] for r in results)
    if total == 0:
        raise SaesteerError("no next-token predictions to score; give longer texts")
    keys = ("ce_clean", "ce_spliced", "ce_zero_ablation", "ce_error_term", "kl_spliced", "kl_error_term")
    out: dict[str, Any] = {k: sum(r[k] * r["n_predictions"] for r in results) / total for k in keys}
    out["ce_increase"] = out["ce_spliced"] - out["ce_clean"]
    denom = out["ce_zero_ablation"] - out["ce_clean"]
    out["ce_recovered"] = (out["ce_zero_ablation"] - out["ce_spliced"]) / denom if abs(denom) > 1e-12 else float("nan")
    out["delta_ce_error_term"] = out["ce_error_term"] - out["ce_clean"]
    out["n_predictions"] = total
    out["spliced_frac"] = sum(r.get("spliced_frac", 1.0) * r["n_predictions"] for r in results) / total
    return out
