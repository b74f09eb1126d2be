"""Batched chat generation: conversations in, completions out.

Conversations are a user prompt (``str``) or a list of ``{"role", "content"}`` messages (multi-turn).
They go through the tokenizer's chat template, are sorted by token count and cut into batches of
``batch_size`` (similar lengths pad little), left-padded, and decoded with the KV cache, greedily or
by sampling under a seed, until EOS or ``max_new_tokens``. Results come back in the caller's order.

Decoding runs the fast path of :mod:`saesteer.model.decode` (greedy output identical to Hugging
Face ``generate``) unless ``fast`` is off or the model's generation config asks for logits
processing that path does not implement. Around each batch, :func:`saesteer.model.rows.example_rows`
declares which conversations the batch rows hold, so per-example steering values (one row per
conversation, in the caller's order) follow their prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.model.decode import decode, supported
from saesteer.model.rows import example_rows

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
    fast: bool = opt(
        True, "decode with saesteer's KV-cache loop and prepacked CPU weights (off: Hugging Face generate)"
    )
    shrink: bool = opt(True, "fast path, greedy: drop rows that ended from the batch (each later step costs less)")


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


def chat_texts(tokenizer: Any, convs: Sequence[Conversation], system_prompt: str | None = None) -> list[str]:
    """Each conversation through the tokenizer's chat template, ending with the assistant's turn."""
    return [
        tokenizer.apply_chat_template(to_messages(c, system_prompt), tokenize=False, add_generation_prompt=True)
        for c in convs
    ]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of token lists, left-padded to the longest."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


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


def hf_generate(
    model: Any,
    enc: dict[str, torch.Tensor],
    cfg: GenerationConfig,
    pad_id: int,
    eos: list[int],
    stop_strings: Sequence[str] = (),
    tokenizer: Any = None,
) -> Any:
    """Hugging Face ``generate`` on a left-padded batch; returns only the new tokens.

    ``stop_strings`` (with ``tokenizer``) also end a row once its text contains one of them.
    """
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample}
    kwargs.update(pad_token_id=pad_id, eos_token_id=eos)
    if stop_strings:
        kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    out = model.generate(**enc, **kwargs)
    return out[:, enc["input_ids"].shape[1] :]


class StopStrings:
    """Ends rows of the fast loop at stop strings, as ``generate``'s ``stop_strings`` does: a row is finished at
    the step whose token completes a stop string (or is EOS); the loop stops once every row is finished, and
    :meth:`cut` pads each row after its finishing token."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], eos: Sequence[int], batch: int):
        self.tokenizer, self.stops, self.eos = tokenizer, list(stops), set(eos)
        self.window = max(len(s) for s in self.stops) + 1  # tokens: each holds at least one character
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.end: list[int | None] = [None] * batch

    def __call__(self, step_tokens: torch.Tensor) -> bool:
        for r, t in enumerate(step_tokens.tolist()):
            if self.end[r] is not None:
                continue
            self.tokens[r].append(int(t))
            tail = self.tokenizer.decode(self.tokens[r][-self.window :])
            if t in self.eos or any(s in tail for s in self.stops):
                self.end[r] = len(self.tokens[r])
        return all(e is not None for e in self.end)

    def finished(self) -> list[bool]:
        """Which rows have ended (at EOS or a stop string)."""
        return [e is not None for e in self.end]

    def cut(self, new: torch.Tensor, pad_id: int) -> torch.Tensor:
        for r, e in enumerate(self.end):
            if e is not None:
                new[r, e:] = pad_id
        return new


@torch.no_grad()
def decode_batch(
    model: Any,
    tokenizer: Any,
    enc: dict[str, torch.Tensor],
    cfg: GenerationConfig,
    stop_strings: Sequence[str] = (),
) -> torch.Tensor:
    """New tokens of one left-padded batch, by the fast path where it applies, else ``generate``; a row also
    ends once its text contains one of ``stop_strings``."""
    dev = next(model.parameters()).device
    enc = {k: v.to(dev) for k, v in enc.items()}
    eos = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    if not (cfg.fast and supported(model)):
        return hf_generate(model, enc, cfg, pad_id, eos, stop_strings, tokenizer)
    stops = StopStrings(tokenizer, stop_strings, eos, enc["input_ids"].shape[0]) if stop_strings else None
    new = decode(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=cfg.max_new_tokens,
        eos_ids=eos,
        pad_id=pad_id,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        on_step=stops,
        finished=stops.finished if stops else None,
        shrink=cfg.shrink,
    )
    return stops.cut(new, pad_id) if stops else new


def generate_batch(model: Any, tokenizer: Any, convs: Sequence[Conversation], cfg: GenerationConfig) -> list[str]:
    """Generate one completion per conversation in a single batch (rows in the given order)."""
    new = decode_batch(model, tokenizer, encode_chats(tokenizer, convs, cfg.system_prompt), cfg)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


def generate(
    model: Any,
    tokenizer: Any,
    convs: Sequence[Conversation],
    cfg: GenerationConfig | None = None,
    progress: bool = False,
    desc: str = "generate",
    stop_strings: Sequence[str] = (),
) -> list[str]:
    """Completions for many conversations, in the caller's order, batched by length; a row also ends once its
    text contains one of ``stop_strings`` (the text keeps the token that completed it).

    Batch row ``r`` of conversations ``idx`` runs inside ``example_rows(idx)``, so a steering value
    with one row per conversation reaches the right prompt whatever the batching.
    """
    cfg = cfg or GenerationConfig()
    if len(convs) == 0:
        raise SaesteerError("empty prompt list; give at least one prompt")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise SaesteerError("max_new_tokens and batch_size must be >= 1")
    if cfg.do_sample:
        torch.manual_seed(cfg.seed)
    texts = chat_texts(tokenizer, convs, cfg.system_prompt)
    tokens = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(convs)), key=lambda i: len(tokens[i]))  # stable: equal lengths keep their order
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[str] = [""] * len(convs)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(convs), desc=desc, disable=not progress, unit="conv")
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        enc = left_pad([tokens[i] for i in idx], pad_id)
        with example_rows(idx):
            new = decode_batch(model, tokenizer, enc, cfg, stop_strings)
        for i, row in zip(idx, new, strict=True):
            results[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    return results
