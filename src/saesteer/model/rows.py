"""Which of the caller's examples each row of the batch in flight holds.

Batched generation reorders and splits the caller's conversations (sorted by length, cut into
batches), and beam search or ``num_return_sequences`` expands each example into ``repeat``
consecutive rows. Anything that keeps one setting per example (a steering value of shape
``(n_examples,)``, a position mask) must pick, for row ``r`` of the running batch, the setting of
example ``rows[r // repeat]``. The generator declares that map around its model calls:

    with example_rows([4, 0, 2]):        # the batch holds examples 4, 0 and 2, in that order
        model.generate(**enc)
    with example_rows(None, repeat=2):   # rows 2i and 2i+1 both hold example i (2 beams)
        model.generate(**enc, num_beams=2)

The map lives in a context variable (per thread and per asyncio task), so concurrent generators
do not see each other's rows. Without a declared map a per-example setting must have exactly one
row per batch row.

A decoder that drops finished rows from its KV cache mid-generation declares, around each later
step, which rows of the prompt pass are still running (:func:`live_rows`): per-example settings
follow through the narrowed row map, and per-generation state decided on the prompt pass (a gate's
decision) is indexed by :func:`current_live`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from saesteer.errors import SaesteerError


@dataclass(frozen=True)
class RowMap:
    """Batch row ``r`` holds example ``rows[r // repeat]`` (``rows`` None: example ``r // repeat``)."""

    rows: tuple[int, ...] | None = None
    repeat: int = 1

    def index(self, batch: int, n_examples: int, what: str) -> torch.Tensor | None:
        """The example index of every batch row, or None when the rows are the examples themselves."""
        per = batch // self.repeat
        if batch % self.repeat != 0:
            raise SaesteerError(
                f"{what}: a batch of {batch} rows is not {self.repeat} rows per example; declare the true expansion"
            )
        if self.rows is None:
            if n_examples != per:
                raise SaesteerError(
                    f"{what} has {n_examples} rows but the batch holds {per} examples; give one row per example"
                )
            base = None
        else:
            if len(self.rows) != per:
                raise SaesteerError(
                    f"{what}: the batch runs {per} examples but {len(self.rows)} were declared; declare its rows"
                )
            if max(self.rows) >= n_examples:
                raise SaesteerError(
                    f"{what} has {n_examples} rows but example {max(self.rows)} is being generated; "
                    "give one row per conversation"
                )
            base = torch.tensor(self.rows, dtype=torch.long)
        if self.repeat == 1:
            return base
        base = torch.arange(per) if base is None else base
        return base.repeat_interleave(self.repeat)


_CURRENT: ContextVar[RowMap | None] = ContextVar("saesteer_example_rows", default=None)
_LIVE: ContextVar[tuple[int, ...] | None] = ContextVar("saesteer_live_rows", default=None)


@contextlib.contextmanager
def example_rows(rows: Sequence[int] | None = None, repeat: int = 1) -> Iterator[RowMap]:
    """Declare which examples the batch rows of the model calls inside the block hold."""
    if repeat < 1:
        raise SaesteerError(f"repeat must be >= 1, got {repeat}")
    rmap = RowMap(None if rows is None else tuple(int(r) for r in rows), int(repeat))
    token = _CURRENT.set(rmap)
    try:
        yield rmap
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def live_rows(live: Sequence[int]) -> Iterator[None]:
    """Declare that the model calls inside the block run rows ``live`` of the generation's prompt pass, in order.

    The example map narrows with them: row ``r`` now holds the example that prompt-pass row ``live[r]`` held."""
    live = tuple(int(r) for r in live)
    outer = current_rows()
    if outer is not None and outer.repeat != 1:
        raise SaesteerError("live_rows: rows cannot be dropped from a batch that repeats examples (beams)")
    rows = live if outer is None or outer.rows is None else tuple(outer.rows[r] for r in live)
    token_map = _CURRENT.set(RowMap(rows))
    token_live = _LIVE.set(live)
    try:
        yield
    finally:
        _LIVE.reset(token_live)
        _CURRENT.reset(token_map)


def current_live() -> tuple[int, ...] | None:
    """The prompt-pass rows the model call in progress runs (None: all of them, or nothing was declared)."""
    return _LIVE.get()


def current_rows() -> RowMap | None:
    """The row map declared around the model call in progress, if any."""
    return _CURRENT.get()


def select_rows(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """The rows of a per-example tensor ``t`` (examples first) that the running batch holds, in order."""
    rmap = current_rows()
    if rmap is None:
        if t.shape[0] != batch:
            raise SaesteerError(
                f"{what} has {t.shape[0]} rows but the model runs a batch of {batch}; give one row per example "
                "(for beams or several sequences per prompt, declare it with saesteer.model.rows.example_rows)"
            )
        return t
    idx = rmap.index(batch, int(t.shape[0]), what)
    return t if idx is None else t.index_select(0, idx.to(t.device))
