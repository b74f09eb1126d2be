"""The study's prompt selection: which dataset serves which purpose, and how many prompts of each.

:func:`study_takes` is the plan; :func:`select` runs it through one :class:`~saesteer.evaluation.splits.SplitRegistry`,
so every sample the study uses is recorded and test prompts serve nothing else. Dev purposes come first, so a test
overlap raises at the test take. A test runs this plan on the real data directory at the largest sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from saesteer.errors import SaesteerError
from saesteer.evaluation.records import Prompt
from saesteer.evaluation.splits import PURPOSES, SplitRegistry


@dataclass(frozen=True)
class Take:
    """``n`` prompts (None: the whole part) of ``dataset`` for ``purpose``, drawn under the plan's seed."""

    dataset: str
    purpose: str
    n: int | None


@dataclass(frozen=True)
class StudySizes:
    """Prompts per side for each dev purpose, and per scored set (``safety_n`` None: the whole test part)."""

    chat_n: int = 200
    direction_n: int = 64
    rank_n: int = 64
    screen_n: int = 80
    clamp_n: int = 64
    gate_n: int = 120
    safety_n: int | None = None
    alpaca_n: int = 300


SAFETY_TEST_SETS = ("harmbench:test", "jbb:harmful", "advbench", "xstest:unsafe", "xstest:safe", "jbb:benign")


def study_takes(real_data: bool, sizes: StudySizes) -> list[Take]:
    """The study's plan: dev purposes first (in pipeline order), then the scored test sets."""
    s = sizes
    if not real_data:
        h, ok, xs = "builtin_harmful", "builtin_harmless", "builtin_xsafe"
        return [
            Take(h, "sae_chat", s.chat_n),
            Take(ok, "sae_chat", s.chat_n),
            Take(h, "direction", s.direction_n),
            Take(ok, "direction", s.direction_n),
            Take(h, "rankers", s.rank_n),
            Take(ok, "rankers", s.rank_n),
            Take(h, "screen", s.screen_n),
            Take(ok, "screen", s.screen_n),
            Take(h, "clamp_choice", s.clamp_n),
            Take(ok, "clamp_choice", s.clamp_n),
            Take(h, "gate", s.gate_n),
            Take(ok, "gate", s.gate_n),
            Take(xs, "gate", None),
            Take(h, "test", s.safety_n),
            Take(xs, "test", s.safety_n),
            Take(ok, "test", s.alpaca_n),
        ]
    return [
        Take("donotanswer", "sae_chat", s.chat_n),
        Take("alpaca", "sae_chat", s.chat_n),
        Take("advbench", "direction", s.direction_n),
        Take("alpaca", "direction", s.direction_n),
        Take("advbench", "rankers", s.rank_n),
        Take("alpaca", "rankers", s.rank_n),
        Take("harmbench", "screen", s.screen_n),
        Take("alpaca", "screen", s.screen_n),
        Take("harmbench", "clamp_choice", s.clamp_n),
        Take("alpaca", "clamp_choice", s.clamp_n),
        Take("xstest:safe", "clamp_choice", s.clamp_n),
        Take("harmbench", "gate", None),
        Take("donotanswer", "gate", s.gate_n),
        Take("alpaca", "gate", 2 * s.gate_n),
        Take("xstest:safe", "gate", None),
        Take("builtin_xsafe", "gate", None),
        *[Take(name, "test", s.safety_n) for name in SAFETY_TEST_SETS],
        Take("alpaca", "test", s.alpaca_n),
    ]


def select(registry: SplitRegistry, takes: Sequence[Take], seed: int = 0) -> dict[tuple[str, str], list[Prompt]]:
    """Run the plan: ``{(purpose, dataset): prompts}``; the registry records every text and refuses test overlap."""
    out: dict[tuple[str, str], list[Prompt]] = {}
    for t in takes:
        if t.purpose not in PURPOSES:
            raise SaesteerError(
                f"unknown purpose {t.purpose!r} in the selection plan; use one of {', '.join(PURPOSES)}"
            )
        got = registry.take(t.dataset, t.purpose, t.n, seed)
        out[(t.purpose, t.dataset)] = out.get((t.purpose, t.dataset), []) + got
    return out
