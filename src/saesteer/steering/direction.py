"""The difference-in-means refusal direction (Arditi et al. 2024), the baseline for SAE steering.

For harmful and harmless chat prompts, take the activation at a hook point at the
*post-instruction* positions (the chat-template tokens after the user message, e.g.
``<|im_end|>\\n<|im_start|>assistant\\n``), average each position over each set, and subtract:
``r_i = mean_harmful_i - mean_harmless_i`` for post-instruction position ``i``. One position (by
default the last) or the mean over them gives the direction. Use it through the steering API:
:meth:`RefusalDirection.add` (activation addition, ``x + coeff * r``), :meth:`RefusalDirection.ablate`
(directional ablation, ``x - (x . r^) r^``) or :meth:`RefusalDirection.scorer` (a gate).

Directions are saved as safetensors (``direction``, ``candidates``) with the hook point, position
and counts in the file's metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saesteer.config import atomic_write_bytes
from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter, HookPoint
from saesteer.steering.gate import ProjectionScorer
from saesteer.steering.interventions import AblateDirection, AddDirection, Value

FORMAT = "saesteer.refusal_direction.v1"
_SENTINEL = "\u2063XQZSENTINEL\u2063"


def post_instruction_tokens(tokenizer: Any, system_prompt: str | None = None) -> int:
    """How many chat-template tokens follow the user message (with the generation prompt)."""
    from saesteer.model.generation import to_messages

    text = tokenizer.apply_chat_template(
        to_messages(_SENTINEL, system_prompt), tokenize=False, add_generation_prompt=True
    )
    cut = text.rfind(_SENTINEL)
    if cut < 0:
        raise SaesteerError("the chat template dropped the user message; use a chat model's tokenizer")
    cut += len(_SENTINEL)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        n = sum(1 for start, end in offsets if start >= cut and end > start)
    except (NotImplementedError, KeyError, TypeError):  # slow tokenizers have no offsets
        n = len(tokenizer(text[cut:], add_special_tokens=False)["input_ids"])
    if n < 1:
        raise SaesteerError("the chat template adds no tokens after the user message; give n_post explicitly")
    return n


@torch.no_grad()
def post_instruction_acts(
    adapter: ArchAdapter,
    tokenizer: Any,
    prompts: Sequence[Any],
    hook: str | HookPoint,
    n_post: int,
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = False,
    desc: str = "post-instruction acts",
) -> torch.Tensor:
    """Activations (n_prompts, n_post, d_model) float32 at the last ``n_post`` positions of each chat prompt.

    Prompts are batched by length (less padding); with left padding the template tail is aligned.
    """
    from tqdm.auto import tqdm

    from saesteer.model.generation import encode_chats

    if len(prompts) == 0:
        raise SaesteerError("empty prompt set; give at least one harmful and one harmless prompt")
    if batch_size < 1:
        raise SaesteerError(f"batch_size={batch_size} must be >= 1")
    out = torch.empty(len(prompts), n_post, adapter.d_model)
    dev = next(adapter.model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(str(prompts[i])))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=not progress):
        enc = encode_chats(tokenizer, [prompts[i] for i in idx], system_prompt)
        if enc["input_ids"].shape[1] < n_post:
            raise SaesteerError(f"prompts are shorter than the {n_post} post-instruction tokens; check the template")
        x = adapter.run_to(hook, enc["input_ids"].to(dev), enc["attention_mask"].to(dev))
        out[idx] = x[:, -n_post:].float().cpu()
    return out


def post_instruction_means(
    adapter: ArchAdapter,
    tokenizer: Any,
    prompts: Sequence[Any],
    hook: str | HookPoint,
    n_post: int,
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Mean activation (n_post, d_model) float32 at the last ``n_post`` positions of each chat prompt."""
    acts = post_instruction_acts(adapter, tokenizer, prompts, hook, n_post, batch_size, system_prompt, progress,
                                 desc="diff-in-means")  # fmt: skip
    return acts.double().mean(0).float()


@dataclass(eq=False)
class RefusalDirection:
    """A difference-in-means direction at ``hook``; ``candidates`` holds one per post-instruction position."""

    direction: torch.Tensor
    hook: str
    candidates: torch.Tensor
    position: str = "-1"
    metadata: dict[str, str] = field(default_factory=dict)

    def add(self, coeff: Value = 1.0) -> AddDirection:
        """Activation addition: ``x + coeff * r``."""
        return AddDirection(self.direction, coeff)

    def ablate(self) -> AblateDirection:
        """Directional ablation: project ``r`` out of the activation."""
        return AblateDirection(self.direction)

    def scorer(self) -> ProjectionScorer:
        """A gate scorer: the projection of an activation on the unit direction."""
        return ProjectionScorer(self.direction, normalize=True)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a safetensors file atomically."""
        from safetensors.torch import save

        meta = {
            "format": FORMAT,
            "hook": self.hook,
            "position": self.position,
            **{k: str(v) for k, v in self.metadata.items()},
        }
        data = save(
            {"direction": self.direction.contiguous().clone(), "candidates": self.candidates.contiguous().clone()}, meta
        )
        atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RefusalDirection:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise SaesteerError(f"direction file {p} not found; compute one with compute_refusal_direction")
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                names = set(fh.keys())
                if "direction" not in names:
                    raise SaesteerError(f"{p} holds no 'direction' tensor; is it a saesteer direction file?")
                direction = fh.get_tensor("direction").to(torch.float32)
                cands = fh.get_tensor("candidates").to(torch.float32) if "candidates" in names else direction[None]
        except SaesteerError:
            raise
        except Exception as exc:  # safetensors raises several types on a corrupt header
            raise SaesteerError(f"could not read direction file {p} ({exc}); recompute it") from None
        if direction.ndim != 1 or not bool(torch.isfinite(direction).all()):
            raise SaesteerError(f"{p}: the direction must be a finite 1-D tensor; recompute it")
        hook = meta.pop("hook", "")
        if hook:
            HookPoint.parse(hook)
        meta.pop("format", None)
        position = meta.pop("position", "-1")
        return cls(direction, hook, cands, position, meta)


def compute_refusal_direction(
    model: Any,
    tokenizer: Any,
    harmful: Sequence[Any],
    harmless: Sequence[Any],
    hook: str | HookPoint,
    position: int | str = -1,
    n_post: int | None = None,
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = False,
) -> RefusalDirection:
    """Difference in means of harmful vs harmless prompts at ``hook`` and the post-instruction positions.

    ``position``: which post-instruction position gives ``direction`` (negative counts from the
    end, -1 is the last template token) or ``"mean"`` for the mean over them.
    """
    adapter = model if isinstance(model, ArchAdapter) else ArchAdapter(model)
    hp = adapter.check(hook)
    n = n_post or post_instruction_tokens(tokenizer, system_prompt)
    mu_h = post_instruction_means(adapter, tokenizer, harmful, hp, n, batch_size, system_prompt, progress)
    mu_s = post_instruction_means(adapter, tokenizer, harmless, hp, n, batch_size, system_prompt, progress)
    cands = mu_h - mu_s
    if position == "mean":
        direction = cands.mean(0)
    else:
        try:
            pos = int(position)
        except ValueError:
            raise SaesteerError(f"position {position!r}: give an int (e.g. -1) or 'mean'") from None
        if not -n <= pos < n:
            raise SaesteerError(f"position {pos} out of range: there are {n} post-instruction positions")
        direction = cands[pos]
    meta = {
        "n_harmful": str(len(harmful)),
        "n_harmless": str(len(harmless)),
        "n_post": str(n),
        "model": str(getattr(getattr(adapter.model, "config", None), "_name_or_path", "")),
    }
    return RefusalDirection(direction.clone(), hp.name, cands.contiguous(), str(position), meta)
