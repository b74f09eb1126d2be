"""The study's prompt selection: which dataset serves which purpose, and how many prompts of each.

:func:`study_takes` is the plan; :func:`select` runs it through one :class:`~saesteer.evaluation.splits.SplitRegistry`,
so every sample the study uses is recorded and test prompts serve nothing else. Dev purposes come first, so a test
overlap raises at the test take. A test runs this plan on the real data directory at the largest sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from saesteer.errors import SaesteerError
from saesteer.evaluation.capability import CapabilityConfig, CapabilityData
from saesteer.evaluation.gsm8k import pick_gsm8k_shots
from saesteer.evaluation.records import Prompt
from saesteer.evaluation.splits import PURPOSES, SplitRegistry, item_texts


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
    unseen: bool = True  # also score UNSEEN_TEST_SETS


SAFETY_TEST_SETS = ("harmbench:test", "jbb:harmful", "advbench", "xstest:unsafe", "xstest:safe", "jbb:benign")
#: scored sets of datasets no gate or feature choice draws from: the generalisation check (the SAE's chat data
#: holds Do-Not-Answer dev prompts; nothing else of these datasets is used)
UNSEEN_TEST_SETS = ("donotanswer", "builtin_harmful", "builtin_harmless")


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
        Take("alpaca", "gate", 2 * s.gate_n),
        Take("xstest:safe", "gate", None),
        Take("builtin_xsafe", "gate", None),
        *[Take(name, "test", s.safety_n) for name in SAFETY_TEST_SETS],
        Take("alpaca", "test", s.alpaca_n),
        *[Take(name, "test", s.safety_n) for name in UNSEEN_TEST_SETS if s.unseen],
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


def capability_data(
    registry: SplitRegistry,
    cfg: CapabilityConfig,
    benchmarks: Sequence[str],
    mmlu_per_subject: int | None = None,
) -> CapabilityData:
    """The capability samples ``cfg`` sizes, drawn through ``registry`` (test items; shots from the dev side,
    purpose ``fewshot``), so ``splits.json`` records them. ``cfg.builtin``: the built-in suites.
    ``mmlu_per_subject``: that many MMLU questions of each subject instead of ``cfg.mmlu_n`` overall."""
    d = CapabilityData()
    b = cfg.builtin
    if "mmlu" in benchmarks:
        per = None if b else mmlu_per_subject
        d.mmlu = registry.take_items("builtin_mc" if b else "mmlu", "test", cfg.mmlu_n, cfg.seed, per_group=per)
        if cfg.mmlu_shots and not b:
            subjects = {q.subject for q in d.mmlu}
            for q in registry.part("mmlu", "dev"):
                if q.subject in subjects and len(d.mmlu_shots.get(q.subject, [])) < cfg.mmlu_shots:
                    d.mmlu_shots.setdefault(q.subject, []).append(q)
            registry.record("mmlu", "fewshot", [t for qs in d.mmlu_shots.values() for q in qs for t in item_texts(q)])
    if "truthfulqa" in benchmarks:
        d.truthfulqa = registry.take_items(
            "builtin_truthfulqa" if b else "truthfulqa", "test", cfg.truthfulqa_n, cfg.seed
        )
    if "gsm8k" in benchmarks:
        name = "builtin_math" if b else "gsm8k"
        d.gsm8k = registry.take_items(name, "test", cfg.gsm8k_n, cfg.seed)
        if cfg.gsm8k_shots:
            d.gsm8k_shots = pick_gsm8k_shots(registry.part(name, "dev"), cfg.gsm8k_shots, cfg.seed)
            registry.record(name, "fewshot", [q.question for q in d.gsm8k_shots])
    if "humaneval" in benchmarks:
        d.humaneval = registry.take_items("humaneval", "test", cfg.humaneval_n, cfg.seed)
    return d
