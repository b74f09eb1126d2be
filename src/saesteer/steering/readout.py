"""Where a gate reads a chat prompt: position rules, and per-prompt readouts at several hooks in one pass.

A chat prompt is ``<template prefix> <user instruction> <post-instruction template>``; with the
generation prompt the post-instruction part is e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``, the
same ``n_post`` tokens for every prompt (:func:`~saesteer.steering.direction.post_instruction_tokens`
finds ``n_post`` from the template with a sentinel user message and token offsets). With left
padding the last real token is the last template token, so with ``p`` the index of the last real token:

* ``instruction``: the token at ``p - n_post``, the last token of the user's instruction;
* ``template``: the mean over the ``n_post`` post-instruction tokens ``p - n_post + 1 .. p``;
* ``template_last``: the token at ``p`` (the position that predicts the first reply token);
* ``mean``: the mean over every real token (system prompt and template included).

Each rule is a :class:`~saesteer.steering.gate.Gate` reduction (``last`` with an offset, ``tail``,
``mean``), so a probe fit on these readouts scores prompts exactly as the gate does while steering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter, HookPoint
from saesteer.steering.direction import post_instruction_tokens
from saesteer.steering.gate import reduce_tokens

RULES = ("instruction", "template", "template_last", "mean")


@dataclass(frozen=True)
class PositionRule:
    """A named position rule and its gate reduction (``reduce``, ``tail``, ``offset``)."""

    name: str
    reduce: str
    tail: int = 1
    offset: int = 0

    def gate_kwargs(self) -> dict[str, Any]:
        return {"reduce": self.reduce, "tail": self.tail, "offset": self.offset}


def position_rule(name: str, n_post: int) -> PositionRule:
    """The rule ``name`` for a chat template that adds ``n_post`` tokens after the user message."""
    if n_post < 1:
        raise SaesteerError(f"n_post={n_post}: the chat template must add at least one token after the user message")
    if name == "instruction":
        return PositionRule(name, "last", offset=n_post)
    if name == "template":
        return PositionRule(name, "tail", tail=n_post)
    if name == "template_last":
        return PositionRule(name, "last")
    if name == "mean":
        return PositionRule(name, "mean")
    raise SaesteerError(f"unknown position rule {name!r}; use one of {', '.join(RULES)}")


def position_rules(names: Sequence[str], tokenizer: Any, system_prompt: str | None = None) -> dict[str, PositionRule]:
    """The rules ``names`` for ``tokenizer``'s chat template."""
    n_post = post_instruction_tokens(tokenizer, system_prompt)
    return {n: position_rule(n, n_post) for n in names}


def _with_latents(seen: dict[str, torch.Tensor], sae: Any) -> list[tuple[str, torch.Tensor]]:
    """The captured activations, plus ``("sae:" + hook, latents)`` at the SAE's hook."""
    items = list(seen.items())
    if sae is not None:
        name = HookPoint.parse(sae.cfg.hook_name).name
        x = seen[name]
        z = sae.encode(x.reshape(-1, x.shape[-1]).to(sae.W_enc.dtype)).float()
        items.append(("sae:" + name, z.reshape(*x.shape[:2], -1)))
    return items


@torch.no_grad()
def readouts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    hooks: Sequence[str],
    rules: Sequence[PositionRule],
    batch_size: int = 16,
    system_prompt: str | None = None,
    latents: Any = None,
) -> dict[tuple[str, str], torch.Tensor]:
    """Per-prompt readouts ``{(hook, rule): (N, d_model)}`` float32, one truncated forward per batch.

    ``latents``: an SAE; then ``("sae:" + its hook, rule)`` holds its latents (N, d_sae), encoded per token
    and reduced by the rule, as :class:`~saesteer.steering.gate.LatentProbeScorer` scores them.
    """
    from saesteer.model.generation import encode_chats

    if len(prompts) == 0:
        raise SaesteerError("readouts: no prompts; give at least one")
    ad = model if isinstance(model, ArchAdapter) else ArchAdapter(model)
    points = [ad.check(h) for h in hooks]
    if latents is not None and not any(p.name == HookPoint.parse(latents.cfg.hook_name).name for p in points):
        points.append(ad.check(latents.cfg.hook_name))
    dev = next(ad.model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(str(prompts[i])))  # similar lengths pad less
    out: dict[tuple[str, str], list[torch.Tensor]] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = encode_chats(tokenizer, [prompts[i] for i in idx], system_prompt)
        real = enc["attention_mask"].bool().to(dev)
        acts = ad.run_to_all(points, enc["input_ids"].to(dev), real.long())  # the later layers never run
        seen = {p.name: a.float() for p, a in zip(points, acts, strict=True)}
        for key, t in _with_latents(seen, latents):
            for r in rules:
                out.setdefault((key, r.name), []).append(reduce_tokens(t, real, r.reduce, r.tail, r.offset).cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {k: torch.cat(v)[inverse] for k, v in out.items()}
