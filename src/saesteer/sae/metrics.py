"""SAE quality metrics: reconstruction on held-out activations, and the SAE spliced into the model.

* :func:`activation_metrics` -- fraction of variance unexplained (FVU), L0, dead and dense latent fractions.
* :func:`spliced_metrics` -- next-token CE and KL versus the clean model with the SAE output replacing the
  activation at ``sae.cfg.hook_name``; CE recovered relative to zero-ablation; and the same splice with the
  error term added back (must change nothing). Padding positions are ignored. ``ce_increase`` is the
  ΔCE = CE(spliced) - CE(clean), in nats per predicted token.
* :func:`evaluate_sae` -- both, reported apart on web text (corpus windows) and on chat-formatted
  conversations (chat template + the model's own responses), and the held-out tokens split by kind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from saesteer.activations.harvest import right_pad
from saesteer.activations.sources import KIND_NAMES, chat_windows, iter_texts
from saesteer.activations.store import ActivationStore
from saesteer.config import opt
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


def _chunks(x: torch.Tensor, chunk: int, boundary: float) -> list[torch.Tensor]:
    """``x`` split into pieces of at most ``chunk`` rows, with a cut at row ``boundary`` if it falls inside."""
    if 0 < boundary < x.shape[0]:
        b = int(boundary)
        return [*x[:b].split(chunk), *x[b:].split(chunk)]
    return list(x.split(chunk))


@torch.no_grad()
def activation_metrics(
    sae: SAE,
    batches: Iterable[torch.Tensor],
    chunk: int = 4096,
    dense_threshold: float = 0.1,
    dead_window: int | None = None,
) -> dict[str, float]:
    """FVU, MSE, L0, dead and dense fractions of ``sae`` over raw activation batches [N, d_in].

    FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all tokens. Dead: fired zero times in the first
    ``dead_window`` tokens (the definition training reports; None: all tokens); ``dead_window_tokens`` says
    how many tokens that window held (fewer than asked when the data are shorter). Dense: fires on more
    than ``dense_threshold`` of all tokens.
    """
    dev, dtype = sae.W_enc.device, sae.W_enc.dtype
    fires = torch.zeros(sae.d_sae, dtype=torch.long, device=dev)
    fires_w = torch.zeros(sae.d_sae, dtype=torch.long, device=dev)
    window = dead_window if dead_window is not None else float("inf")
    sq_err = sum_x2 = l0_sum = 0.0
    sum_x = torch.zeros(sae.d_in, dtype=torch.float64, device=dev)
    n = 0
    for batch in batches:
        if batch.shape[-1] != sae.d_in:
            raise SaesteerError(f"activation width {batch.shape[-1]} != SAE d_in {sae.d_in}; use matching data")
        for x in _chunks(batch.reshape(-1, sae.d_in), chunk, window - n):
            x = x.to(dev, dtype)
            if not torch.isfinite(x).all():
                raise SaesteerError("held-out activations hold NaN or inf values; rebuild the activation cache")
            recon, ids, l0 = _reconstruct(sae, x)
            if n < window:  # the chunks are cut at the window's end, so a chunk is inside or outside it
                fires_w += torch.bincount(ids, minlength=sae.d_sae)
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
        "dead_frac": (fires_w == 0).double().mean().item(),
        "dead_window_tokens": float(min(n, window)),
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
    point = adapter.check_sae(sae)
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


@dataclass
class SaeEvalConfig:
    """How :func:`evaluate_sae` measures an SAE (held-out tokens, web text, chat conversations)."""

    held_out_tokens: int = opt(65_536, "held-out cache tokens for FVU / L0 / dead / dense")
    n_texts: int = opt(64, "web texts (the corpus's last ones, least likely harvested) for the spliced metrics")
    n_chats: int = opt(64, "chat conversations for the spliced metrics")
    context_len: int = opt(128, "tokens per window")
    batch_size: int = opt(8, "windows per forward pass")
    outlier_factor: float = opt(
        8.0, "leave tokens unspliced whose norm exceeds this many times the median (as harvest drops them; 0: all)"
    )
    dead_window: int | None = opt(
        None, "dead = zero firings in this many held-out tokens (default: the SAE's training window)"
    )


def corpus_windows(
    corpus: str, tokenizer: Any, n_texts: int = 64, context_len: int = 128, text_key: str = "text"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of the corpus's last ``n_texts`` texts, one right-padded window each, no special tokens."""
    texts = list(deque(iter_texts(corpus, text_key), maxlen=n_texts))
    rows = [ids[:context_len] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    rows = [r for r in rows if len(r) >= 2]
    if not rows:
        raise SaesteerError(f"corpus {corpus}: no text has 2 or more tokens")
    return right_pad(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def conversation_windows(
    conversations: list[list[dict[str, str]]], tokenizer: Any, context_len: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of conversations rendered with the chat template (template tokens included), one window each."""
    rows = [ids for ids, _ in chat_windows(tokenizer, conversations, context_len) if len(ids) >= 2]
    if not rows:
        raise SaesteerError("no chat conversation to score; give conversations with a prompt and a response")
    return right_pad(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def spliced_over(
    model: nn.Module, sae: SAE, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 8, outlier_factor: float = 8.0
) -> dict[str, Any]:
    """:func:`spliced_metrics` over all windows, ``batch_size`` at a time, combined; adds ``n_windows``."""
    adapter = ArchAdapter(model)
    dev = next(model.parameters()).device
    sae = sae.to(dev)
    parts = [
        spliced_metrics(model, adapter, sae, ids[i : i + batch_size].to(dev), mask[i : i + batch_size].to(dev),
                        outlier_factor=outlier_factor)
        for i in range(0, ids.shape[0], batch_size)
    ]  # fmt: skip
    return {**combine_spliced(parts), "n_windows": int(ids.shape[0])}


def held_out_metrics(sae: SAE, store: ActivationStore, n_tokens: int, dead_window: int | None) -> dict[str, Any]:
    """:func:`activation_metrics` on the held-out split, overall and per token kind (when the cache has kinds)."""
    acts = store.held_out(n_tokens)
    out: dict[str, Any] = {"all": activation_metrics(sae, [acts], dead_window=dead_window)}
    kinds = store.held_out_kinds(n_tokens)
    if kinds is not None:
        names = KIND_NAMES if kinds.dtype != torch.bool else ("corpus", "chat")
        for code, name in enumerate(names):
            sel = kinds.to(torch.long) == code
            if int(sel.sum()) > 0:
                out[name] = activation_metrics(sae, [acts[sel]], dead_window=dead_window)
    return out


def evaluate_sae(
    model: nn.Module | None,
    tokenizer: Any,
    sae: SAE,
    cfg: SaeEvalConfig,
    *,
    store: ActivationStore | None = None,
    corpus: str | None = None,
    conversations: list[list[dict[str, str]]] | None = None,
    text_key: str = "text",
) -> dict[str, Any]:
    """Fidelity of ``sae``: held-out reconstruction (by kind), and spliced CE / KL / ΔCE on web text and on chat.

    Returns ``{"dead_window_tokens", "activations", "web", "chat"}`` with the parts whose inputs were given:
    ``store`` for the held-out metrics, ``model`` + ``corpus`` for ``web``, ``model`` + ``conversations``
    for ``chat``.
    """
    window = cfg.dead_window or sae.cfg.metadata.get("train_config", {}).get("dead_window")
    out: dict[str, Any] = {}
    if store is not None:
        store.check_matches(hook_name=sae.cfg.hook_name or None, d_model=sae.d_in)
        out["activations"] = held_out_metrics(sae, store, cfg.held_out_tokens, window)
        out["dead_window_tokens"] = out["activations"]["all"]["dead_window_tokens"]
    if model is not None and corpus:
        ids, mask = corpus_windows(corpus, tokenizer, cfg.n_texts, cfg.context_len, text_key)
        out["web"] = spliced_over(model, sae, ids, mask, cfg.batch_size, cfg.outlier_factor)
    if model is not None and conversations:
        ids, mask = conversation_windows(conversations[: cfg.n_chats], tokenizer, cfg.context_len)
        out["chat"] = spliced_over(model, sae, ids, mask, cfg.batch_size, cfg.outlier_factor)
    if not out:
        raise SaesteerError("nothing to measure; give an activation cache, or a model with a corpus or conversations")
    return out
