"""The fast decode path: a plain KV-cache loop over ``model.forward``, with prepacked CPU weights.

Decoding is the loop Hugging Face ``generate`` runs, without its per-step machinery: one prompt
forward that keeps only the last position's logits, then one forward per new token on a
``DynamicCache``. Every call passes the 2-D attention mask over past and current tokens, exactly as
``generate`` does, so forward hooks (steering) see the same inputs: past length from the cache,
padding from the mask. Positions follow ``generate``: ``pos = cumsum(mask) - 1`` (1 on padding).

Token choice per step, on float32 logits:

* greedy: ``argmax`` (ties: the lowest id, as ``generate``);
* sampling: ``softmax(logits / T)`` restricted by top-k (the model's generation config) and top-p
  (``transformers``' own warpers), drawn with ``torch.multinomial`` from the global RNG.

Rows that emitted EOS (or that ``finished`` reports ended, e.g. at a stop string) get the pad token
from then on; the loop ends when every row is finished or after ``max_new_tokens``. Under greedy
decoding finished rows leave the batch (``shrink``): their KV-cache rows, mask and positions are
dropped, so each later step costs what the rows still running cost -- a batch waits on its longest
reply, and a step is compute-bound at the batch sizes used here. Later steps run inside
:func:`saesteer.model.rows.live_rows`, so steering keeps each row's own settings and gate decision.
A row's tokens are the same as in the full batch up to floating-point rounding of the smaller matmuls.
(Sampling keeps every row, so the random draws match ``generate``'s.)
On a bf16 CPU model the linear layers multiply with prepacked oneDNN weights
(:mod:`saesteer.model.packed`): same results bit for bit, less time per step.
A model whose generation config asks for logits processing this loop does not implement
(repetition penalty, banned n-grams, forced tokens ...) should be decoded with ``generate``;
:func:`supported` tells.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from saesteer.model.packed import packed_linears
from saesteer.model.rows import live_rows

# generation-config fields this loop does not implement, with their neutral values
_UNSUPPORTED = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "encoder_repetition_penalty": (None, 1.0),
    "sequence_bias": (None,),
}


def supported(model: Any) -> bool:
    """Whether :func:`decode` reproduces ``generate`` for this model (no extra logits processors)."""
    gc = getattr(model, "generation_config", None)
    if gc is None or getattr(model.config, "is_encoder_decoder", False):
        return gc is None
    return all(getattr(gc, key, None) in neutral for key, neutral in _UNSUPPORTED.items())


def _forward_kwargs(model: Any) -> tuple[str, bool]:
    """The cache argument's name and whether the model accepts ``logits_to_keep``."""
    params = inspect.signature(model.forward).parameters
    cache_key = "cache" if "cache" in params else "past_key_values"
    return cache_key, "logits_to_keep" in params


def _sampler(model: Any, temperature: float, top_p: float) -> Any:
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    top_k = getattr(getattr(model, "generation_config", None), "top_k", None)
    if top_k:
        procs.append(TopKLogitsWarper(int(top_k)))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    return procs


@torch.no_grad()
def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    min_new_tokens: int = 0,
    pack: bool = True,
    on_step: Callable[[torch.Tensor], bool] | None = None,
    finished: Callable[[], Sequence[bool]] | None = None,
    shrink: bool = True,
) -> torch.Tensor:
    """New tokens ``(batch, n <= max_new_tokens)`` for a left-padded batch (pad after EOS).

    ``on_step(tokens)`` (optional) sees each step's tokens ``(batch,)`` as they are chosen (streaming); when it
    returns True the loop stops there (cancelled). ``finished()`` (optional): which rows the caller has ended
    after that step (e.g. at a stop string). ``shrink``: drop finished rows from the batch (greedy only).
    """
    from transformers import DynamicCache

    batch = input_ids.shape[0]
    dev = input_ids.device
    cache_key, keep_arg = _forward_kwargs(model)
    cache = DynamicCache(config=model.config)
    mask = attention_mask.to(dev, torch.long)
    pos = (mask.cumsum(-1) - 1).masked_fill_(mask == 0, 1)
    eos = torch.tensor(list(eos_ids), device=dev, dtype=torch.long)
    procs = _sampler(model, temperature, top_p) if do_sample else None
    shrink = shrink and not do_sample
    live = torch.arange(batch, device=dev)  # the prompt-pass rows still in the batch
    unfinished = torch.ones(batch, dtype=torch.bool, device=dev)  # over the rows in the batch
    out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    ids = input_ids
    kw: dict[str, Any] = {cache_key: cache, "use_cache": True}
    if keep_arg:
        kw["logits_to_keep"] = 1
    n = 0
    with packed_linears(model) if pack else contextlib.nullcontext():
        for step in range(max_new_tokens):
            rows = live_rows(live.tolist()) if live.numel() < batch else contextlib.nullcontext()
            with rows:
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits[:, -1].float()
            if step < min_new_tokens and eos.numel():
                logits[:, eos] = -float("inf")
            if procs is not None:
                probs = torch.softmax(procs(ids, logits), dim=-1)
                nxt = torch.multinomial(probs, 1).squeeze(1)
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad_id))
            out[live, step] = nxt
            n = step + 1
            if on_step is not None and on_step(out[:, step]):
                break
            if eos.numel():
                unfinished &= ~torch.isin(nxt, eos)
            if finished is not None:
                unfinished &= ~torch.tensor(list(finished()), dtype=torch.bool, device=dev)[live]
            if not bool(unfinished.any()):
                break
            ids = nxt.unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            pos = pos[:, -1:] + 1
            if shrink and not bool(unfinished.all()):
                keep = unfinished.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                ids, mask, pos, live, unfinished = ids[keep], mask[keep], pos[keep], live[keep], unfinished[keep]
    return out[:, :n]
