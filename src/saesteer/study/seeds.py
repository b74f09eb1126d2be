"""Seed variance: the SAE, the feature discovery and the headline clamp again under other seeds, one harvest.

For each extra seed ``s`` the SAE is trained from a new initialisation and batch order on the same
activations, the discovery runs on it, and the chosen feature is clamped at the dev-chosen multiple of its
own max activation on the same test prompts. Per seed the report gives the chosen feature, its safety gain
and over-refusal against the (seed-free) unsteered baseline, and whether it matches the first seed's feature:
``cos(W_dec[f_s], W_dec[f_0]) > 0.7`` (features of different SAEs have no shared index, only directions).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saesteer.evaluation import paired
from saesteer.features.report import FeatureReport
from saesteer.model.loading import LoadedModel
from saesteer.report.derived import shared_outcomes
from saesteer.report.results import ResultsTable
from saesteer.sae.base import SAE
from saesteer.stages import StageRunner
from saesteer.steering.direction import RefusalDirection
from saesteer.study import dev_stages as dev
from saesteer.study import sae_stages as sae_st
from saesteer.study.config import StudyConfig
from saesteer.study.design import Condition
from saesteer.study.prompts import StudyPrompts
from saesteer.study.sweep_stage import stage_sweep, study_grid, sweep_context

MATCH_COSINE = 0.7


@dataclass
class SeedRun:
    """One seed's headline: its chosen feature, decoder row, and the clamp's test rates."""

    seed: int
    feature: int | None
    decoder: torch.Tensor | None  # the chosen feature's decoder row (unit norm)
    clamp: str | None  # the condition name of the headline clamp under this seed
    unsafe: float = math.nan
    safe: float = math.nan
    n_unsafe: int = 0
    n_safe: int = 0
    unsafe_items: dict[str, float] | None = None  # per-item outcomes, paired with the baseline's
    safe_items: dict[str, float] | None = None

    @classmethod
    def of(cls, seed: int, features: FeatureReport, sae: SAE, table: ResultsTable, choice: dev.Choice) -> SeedRun:
        f = features.refusal_feature
        row = torch.nn.functional.normalize(sae.W_dec[f].detach().float(), dim=0) if f is not None else None
        u, s = table.get(choice.clamp, "unsafe_refusal"), table.get(choice.clamp, "safe_refusal")
        return cls(
            seed, f, row, choice.clamp, u.score if u else math.nan, s.score if s else math.nan,
            u.n if u else 0, s.n if s else 0,
            table.items(choice.clamp, "unsafe_refusal"), table.items(choice.clamp, "safe_refusal"),
        )  # fmt: skip

    def cosine(self, other: SeedRun) -> float | None:
        if self.decoder is None or other.decoder is None:
            return None
        return float(self.decoder @ other.decoder)


def _paired(mine: dict[str, float] | None, base: dict[str, float] | None, ratio: bool) -> list[float] | None:
    """[lo, hi] of this seed's gain (Tango) or over-refusal ratio (paired bootstrap) against the baseline."""
    got = shared_outcomes(base, mine)
    if got is None:
        return None
    b, m = ([v == 1.0 for v in side] for side in got)
    if ratio and not any(b):
        return None
    est = paired.over_refusal_ratio(b, m) if ratio else paired.paired_diff_ci(m, b)
    return [est.lo, est.hi]


def seed_summary(runs: list[SeedRun], baseline: ResultsTable) -> dict[str, Any]:
    """Per seed: feature, gain and over-refusal ratio (with paired intervals against the shared baseline),
    cosine to the first seed's feature; and their spread."""
    u0, s0 = baseline.get("baseline", "unsafe_refusal"), baseline.get("baseline", "safe_refusal")
    first = runs[0]
    rows: list[dict[str, Any]] = []
    for r in runs:
        cos = r.cosine(first)
        rows.append(
            {
                "seed": r.seed,
                "feature": r.feature,
                "clamp": r.clamp,
                "unsafe_refusal": r.unsafe,
                "safe_refusal": r.safe,
                "gain": r.unsafe - u0.score if u0 else math.nan,
                "gain_ci": _paired(r.unsafe_items, baseline.items("baseline", "unsafe_refusal"), ratio=False),
                "over_refusal": r.safe / s0.score if s0 and s0.score > 0 else math.nan,
                "over_refusal_ci": _paired(r.safe_items, baseline.items("baseline", "safe_refusal"), ratio=True),
                "cos_first": cos,
                "same_feature": r.feature == first.feature or (cos is not None and cos > MATCH_COSINE),
                "n_unsafe": r.n_unsafe,
                "n_safe": r.n_safe,
            }
        )
    out: dict[str, Any] = {"seeds": rows, "match_cosine": MATCH_COSINE}
    for key in ("gain", "over_refusal"):
        vals = [float(v) for row in rows if isinstance(v := row[key], float) and math.isfinite(v)]
        if vals:
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            out[key] = {"mean": mean, "sd": sd, "min": min(vals), "max": max(vals), "n_seeds": len(vals)}
    out["all_match"] = all(row["same_feature"] for row in rows)
    # the direction of the effect holds in a seed when its interval excludes no-effect (0 pts, ratio 1)
    out["gain_positive_every_seed"] = all(row["gain_ci"] is not None and row["gain_ci"][0] > 0 for row in rows)
    out["over_refusal_every_seed"] = all(
        row["over_refusal_ci"] is not None and row["over_refusal_ci"][0] > 1 for row in rows
    )
    return out


def stage_seeds(
    runner: StageRunner,
    lm: LoadedModel,
    cfg: StudyConfig,
    acts: str | None,
    corpus: sae_st.Corpus,
    prompts: StudyPrompts,
    direction: RefusalDirection,
    choice: dev.Choice,
    grid: list[Condition],
) -> list[SeedRun]:
    """Seeds ``cfg.seed + 1 .. cfg.seed + seeds - 1``: SAE, features and the headline clamp's safety rates."""
    clamp = next(c for c in grid if c.name == choice.clamp)
    runs = []
    for seed in range(cfg.seed + 1, cfg.seed + cfg.seeds):
        trained = sae_st.stage_train(runner, lm, cfg, acts, seed)
        features = dev.stage_features(runner, lm, cfg, trained, corpus, prompts)
        if features.refusal_feature is None:
            runs.append(SeedRun(seed, None, None, None))
            continue
        one = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, clamp_values=[_multiple(clamp)]))
        seed_grid = [c for c in study_grid(one, features, trained.sae, []) if c.kind == "refusal_feature"]
        ctx = sweep_context(lm, one, trained.sae, direction, prompts, None, Path(runner.root) / "unused.jsonl")
        seed_choice = dev.Choice(seed_grid[0].name, None, {})
        table = stage_sweep(runner, ctx, seed_grid, seed_choice, features, name=f"sweep_seed{seed}", safety_only=True)
        runs.append(SeedRun.of(seed, features, trained.sae, table, seed_choice))
    return runs


def _multiple(clamp: Condition) -> float:
    """The clamp's multiple of its feature's max activation, from its label ``"2x max"``."""
    return float(clamp.label.split("x")[0]) if clamp.label.endswith("x max") else float(clamp.value or 0.0)
