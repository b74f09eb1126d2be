"""Log-likelihood scoring through ``model(...)``: ``sum log p(continuation | context)`` for many pairs, batched.

The engine behind the multiple-choice benchmarks (:mod:`saesteer.evaluation.capability`). Rows are left-padded with
explicit ``position_ids`` (so each row scores as if unpadded) and only the last positions that are scored get
logits (``logits_to_keep``), so a 150k-token vocabulary costs ``batch x scored tokens x vocab``, not
``batch x sequence x vocab``. Tokenisation follows lm-evaluation-harness (trailing context spaces move to the
continuation; the continuation is split off the encoding of the whole text), so scores match its ``loglikelihood``.
Forward hooks on the model (steering) are active.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from saesteer.errors import SaesteerError


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and ``continuation``; trailing spaces of the context move to the continuation and
    the continuation is split off the encoding of the whole text (lm-evaluation-harness's convention)."""
    n_sp = len(context) - len(context.rstrip())
    if n_sp:
        context, continuation = context[:-n_sp], context[-n_sp:] + continuation
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return list(ctx), list(whole[len(ctx) :])
    return list(ctx), list(tokenizer(continuation, add_special_tokens=False)["input_ids"])


def context_limit(model: Any, max_length: int) -> int:
    """``max_length`` capped by the model's own context size (``config.max_position_embeddings`` and the like)."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        limit = getattr(cfg, name, None)
        if isinstance(limit, int) and limit > 0:
            return min(max_length, limit)
    return max_length


def _supports_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def prefix_cache(model: Any, prefix: Sequence[int]) -> Any:
    """The KV cache of one forward pass over ``prefix`` (shared by rows scored with :func:`last_logprobs`)."""
    dev = next(model.parameters()).device
    out = model(input_ids=torch.tensor([list(prefix)], device=dev), use_cache=True)
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _cache_kwarg(model: Any) -> str:
    """``cache`` (newer transformers 5.x) or ``past_key_values`` (older), whichever the model's forward takes."""
    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


@torch.no_grad()
def last_logprobs(
    model: Any, rows: Sequence[Sequence[int]], keep: int, pad_id: int, prefix: tuple[Any, int] | None = None
) -> torch.Tensor:
    """Log-softmax (fp32) at the last ``keep`` positions of each row: ``[len(rows), keep, vocab]``.

    Rows are left-padded into one batch with ``position_ids`` that skip the padding, so every row ends at the
    same position and each row's scores match an unpadded forward of that row. With ``prefix = (cache, length)``
    the rows continue a cached prefix (:func:`prefix_cache`), copied for each row.
    """
    dev = next(model.parameters()).device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {"input_ids": ids.to(dev), "use_cache": False}
    if prefix is not None:
        cache, plen = copy.deepcopy(prefix[0]), prefix[1]
        cache.batch_repeat_interleave(len(rows))
        mask, pos = torch.cat([torch.ones((len(rows), plen), dtype=torch.long), mask], dim=1), pos + plen
        kwargs.update({_cache_kwarg(model): cache, "use_cache": True})
    kwargs.update(attention_mask=mask.to(dev), position_ids=pos.to(dev))
    if _supports_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:, :]
    return torch.log_softmax(logits.float(), dim=-1)


def loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = False,
    desc: str = "loglik",
    share_prefix: bool = False,
) -> list[float]:
    """``sum log p(continuation | context)`` for each ``(context, continuation)`` pair.

    Pairs that share a context and whose continuations are one token each (multiple-choice letters) share one
    forward pass of the context; other pairs get one row ``context + continuation[:-1]`` each. ``share_prefix``:
    the token prefix common to all rows (e.g. a few-shot primer) is run once and its KV cache reused -- the same
    numbers for hooks that act per position, but a hook that judges the whole prompt in its first forward pass
    (a gate) then sees only the prefix there.
    """
    max_length = context_limit(model, max_length)
    if batch_size < 1 or max_length < 2:
        raise SaesteerError("batch_size must be >= 1 and max_length >= 2")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = [encode_pair(tokenizer, c, x) for c, x in requests]
    for (c, x), (ci, xi) in zip(requests, enc, strict=True):
        if not ci or not xi:
            raise SaesteerError(f"empty context or continuation in a log-likelihood request ({c[-40:]!r}, {x!r})")
    # rows: (token ids, [(request index, continuation ids)]); the scored tokens are the row's last ones
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ci, xi) in enumerate(enc):
        if len(xi) == 1:
            groups.setdefault(tuple(ci), []).append(i)
    rows: list[tuple[list[int], list[tuple[int, list[int]]]]] = []
    for ctx, members in groups.items():
        rows.append((list(ctx)[-max_length:], [(i, enc[i][1]) for i in members]))
    for i, (ci, xi) in enumerate(enc):
        if len(xi) > 1:
            if len(xi) >= max_length:
                raise SaesteerError(f"a continuation of {len(xi)} tokens exceeds max_length={max_length}; raise it")
            rows.append(((ci + xi[:-1])[-max_length:], [(i, xi)]))
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))
    out = [0.0] * len(requests)
    plen, prefix = common_prefix_length([r[0] for r in rows]) if share_prefix else 0, None
    if plen >= 8 and all(len(r[0]) <= max_length for r in rows):
        prefix = (prefix_cache(model, rows[0][0][:plen]), plen)
        rows = [(r[plen:], t) for r, t in rows]
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
        batch = [rows[r] for r in order[start : start + batch_size]]
        keep = max(len(cont) for b in batch for _, cont in b[1])
        lp = last_logprobs(model, [b[0] for b in batch], keep, pad_id, prefix)
        for b, (_, targets) in enumerate(batch):
            for req, cont in targets:
                pos = lp[b, keep - len(cont) :]
                out[req] = float(pos.gather(-1, torch.tensor(cont, device=pos.device)[:, None]).sum())
    return out


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all rows share, leaving at least one token of each row after it."""
    if not rows:
        return 0
    n, first = min(len(r) for r in rows) - 1, rows[0]
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)
