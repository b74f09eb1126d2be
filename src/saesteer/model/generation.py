"""Batched chat generation: conversations in, completions out.

Conversations are a user prompt (``str``) or a list of ``{"role", "content"}`` messages (multi-turn).
They go through the tokenizer's chat template, are left-padded into batches, and decoded with the
KV cache, greedily or by sampling under a seed, until EOS or ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from saesteer.config import opt
from saesteer.errors import SaesteerError

Message = dict[str, str]
Conversation = str | Sequence[Message]


@dataclass
class GenerationConfig:
    """How to generate."""

    max_new_tokens: int = opt(64, "maximum number of new tokens per completion")
    batch_size: int = opt(16, "conversations per batch")
    do_sample: bool = opt(False, "sample instead of greedy decoding")
    temperature: float = opt(1.0, "sampling temperature (with --do-sample)")
    top_p: float = opt(1.0, "nucleus sampling mass (with --do-sample)")
    seed: int = opt(0, "random seed for sampling")
    system_prompt: str | None = opt(None, "system prompt prepended to every conversation (default: the template's)")


def to_messages(conv: Conversation, system_prompt: str | None = None) -> list[Message]:
    """Normalise a conversation to a list of messages."""
    if isinstance(conv, str):
        msgs: list[Message] = [{"role": "user", "content": conv}]
    else:
        msgs = [dict(m) for m in conv]
        for m in msgs:
            if "role" not in m or "content" not in m:
                raise SaesteerError(
                    "each message needs 'role' and 'content' keys, e.g. {'role': 'user', 'content': '...'}"
                )
    if not msgs:
        raise SaesteerError("empty conversation; give at least one user message")
    if system_prompt is not None and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    return msgs


def encode_chats(
    tokenizer: Any, convs: Sequence[Conversation], system_prompt: str | None = None, add_generation_prompt: bool = True
) -> dict[str, torch.Tensor]:
    """Apply the chat template and left-pad; returns ``input_ids`` and ``attention_mask``."""
    if len(convs) == 0:
        raise SaesteerError("empty prompt list; give at least one prompt")
    texts = [
        tokenizer.apply_chat_template(
            to_messages(c, system_prompt), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        for c in convs
    ]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = old_side
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Token ids that end a completion (the tokenizer's EOS and the model's generation config's)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


@torch.no_grad()
def generate_batch(model: Any, tokenizer: Any, convs: Sequence[Conversation], cfg: GenerationConfig) -> list[str]:
    """Generate one completion per conversation in a single batch."""
    enc = encode_chats(tokenizer, convs, cfg.system_prompt)
    dev = next(model.parameters()).device
    enc = {k: v.to(dev) for k, v in enc.items()}
    kwargs: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": cfg.do_sample,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos_ids(model, tokenizer),
    }
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    out = model.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


def generate(
    model: Any,
    tokenizer: Any,
    convs: Sequence[Conversation],
    cfg: GenerationConfig | None = None,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Generate completions for many conversations, in batches, optionally with a progress bar."""
    cfg = cfg or GenerationConfig()
    if len(convs) == 0:
        raise SaesteerError("empty prompt list; give at least one prompt")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise SaesteerError("max_new_tokens and batch_size must be >= 1")
    if cfg.do_sample:
        torch.manual_seed(cfg.seed)
    # sort by length so batches pad little; restore the order at the end
    order = sorted(range(len(convs)), key=lambda i: len(str(convs[i])))
    results: list[str] = [""] * len(convs)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(convs), desc=desc, disable=not progress, unit="conv")
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        outs = generate_batch(model, tokenizer, [convs[i] for i in idx], cfg)
        for i, o in zip(idx, outs, strict=True):
            results[i] = o
        bar.update(len(idx))
    bar.close()
    return results
