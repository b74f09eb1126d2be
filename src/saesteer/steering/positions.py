"""Which token positions a steering edit touches, tracked across KV-cache decoding.

A forward pre-hook on the model's decoder stack (the module that holds the layers) sees, on every
call, the input ids (or embeddings), the 2-D attention mask (covering past and current tokens
under ``generate``) and the KV cache. From those it records a :class:`ForwardInfo`: the past
length, which current positions are real tokens (not left padding) and their absolute positions.
A forward whose past length is 0 starts a new *session* (a new prompt): its padded width is the
prompt length, so later positions are generated tokens.

Positions are counted in the padded input: absolute position ``p`` of a row is column ``p`` of
``input_ids`` (prompt) or ``prompt_len + i`` for the ``i``-th generated token.

* ``all``: every real token, prompt and generated;
* ``prompt``: real tokens at positions ``< prompt_len``;
* ``generated``: positions ``>= prompt_len``, the inputs of decode steps. The first new token is
  predicted from the last prompt position, so it is not steered under ``generated``;
* ``mask``: an explicit bool ``(batch, seq)`` mask over absolute positions; positions past its
  width follow ``beyond`` (False: not steered; True: steered, e.g. all generated tokens).

Per-example settings (a mask's rows, a ``(batch,)`` value) are indexed by example: row ``r`` of a
running batch takes the row of the example it holds, as declared by the generator with
:func:`saesteer.model.rows.example_rows` (batched ``generate`` does; beams are declared there too).

Padding positions (attention mask 0) are never touched, whatever the mode. A forward with no
attention mask (plain ``model(input_ids)``) has no padding. With a prepared 4-D or dict mask (a
static, compiled cache) padding cannot be told apart and pad positions are edited too; attention
masks them, so real tokens' outputs are the same either way.

``prompt``/``generated`` and gating rely on KV-cache decoding (``generate``'s default): with
``use_cache=False`` every step is a fresh full forward, i.e. a new prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.model.rows import select_rows

MODES = ("all", "prompt", "generated", "mask")


@dataclass(frozen=True, eq=False)
class Positions:
    """Which positions to steer: ``all``, ``prompt``, ``generated`` or an explicit ``mask``."""

    mode: str = "all"
    mask: torch.Tensor | None = None
    beyond: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SaesteerError(f"unknown positions {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode == "mask":
            if self.mask is None or self.mask.ndim != 2:
                raise SaesteerError("positions 'mask' needs a bool tensor of shape (batch, seq)")
            object.__setattr__(self, "mask", self.mask.detach().to("cpu", torch.bool))
        elif self.mask is not None:
            raise SaesteerError(f"positions {self.mode!r} takes no mask; use Positions.explicit(mask)")

    @classmethod
    def parse(cls, spec: str | Positions | torch.Tensor | None) -> Positions:
        """``None``/``"all"``/``"prompt"``/``"generated"``, a :class:`Positions`, or a bool mask tensor."""
        if spec is None:
            return cls("all")
        if isinstance(spec, Positions):
            return spec
        if isinstance(spec, torch.Tensor):
            return cls.explicit(spec)
        return cls(str(spec))

    @classmethod
    def explicit(cls, mask: torch.Tensor, beyond: bool = False) -> Positions:
        """Steer where ``mask[b, p]`` is true; positions ``p >= mask.shape[1]`` follow ``beyond``."""
        return cls("mask", torch.as_tensor(mask), beyond)


@dataclass
class ForwardInfo:
    """What the current forward call processes: batch, new-token count, past length, real tokens."""

    batch: int
    seq: int
    past: int
    real: torch.Tensor | None  # (batch, seq) bool, None: no padding

    def abs_positions(self, device: torch.device) -> torch.Tensor:
        return torch.arange(self.past, self.past + self.seq, device=device)


def _past_length(kwargs: dict[str, Any]) -> int | None:
    for key in ("cache", "past_key_values"):
        cache = kwargs.get(key)
        if cache is None:
            continue
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy tuple cache
            return int(cache[0][0].shape[-2])
    return None


def forward_info(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ForwardInfo:
    """Read batch, new tokens, past length and padding from a decoder-stack forward's inputs."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    embeds = kwargs.get("inputs_embeds")
    ref = ids if ids is not None else embeds
    if ref is None:
        raise RuntimeError("steering: the model was called without input_ids or inputs_embeds")
    batch, seq = int(ref.shape[0]), int(ref.shape[1])
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    past = _past_length(kwargs)
    real: torch.Tensor | None
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        if past is None:
            past = max(int(mask.shape[1]) - seq, 0)
        real = mask[:, -seq:].to(torch.bool)  # no .all() check: it would synchronise a GPU every step
    else:
        real = None  # no mask, or a prepared 4-D / dict mask: no padding information
    return ForwardInfo(batch=batch, seq=seq, past=past or 0, real=real)


def position_mask(pos: Positions, info: ForwardInfo, prompt_len: int, device: torch.device) -> torch.Tensor | None:
    """(batch, seq) bool mask of positions to steer in this forward (None: every position).

    Decided from Python ints where possible, so the hot path never waits on the device; a forward
    in which the mode selects nothing never reaches here (see :func:`selects_nothing`).
    """
    sel: torch.Tensor | None = None
    if pos.mode in ("prompt", "generated"):
        first_gen = prompt_len - info.past  # index of the first generated position in this forward
        if 0 < first_gen < info.seq:
            cols = torch.arange(info.seq, device=device)
            col = cols < first_gen if pos.mode == "prompt" else cols >= first_gen
            sel = col.unsqueeze(0).expand(info.batch, info.seq)
    elif pos.mode == "mask":
        assert pos.mask is not None
        m = select_rows(pos.mask, info.batch, "positions mask").to(device)
        width = m.shape[1]
        abs_pos = info.abs_positions(device)
        inside = abs_pos < width
        cols_m = m[:, abs_pos.clamp(max=width - 1)]
        sel = torch.where(inside.unsqueeze(0), cols_m, torch.full_like(cols_m, pos.beyond))
    if info.real is not None:
        real = info.real.to(device)
        sel = real if sel is None else sel & real
    return sel


def selects_nothing(pos: Positions, info: ForwardInfo, prompt_len: int) -> bool:
    """True when the mode steers no position of this forward (known without touching the device)."""
    if pos.mode == "prompt":
        return info.past >= prompt_len
    if pos.mode == "generated":
        return info.past + info.seq <= prompt_len
    if pos.mode == "mask":
        return not pos.beyond and info.past >= pos.mask.shape[1]  # type: ignore[union-attr]
    return False
