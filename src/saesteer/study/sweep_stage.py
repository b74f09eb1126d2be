"""The sweep stage: the study's conditions (grid), their shared context, and the test-set scoring of each.

The grid holds the unsteered baseline, the refusal clamps at each multiple of the feature's max activation,
the control at each multiple of its own max, every clamp behind each gate, and the difference-in-means
direction; the dev choice keeps only the chosen clamp's gated versions and the control at the chosen clamp's
multiple for test scoring.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from saesteer.config import config_to_dict
from saesteer.evaluation.safety import CompletionCache
from saesteer.features.report import FeatureReport
from saesteer.model.loading import LoadedModel
from saesteer.report.results import ResultsTable
from saesteer.sae.base import SAE
from saesteer.stages import StageRunner, is_writer, stable_hash, sync
from saesteer.steering.direction import RefusalDirection
from saesteer.steering.gate import Gate, ProjectionScorer
from saesteer.study import dev_stages as dev
from saesteer.study.config import StudyConfig
from saesteer.study.design import SCORING_CODE, Condition, build_grid, gate_types
from saesteer.study.prompts import StudyPrompts
from saesteer.study.sweep_eval import SweepContext, evaluate_condition


def study_gates(cfg: StudyConfig, real: bool) -> list[str]:
    """The conditional-steering gates, each with its token reduction spelled out (the probe is fit to match)."""
    gates = []
    for g in gate_types(cfg.sweep):
        kind, _, red = g.partition(":")
        gates.append(kind if kind == "fitted" else f"{kind}:{red or ('mean' if kind == 'probe' else 'last')}")
    if not real and any(g.startswith("probe:") for g in gates):
        print(
            "saesteer: note: no data directory, so no dev prompts disjoint from the built-in test suites to fit a "
            "harm probe on; conditional steering runs without the probe gate"
        )
        gates = [g for g in gates if not g.startswith("probe:")] or ["direction:last"]
    return gates


def study_grid(
    cfg: StudyConfig, features: FeatureReport, sae: SAE, gates: list[str], fit_id: str | None = None
) -> list[Condition]:
    """The conditions: baseline, the refusal clamps, the control at the same multiples, every clamp behind each
    gate (the dev choice keeps the chosen clamp's gates and control), and the direction baseline."""
    refusal = [features.refusal_feature] if features.refusal_feature is not None else []
    control = [features.control_feature] if features.control_feature is not None else []
    fmax = {f: features.ref_max(f) for f in refusal + control}
    scfg = dataclasses.replace(
        cfg.sweep, control_values=list(cfg.sweep.clamp_values), conditional=bool(gates), gate=",".join(gates)
    )
    grid = build_grid(scfg, refusal, control, feature_max={f: v for f, v in fmax.items() if v is not None})
    # a fitted gate is named by its stage folder, so a refit is another condition (another cache key)
    return [
        dataclasses.replace(c, gate={**c.gate, "fit": fit_id}) if c.gate and c.gate["type"] == "fitted" else c
        for c in grid
    ]


def sweep_context(
    lm: LoadedModel,
    cfg: StudyConfig,
    sae: SAE,
    direction: RefusalDirection,
    prompts: StudyPrompts,
    probe: ProjectionScorer | None,
    cache_path: Path,
    fitted: Gate | None = None,
) -> SweepContext:
    return SweepContext(
        lm.model, lm.tokenizer, lm.spec, sae, direction, cfg, prompts, dev.calibration_prompts(prompts),
        CompletionCache(cache_path), set(), probe=probe, fitted=fitted,
    )  # fmt: skip


def capability_conditions(cfg: StudyConfig, grid: list[Condition], choice: dev.Choice) -> set[str]:
    """The conditions the capability benchmarks run on: all, or baseline, the dev-chosen clamp and gate, the
    control and the direction; less the kinds ``evaluate.capability_skip`` names."""
    skip = set(cfg.evaluate.capability_skip)
    if cfg.evaluate.capability_on == "all":
        return {c.name for c in grid if c.kind not in skip}
    keep = {"baseline", choice.clamp, *([choice.gate] if choice.gate else [])}
    keep |= {c.name for c in grid if c.kind in ("control", "direction")}
    return {c.name for c in grid if c.name in keep and c.kind not in skip}


def stage_sweep(
    runner: StageRunner,
    ctx: SweepContext,
    grid: list[Condition],
    choice: dev.Choice,
    features: FeatureReport,
    name: str = "sweep",
    safety_only: bool = False,
) -> ResultsTable:
    """Score every condition on the test prompts (capability on the headline conditions; safety only if asked)."""
    cfg = ctx.cfg
    ctx.safety_only = safety_only
    ctx.capability_conditions = set() if safety_only else capability_conditions(cfg, grid, choice)
    inputs = {
        "sae": features.sae.fingerprint,
        "grid": [c.to_dict() for c in grid],
        "capability_on": sorted(ctx.capability_conditions),
        "safety_only": safety_only,
        "test": {ds: [p.id for p in ps] for ds, ps in ctx.prompts.test_sets().items()},
        "capability_items": stable_hash(dataclasses.asdict(ctx.capability_data)) if ctx.capability_data else None,
        "humaneval": [getattr(p, "task_id", str(p)) for p in ctx.humaneval],
        "divergence": stable_hash(ctx.divergence),
        **{k: config_to_dict(getattr(cfg, k)) for k in ("generation", "safety", "capability", "multiturn", "evaluate")},
    }

    def run(folder: Path) -> ResultsTable:
        table = ResultsTable.open(folder / "results.json", meta={"model": ctx.model_id})
        ctx.cache = CompletionCache(folder / "completions.jsonl")
        sync()  # under torchrun every rank resumes from the same saved state before rank 0 writes more
        if not is_writer():
            table.path = None  # rank 0 saves; the others hold the same rows in memory
        for i, cond in enumerate(grid, start=1):
            if is_writer():
                print(f"[sweep] condition {i}/{len(grid)}: {cond.name}", flush=True)
            evaluate_condition(ctx, cond, table)
        return table

    # collective: under torchrun the generation of every condition is split over the ranks
    load = lambda f: ResultsTable.load(f / "results.json")  # noqa: E731
    return runner.run(name, inputs, run, load, code=SCORING_CODE, collective=True)
