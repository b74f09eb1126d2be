"""Evaluate one sweep condition on the test prompts: safety, capability, multi-turn, and its gate's firing rate.

Every (condition, metric) cell is appended to the results table with its per-item outcomes (prompt or item
id -> 0/1 or score) as soon as it is measured, so conditions can be compared item by item (paired) and an
interrupted sweep resumes without recomputing finished cells.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.evaluation.capability import BENCHMARKS, CapabilityData, mc_block, run_capability
from saesteer.evaluation.datasets import has_data
from saesteer.evaluation.divergence import steering_divergence
from saesteer.evaluation.humaneval import chat_prompt, score_humaneval
from saesteer.evaluation.multiturn import run_multiturn
from saesteer.evaluation.safety import CompletionCache, refusal_rate
from saesteer.evaluation.selection import UNSEEN_TEST_SETS
from saesteer.evaluation.splits import PURPOSES
from saesteer.evaluation.stats import mean_ci
from saesteer.model.generation import GenerationConfig
from saesteer.report.results import ResultsTable
from saesteer.sae.base import SAE
from saesteer.steering.direction import RefusalDirection
from saesteer.steering.engine import Steering
from saesteer.steering.gate import FeatureScorer, Gate, ProjectionScorer, prompt_scores
from saesteer.steering.interventions import ClampFeature
from saesteer.study.config import StudyConfig
from saesteer.study.design import Condition
from saesteer.study.prompts import StudyPrompts

SAFETY_METRICS = ("unsafe_refusal", "safe_refusal")
UNSEEN_METRICS = ("unseen_unsafe_refusal", "unseen_safe_refusal")  # on UNSEEN_TEST_SETS, apart from the pool
CAPABILITY_METRICS = ("mmlu", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k")
DIVERGENCE_METRICS = ("kl", "delta_ce")
MULTITURN_METRICS = ("fractured_asr", "crescendo_asr")
#: the per-item outcome of each capability metric's records
ITEM_KEYS = {"truthfulqa_mc1": "mc1_correct", "truthfulqa_mc2": "mc2_true_mass"}


@dataclass
class SweepContext:
    """What every condition's evaluation shares."""

    model: Any
    tokenizer: Any
    model_id: str
    sae: SAE
    direction: RefusalDirection
    cfg: StudyConfig
    prompts: StudyPrompts
    calibration: list[str]  # harmless dev prompts the gate thresholds are set on
    cache: CompletionCache
    capability_conditions: set[str]
    capability_data: CapabilityData | None = None
    humaneval: list[Any] = dataclasses.field(default_factory=list)
    divergence: tuple[list[str], list[str]] = ([], [])  # harmless dev prompts, the unsteered responses
    safety_only: bool = False
    log: Callable[[str], None] = print
    probe: ProjectionScorer | None = None  # the harm probe of a "probe" gate, fit at cfg.hook
    fitted: Gate | None = None  # the "fitted" gate: saesteer.gating's best variant, threshold set on dev
    attacker_memo: dict[str, str] = dataclasses.field(default_factory=dict)  # Crescendo attacker replies, shared


def gate_from_context(ctx: SweepContext, g: Mapping[str, Any]) -> Gate:
    """A condition's gate, its threshold calibrated on the harmless calibration prompts when not given."""
    scorer: Any
    if g["type"] == "fitted":
        if ctx.fitted is None:
            raise SaesteerError("a fitted gate needs saesteer.gating.fit_gate's result; run the gate_fit stage")
        return ctx.fitted
    if g["type"] == "feature":
        scorer, hook = FeatureScorer(ctx.sae, int(g["feature"])), ctx.sae.cfg.hook_name
    elif g["type"] == "probe":
        if ctx.probe is None:
            raise SaesteerError("a probe gate needs a fitted probe; fit one with saesteer.steering.gate.fit_probe")
        scorer, hook = ctx.probe, ctx.cfg.hook
    else:
        scorer, hook = ctx.direction.scorer(), ctx.direction.hook
    gate = Gate(scorer=scorer, hook=hook, reduce=g.get("reduce", "last"), tail=int(g.get("tail", 5)))
    if g.get("threshold") is not None:
        return gate.with_threshold(float(g["threshold"]))
    bs = ctx.cfg.generation.batch_size
    scores = prompt_scores(ctx.model, ctx.tokenizer, ctx.calibration, gate, bs)
    return gate.calibrated(scores, float(g.get("fpr", ctx.cfg.sweep.gate_fpr)))


def steering_from_context(ctx: SweepContext, cond: Condition) -> Steering | None:
    """A condition's :class:`Steering` (None for baseline), built from the objects the study already holds in
    ``ctx`` (SAE, direction, gates): unlike ``Steering.from_spec``, it reads no file."""
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
    gate = gate_from_context(ctx, cond.gate) if cond.gate is not None else None
    hook = ctx.sae.cfg.hook_name if uses_sae else ctx.direction.hook
    return Steering(ctx.model, ctx.sae if uses_sae else None, edits, hook=hook, positions="all", gate=gate)


@contextmanager
def steered(ctx: SweepContext, steering: Steering | None) -> Iterator[None]:
    with steering.apply(ctx.model) if steering is not None else nullcontext():
        yield


def evaluate_condition(ctx: SweepContext, cond: Condition, table: ResultsTable) -> None:
    """Measure every missing metric of ``cond`` and append the rows (with per-item outcomes) to ``table``."""
    steering = steering_from_context(ctx, cond)
    gate = steering.gate if steering is not None else None
    if gate is not None and _composable(ctx, cond):  # first, so nothing it composes is generated
        _compose_gated(ctx, cond, gate, table)
    if any(not table.has(cond.name, m) for m in _safety_metrics(ctx)):
        _safety(ctx, cond, steering, table)
    if cond.name in ctx.capability_conditions:
        if any(not table.has(cond.name, m) for m in _capability_metrics(ctx)):
            _capability(ctx, cond, steering, table)
        if ctx.humaneval and not table.has(cond.name, "humaneval"):
            _humaneval(ctx, cond, steering, table)
    if steering is not None and ctx.divergence[0] and not table.has(cond.name, "kl"):
        _divergence(ctx, cond, steering, table)
    if ctx.safety_only:
        return
    if has_data("fractured_sorry_bench", ctx.cfg.data_dir) and any(
        not table.has(cond.name, m) for m in _multiturn_metrics(ctx.cfg, cond)
    ):
        _multiturn(ctx, cond, steering, table)
    if steering is not None and steering.gate is not None:
        _firing(ctx, cond, steering.gate, table)


def _safety(ctx: SweepContext, cond: Condition, steering: Steering | None, table: ResultsTable) -> None:
    cfg = ctx.cfg
    gen = GenerationConfig(max_new_tokens=cfg.generation.max_new_tokens, batch_size=cfg.generation.batch_size)
    t0 = time.time()
    items: dict[str, dict[str, float]] = {m: {} for m in (*SAFETY_METRICS, *UNSEEN_METRICS)}
    sets: dict[str, list[str]] = {m: [] for m in items}
    unseen = _unseen_sets(ctx)
    with steered(ctx, steering):
        for name, ps in ctx.prompts.test_sets().items():
            side = "unsafe" if ps[0].should_refuse else "safe"
            metric = ("unseen_" if name in unseen else "") + f"{side}_refusal"
            r = refusal_rate(
                ctx.model, ctx.tokenizer, ps, cfg.safety.judge, gen, ctx.cache, ctx.model_id, cond.key, name, side,
                progress=True,
            )  # fmt: skip
            items[metric] |= {f"{name}/{pid}": float(v) for pid, v in zip(r.prompt_ids, r.refusals, strict=True)}
            sets[metric].append(name)
    secs = time.time() - t0
    for metric in _safety_metrics(ctx):
        k = int(sum(items[metric].values()))
        row = cond.rate_row(metric, k, len(items[metric]), sets[metric], secs / 2)
        table.add(row, replace=True, items=items[metric])
    u, s = (table.get(cond.name, m) for m in SAFETY_METRICS)
    ctx.log(f"  {cond.name}: unsafe refusal {u.score:.1%} (n={u.n}), safe refusal {s.score:.1%} (n={s.n})")  # type: ignore[union-attr]


def _unseen_sets(ctx: SweepContext) -> set[str]:
    """The scored sets of UNSEEN_TEST_SETS that no choosing dev purpose drew from in this run (with no data
    directory the built-in suites serve dev purposes, so none is unseen)."""
    dev = [p for p in PURPOSES if p not in ("test", "sae_chat")]
    used = {ds.split(":")[0] for p in dev for ds in ctx.prompts.datasets(p)}
    return {n for n in ctx.prompts.test_sets() if n in UNSEEN_TEST_SETS and n.split(":")[0] not in used}


def _safety_metrics(ctx: SweepContext) -> tuple[str, ...]:
    return SAFETY_METRICS + (UNSEEN_METRICS if _unseen_sets(ctx) else ())


def _item_values(metric: str, records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    key = ITEM_KEYS.get(metric, "correct")
    out = {}
    for i, r in enumerate(records):
        v = r.get(key, r.get("passed", r.get("correct")))
        if v is not None:
            out[str(r.get("id", i))] = float(v)
    return out


def _capability(ctx: SweepContext, cond: Condition, steering: Steering | None, table: ResultsTable) -> None:
    """MMLU, TruthfulQA, GSM8K; a gated steering decides once per question, from the chat-formatted question."""
    cfg = ctx.cfg
    ccfg = dataclasses.replace(
        cfg.capability, seed=cfg.seed, data_dir=cfg.data_dir, builtin=not _has_capability_data(cfg.data_dir)
    )
    results = run_capability(ctx.model, ctx.tokenizer, ccfg, _benchmarks(ctx), progress=True, steering=steering,
                             data=ctx.capability_data)  # fmt: skip
    for metric, r in results.items():
        _benchmark_row(table, cond, metric, r)
    ctx.log("  " + "; ".join(r.summary() for r in results.values()))


def _benchmark_row(table: ResultsTable, cond: Condition, metric: str, r: Any) -> None:
    row = cond.row(
        metric, n=r.n, score=r.score, ci_lo=r.ci_low, ci_hi=r.ci_high, datasets=(metric,), seconds=r.seconds,
        interval=r.interval,
    )  # fmt: skip
    table.add(row, replace=True, items=_item_values(metric, r.records))
    gate = r.settings.get("gate") if isinstance(r.settings, Mapping) else None
    if gate and cond.kind == "conditional" and not table.has(cond.name, f"gate_firing:{metric}"):
        fired = cond.rate_row(f"gate_firing:{metric}", int(gate["fired"]), int(gate["n"]), [metric])
        table.add(fired, replace=True)


def _humaneval(ctx: SweepContext, cond: Condition, steering: Steering | None, table: ResultsTable) -> None:
    """HumanEval pass@1; a gated steering decides per problem from its chat prompt, as in generation."""
    cfg = ctx.cfg
    with steered(ctx, steering):
        r = score_humaneval(
            ctx.model, ctx.tokenizer, ctx.humaneval, max_new_tokens=cfg.evaluate.humaneval_max_new_tokens,
            batch_size=cfg.capability.generate_batch_size or cfg.generation.batch_size,
        )  # fmt: skip
    _benchmark_row(table, cond, "humaneval", r)
    if steering is not None and steering.gate is not None:  # the gate decides per problem from its chat prompt
        bs = cfg.generation.batch_size
        texts = [chat_prompt(p) for p in ctx.humaneval]
        fired = steering.gate.decide(prompt_scores(ctx.model, ctx.tokenizer, texts, steering.gate, bs))
        table.add(cond.rate_row("gate_firing:humaneval", int(fired.sum()), len(texts), ["humaneval"]), replace=True)
    ctx.log("  " + r.summary())


def compose(base: Mapping[str, float], clamp: Mapping[str, float], fired: Mapping[str, bool]) -> dict[str, float]:
    """The gated clamp's outcome per item: the clamp's where the gate fires, the baseline's where it does not."""
    return {k: (clamp[k] if fired[k] else b) for k, b in base.items() if k in clamp and k in fired}


def _composable(ctx: SweepContext, cond: Condition) -> bool:
    return ctx.cfg.evaluate.compose_gated and cond.unconditional in ctx.capability_conditions


def _gate_questions(ctx: SweepContext) -> dict[str, dict[str, str]]:
    """Per capability metric, the chat question each item's gate decision reads (as ``run_capability`` asks it)."""
    d = ctx.capability_data
    asked: dict[str, list[tuple[Any, str]]] = {}
    if d is not None:
        asked["mmlu"] = [(q, mc_block(q)) for q in d.mmlu]
        asked["truthfulqa_mc1"] = asked["truthfulqa_mc2"] = [(it, it.question) for it in d.truthfulqa]
        asked["gsm8k"] = [(q, q.question) for q in d.gsm8k]
    asked["humaneval"] = [(p, chat_prompt(p)) for p in ctx.humaneval]
    return {m: {str(getattr(x, "id", None) or x.task_id): q for x, q in xs} for m, xs in asked.items() if xs}


def _compose_gated(ctx: SweepContext, cond: Condition, gate: Gate, table: ResultsTable) -> None:
    """A gated condition's safety and capability cells from the baseline's and its ungated clamp's per-item outcomes.

    The gate decides once per prompt or question, from its chat form (as generation and ``score_gated`` do); an
    item it fires on is generated or scored exactly as under the ungated clamp, the others as unsteered. Both are
    in the table already, so each item's outcome is looked up, not computed again (the same up to batch-composition
    rounding; a test checks it item for item). Multi-turn attacks and the KL measure are still generated: there the
    gate decides per turn or per token."""
    t0 = time.time()
    _firing(ctx, cond, gate, table)
    fired_prompt = {
        f"{name}/{pid}": v == 1.0
        for name in ctx.prompts.test_sets()
        for pid, v in (table.items(cond.name, f"gate_firing:{name}") or {}).items()
    }
    for metric in _safety_metrics(ctx):
        _composed_row(table, cond, metric, fired_prompt, tuple(table.get("baseline", metric).datasets), t0)  # type: ignore[union-attr]
    for metric, questions in _gate_questions(ctx).items():
        if table.has(cond.name, metric):
            continue
        t0, ids = time.time(), list(questions)
        scores = prompt_scores(
            ctx.model, ctx.tokenizer, [questions[i] for i in ids], gate, ctx.cfg.generation.batch_size
        )
        fired = dict(zip(ids, [bool(f) for f in gate.decide(scores).tolist()], strict=True))
        if _composed_row(table, cond, metric, fired, (metric,), t0):
            table.add(cond.rate_row(f"gate_firing:{metric}", sum(fired.values()), len(fired), [metric]), replace=True)
    ctx.log(f"  {cond.name}: safety and capability composed from baseline and {cond.unconditional} under the gate")


def _composed_row(
    table: ResultsTable, cond: Condition, metric: str, fired: Mapping[str, bool], datasets: Sequence[str], t0: float
) -> bool:
    """Add ``metric``'s composed row (False when the baseline or the clamp has no outcomes for it)."""
    base, clamp = table.items("baseline", metric), table.items(str(cond.unconditional), metric)
    if table.has(cond.name, metric) or not base or not clamp:
        return False
    items = compose(base, clamp, fired)
    values = list(items.values())
    if ITEM_KEYS.get(metric) == "mc2_true_mass":  # a mean, not a rate
        m, lo, hi = mean_ci(values) if len(values) > 1 else (values[0], -math.inf, math.inf)
        row = cond.row(metric, n=len(values), score=m, ci_lo=max(0.0, lo), ci_hi=min(1.0, hi), datasets=datasets,
                       interval="t", seconds=time.time() - t0)  # fmt: skip
    else:
        row = cond.rate_row(metric, int(sum(values)), len(values), datasets, time.time() - t0)
    table.add(row, replace=True, items=items)
    return True


def _divergence(ctx: SweepContext, cond: Condition, steering: Steering, table: ResultsTable) -> None:
    """KL(unsteered || steered) and the CE increase per token on the unsteered model's own harmless responses."""
    prompts, responses = ctx.divergence
    r = steering_divergence(
        ctx.model, ctx.tokenizer, prompts, responses, steering, batch_size=ctx.cfg.generation.batch_size
    )
    per = {f"p{i}": rec for i, rec in enumerate(r.records)}
    for metric, value, ci, key in (("kl", r.kl, r.kl_ci, "kl"), ("delta_ce", r.delta_ce, r.delta_ce_ci, None)):
        lo = min(ci[0], value) if math.isfinite(ci[0]) else -math.inf  # n < 2: no interval
        hi = max(ci[1], value) if math.isfinite(ci[1]) else math.inf
        row = cond.row(metric, n=r.n, score=value, ci_lo=lo, ci_hi=hi, datasets=("divergence",), interval="t",
                       seconds=r.seconds / 2)  # fmt: skip
        items = {i: (rec["kl"] if key else rec["ce_steered"] - rec["ce_base"]) for i, rec in per.items()}
        table.add(row, replace=True, items=items)
    ctx.log(f"  KL {r.kl:.4f} nats/token, CE increase {r.delta_ce:+.4f} (n={r.n})")


def _multiturn_metrics(cfg: StudyConfig, cond: Condition | None = None) -> tuple[str, ...]:
    """The attacks' metrics; for ``cond``, without Crescendo where its kind is in ``evaluate.crescendo_skip``."""
    skipped = cond is not None and cond.kind in cfg.evaluate.crescendo_skip
    return MULTITURN_METRICS if cfg.evaluate.crescendo_n > 0 and not skipped else MULTITURN_METRICS[:1]


def _multiturn(ctx: SweepContext, cond: Condition, steering: Steering | None, table: ResultsTable) -> None:
    cfg = ctx.cfg
    gen = GenerationConfig(max_new_tokens=cfg.evaluate.multiturn_max_new_tokens, batch_size=cfg.generation.batch_size)
    target = (lambda: steering.apply(ctx.model)) if steering is not None else None
    sizes = {"fractured": cfg.multiturn.n, "crescendo": cfg.evaluate.crescendo_n}
    for attack in ("fractured", "crescendo")[: len(_multiturn_metrics(cfg, cond))]:
        metric = f"{attack}_asr"
        if table.has(cond.name, metric):
            continue
        mcfg = dataclasses.replace(cfg.multiturn, n=sizes[attack], seed=cfg.seed, data_dir=cfg.data_dir)
        t0 = time.time()
        res = run_multiturn(
            ctx.model, ctx.tokenizer, gen, mcfg, attacks=(attack,), target_context=target, progress=True,
            attacker_memo=ctx.attacker_memo,
        )[attack]  # fmt: skip
        items = {str(r.get("id", r.get("objective", i))): float(r["success"]) for i, r in enumerate(res.records)}
        row = cond.rate_row(metric, res.successes, res.n, [attack], time.time() - t0)
        table.add(row, replace=True, items=items)
        ctx.log("  " + res.summary())


def _firing(ctx: SweepContext, cond: Condition, gate: Gate, table: ResultsTable) -> None:
    """The share of each test set's prompts on which the gate steers (decided on the chat-formatted prompt)."""
    bs = ctx.cfg.generation.batch_size
    for name, ps in ctx.prompts.test_sets().items():
        metric = f"gate_firing:{name}"
        if table.has(cond.name, metric):
            continue
        fired = gate.decide(prompt_scores(ctx.model, ctx.tokenizer, [p.text for p in ps], gate, bs))
        items = {p.id: float(f) for p, f in zip(ps, fired.tolist(), strict=True)}
        table.add(cond.rate_row(metric, int(fired.sum()), len(ps), [name]), replace=True, items=items)


def _benchmarks(ctx: SweepContext) -> tuple[str, ...]:
    """The log-likelihood / GSM8K benchmarks with items to score (a profile skips one by sizing it 0)."""
    d = ctx.capability_data
    return tuple(b for b in BENCHMARKS if d is None or getattr(d, b))


def _capability_metrics(ctx: SweepContext) -> tuple[str, ...]:
    return tuple(m for m in CAPABILITY_METRICS if m.split("_")[0] in _benchmarks(ctx))


def _has_capability_data(data_dir: str | None) -> bool:
    return all(has_data(n, data_dir) for n in ("mmlu", "gsm8k", "truthfulqa"))
