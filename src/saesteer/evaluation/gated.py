"""Conditional steering on benchmarks: one gate decision per question, shared by everything scored for it.

A gated :class:`~saesteer.steering.engine.Steering` decides on each forward's prompt pass. On a log-likelihood
benchmark that would judge raw few-shot text unlike the chat prompts the gate was calibrated on, and judge each
answer option of a question separately -- so options of one question could be scored under different steering.
Here the gate scores each question once, as a chat prompt (``prompt_scores``: exactly what the gate computes
while steering), and decides ``s_i > threshold``. The questions it fires on are scored with the same steering
minus its gate (always on); the others unsteered. Results are merged back in question order and the firing
rate ``k / n`` (Wilson interval) goes into each result's ``settings["gate"]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from saesteer.evaluation.benchmark import BenchmarkResult, rate_result
from saesteer.evaluation.stats import mean_ci, wilson
from saesteer.steering.engine import Steering
from saesteer.steering.gate import Gate, prompt_scores

T = TypeVar("T")
#: the per-item outcome each benchmark's records carry
ITEM_KEYS = {
    "mmlu": "correct",
    "truthfulqa_mc1": "mc1_correct",
    "truthfulqa_mc2": "mc2_true_mass",
    "gsm8k": "correct",
    "humaneval": "correct",
}


def gate_decisions(
    model: Any,
    tokenizer: Any,
    gate: Gate,
    questions: Sequence[str],
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> list[bool]:
    """Whether the gate fires on each question, read as a chat prompt."""
    if not questions:
        return []
    scores = prompt_scores(model, tokenizer, list(questions), gate, batch_size, system_prompt)
    return [bool(v) for v in gate.decide(scores).tolist()]


def ungated(steering: Steering) -> Steering:
    """The same steering with its gate removed (always on)."""
    s = copy.copy(steering)
    s.gate = None
    return s


def firing_summary(fired: Sequence[bool]) -> dict[str, Any]:
    """``{"fired": k, "n": n, "rate": k/n, "ci_low", "ci_high"}`` (Wilson 95%)."""
    k, n = sum(fired), len(fired)
    p, lo, hi = wilson(k, n)
    return {"fired": k, "n": n, "rate": p, "ci_low": lo, "ci_high": hi}


def merge_results(name: str, parts: Sequence[BenchmarkResult], ids: Sequence[str]) -> BenchmarkResult:
    """One result from results on disjoint subsets, records in ``ids`` order, score and interval recomputed."""
    by_id = {r["id"]: r for p in parts for r in p.records}
    records = [by_id[i] for i in ids]
    key = ITEM_KEYS[name]
    seconds = sum(p.seconds for p in parts)
    settings = dict(parts[0].settings) if parts else {}
    values = [r[key] for r in records]
    if parts and parts[0].interval == "t":
        m, lo, hi = mean_ci(values) if len(values) > 1 else (float(values[0]), math.nan, math.nan)
        return BenchmarkResult(name, len(values), m, max(0.0, lo), min(1.0, hi), "t", seconds, settings, records)
    return rate_result(name, [bool(v) for v in values], seconds, settings, records)


def score_gated(
    model: Any,
    tokenizer: Any,
    steering: Steering,
    items: Sequence[T],
    question: Callable[[T], str],
    item_id: Callable[[T], str],
    score: Callable[[Sequence[T]], dict[str, BenchmarkResult]],
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> dict[str, BenchmarkResult]:
    """Score ``items`` under a gated ``steering`` with one decision per item (see the module docstring).
    ``score(subset)`` returns the benchmark's results by name for a subset (hooks set by the caller apply)."""
    assert steering.gate is not None, "score_gated needs a gated steering"
    fired = gate_decisions(model, tokenizer, steering.gate, [question(x) for x in items], batch_size, system_prompt)
    on = [x for x, f in zip(items, fired, strict=True) if f]
    off = [x for x, f in zip(items, fired, strict=True) if not f]
    parts: list[dict[str, BenchmarkResult]] = []
    if on:
        with ungated(steering).apply(model):
            parts.append(score(on))
    if off:
        parts.append(score(off))
    ids = [item_id(x) for x in items]
    out = {name: merge_results(name, [p[name] for p in parts], ids) for name in parts[0]}
    summary = firing_summary(fired)
    for r in out.values():
        r.settings["gate"] = summary
    return out
