"""Evaluate one sweep condition: safety, capability and multi-turn metrics under its steering.

Every (condition, metric) cell is appended to the results table as soon as it is measured, so an
interrupted sweep resumes without recomputing finished cells.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.evaluation.capability import CapabilityConfig, run_capability
from saesteer.evaluation.multiturn import MultiTurnConfig, run_multiturn
from saesteer.evaluation.safety import CompletionCache, SafetyConfig, default_sets, safety_suite
from saesteer.model.generation import GenerationConfig
from saesteer.report.results import ResultsTable
from saesteer.report.sweep import Condition
from saesteer.sae.base import SAE
from saesteer.steering.direction import RefusalDirection
from saesteer.steering.engine import Steering
from saesteer.steering.gate import FeatureScorer, Gate, ProjectionScorer, prompt_scores
from saesteer.steering.interventions import ClampFeature
from saesteer.study.config import StudyConfig

SAFETY_METRICS = ("unsafe_refusal", "safe_refusal")
CAPABILITY_METRICS = ("mmlu", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k")
MULTITURN_METRICS = ("multiturn_asr",)


@dataclass
class SweepContext:
    """What every condition's evaluation shares."""

    model: Any
    tokenizer: Any
    model_id: str
    sae: SAE
    direction: RefusalDirection
    cfg: StudyConfig
    gate_dev_prompts: list[str]
    cache: CompletionCache
    log: Callable[[str], None] = print
    probe: ProjectionScorer | None = None  # the harm probe of a "probe" gate, fit at cfg.hook


def build_steering(ctx: SweepContext, cond: Condition) -> Steering | None:
    """Turn a condition's plain-data interventions and gate into a :class:`Steering` (None for baseline)."""
    if not cond.interventions:
        return None
    edits: list[Any] = []
    uses_sae = False
    for iv in cond.interventions:
        if iv["op"] == "clamp":
            edits.append(ClampFeature(int(iv["feature"]), float(iv["value"])))
            uses_sae = True
        elif iv["op"] == "add_direction":
            edits.append(ctx.direction.add(float(iv["coeff"])))
        else:
            raise ValueError(f"unknown intervention op {iv['op']!r}")
    gate = None
    if cond.gate is not None:
        g = cond.gate
        scorer: Any
        if g["type"] == "feature":
            scorer, gate_hook = FeatureScorer(ctx.sae, int(g["feature"])), ctx.sae.cfg.hook_name
        elif g["type"] == "probe":
            if ctx.probe is None:
                raise SaesteerError("a probe gate needs a fitted probe; fit one with saesteer.steering.gate.fit_probe")
            scorer, gate_hook = ctx.probe, ctx.cfg.hook
        else:
            scorer, gate_hook = ctx.direction.scorer(), ctx.direction.hook
        gate = Gate(
            scorer=scorer,
            hook=gate_hook,
            reduce=g.get("reduce", "last"),
            tail=int(g.get("tail", 5)),
        )
        if g.get("threshold") is None:
            scores = prompt_scores(ctx.model, ctx.tokenizer, ctx.gate_dev_prompts, gate, ctx.cfg.batch_size)
            gate = gate.calibrated(scores, float(g.get("fpr", ctx.cfg.gate_fpr)))
        else:
            gate = gate.with_threshold(float(g["threshold"]))
    hook = ctx.sae.cfg.hook_name if uses_sae else ctx.direction.hook
    return Steering(ctx.model, ctx.sae if uses_sae else None, edits, hook=hook, positions="all", gate=gate)


@contextmanager
def steered(ctx: SweepContext, steering: Steering | None) -> Iterator[None]:
    with steering.apply(ctx.model) if steering is not None else nullcontext():
        yield


def evaluate_condition(ctx: SweepContext, cond: Condition, table: ResultsTable) -> None:
    """Measure every missing metric of ``cond`` and append the rows to ``table``."""
    cfg = ctx.cfg
    steering = build_steering(ctx, cond)
    gen = GenerationConfig(max_new_tokens=cfg.size("max_new_tokens"), batch_size=cfg.batch_size)
    if any(not table.has(cond.name, m) for m in SAFETY_METRICS):
        t0 = time.time()
        n = cfg.size("safety_n")
        scfg = SafetyConfig(
            sets=default_sets(cfg.data_dir),
            n=n or None,
            alpaca_n=cfg.size("alpaca_n"),
            seed=cfg.seed,
            data_dir=cfg.data_dir,
        )
        with steered(ctx, steering):
            suite = safety_suite(
                ctx.model,
                ctx.tokenizer,
                scfg,
                gen,
                cache=ctx.cache,
                model_id=ctx.model_id,
                steering_id=cond.key,
                progress=True,
            )
        secs = time.time() - t0
        for side, metric in (("unsafe", "unsafe_refusal"), ("safe", "safe_refusal")):
            pooled = suite.pooled(side)
            sets = [r.name for r in suite.results.values() if r.side == side]
            table.add(cond.rate_row(metric, pooled.k, pooled.n, sets, secs / 2), replace=True)
        ctx.log(
            f"  {cond.name}: unsafe refusal {suite.pooled('unsafe').rate:.1%}, "
            f"safe refusal {suite.pooled('safe').rate:.1%}"
        )
    if any(not table.has(cond.name, m) for m in CAPABILITY_METRICS):
        ccfg = CapabilityConfig(
            mmlu_n=cfg.size("mmlu_n"),
            mmlu_shots=cfg.size("mmlu_shots"),
            truthfulqa_n=cfg.size("truthfulqa_n"),
            gsm8k_n=cfg.size("gsm8k_n"),
            gsm8k_shots=cfg.size("gsm8k_shots"),
            gsm8k_max_new_tokens=cfg.size("gsm8k_max_new_tokens"),
            batch_size=max(1, cfg.batch_size // 2),
            seed=cfg.seed,
            data_dir=cfg.data_dir,
            builtin=not _has_capability_data(cfg.data_dir),
        )
        with steered(ctx, steering):
            results = run_capability(ctx.model, ctx.tokenizer, ccfg, progress=True)
        for metric, r in results.items():
            table.add(
                cond.row(
                    metric,
                    n=r.n,
                    score=r.score,
                    ci_lo=r.ci_low,
                    ci_hi=r.ci_high,
                    datasets=(metric,),
                    seconds=r.seconds,
                    interval=r.interval,
                ),
                replace=True,
            )
        ctx.log("  " + "; ".join(r.summary() for r in results.values()))
    if not _has_multiturn_data(cfg.data_dir):
        if cond.kind == "baseline":
            ctx.log("  multi-turn: skipped (FRACTURED-SORRY-Bench needs the data directory; no built-in set)")
        return
    if any(not table.has(cond.name, m) for m in MULTITURN_METRICS):
        mcfg = MultiTurnConfig(
            n=cfg.size("multiturn_n"),
            seed=cfg.seed,
            max_steps=cfg.size("multiturn_steps") or None,
            data_dir=cfg.data_dir,
        )
        attacks: tuple[str, ...] = ("fractured",) + (("crescendo",) if cfg.size("crescendo_n") > 0 else ())
        target = (lambda: steering.apply(ctx.model)) if steering is not None else None
        t0 = time.time()
        res = run_multiturn(
            ctx.model,
            ctx.tokenizer,
            GenerationConfig(max_new_tokens=48, batch_size=cfg.batch_size),
            mcfg,
            attacks=attacks,
            target_context=target,
            progress=True,
        )
        k = sum(r.successes for r in res.values())
        n = sum(r.n for r in res.values())
        table.add(cond.rate_row("multiturn_asr", k, n, list(res), time.time() - t0), replace=True)
        ctx.log("  " + "; ".join(r.summary() for r in res.values()))


def _has_multiturn_data(data_dir: str | None) -> bool:
    from saesteer.evaluation.datasets import has_data

    return has_data("fractured_sorry_bench", data_dir)


def _has_capability_data(data_dir: str | None) -> bool:
    from saesteer.evaluation.datasets import has_data

    return all(has_data(n, data_dir) for n in ("mmlu", "gsm8k", "truthfulqa"))
