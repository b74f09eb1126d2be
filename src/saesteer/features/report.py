"""The discovery's outputs: ``features.json`` (machine-readable) and a Markdown + HTML summary.

``features.json`` (format ``saesteer.features.v1``) holds: ``config``, ``seed``, ``model``, ``sae``,
``data`` (prompt ids), ``refusal_score`` (tokens, calibration against the judge), ``baseline``,
``paper`` (archetype responses and candidates), ``rankers`` (top lists), ``screen`` (pool, clamp
mapping with per-feature reference max / mean for every screened feature and the control, ``cheap`` and
``generation`` results), ``chosen``, ``ranker_comparison``, ``control``,
``features`` (feature cards), ``status`` (``ok`` or ``no_candidate_passed``) and ``timings``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from saesteer.config import config_to_dict
from saesteer.features.contexts import FeatureStats
from saesteer.features.interpret import FeatureCard
from saesteer.features.rankers import Ranking
from saesteer.features.screen import CheapResult, GenResult

FORMAT = "saesteer.features.v1"
REQUIRED_KEYS = (
    "format",
    "status",
    "config",
    "seed",
    "model",
    "sae",
    "data",
    "refusal_score",
    "baseline",
    "paper",
    "rankers",
    "screen",
    "chosen",
    "ranker_comparison",
    "control",
    "features",
    "timings",
)
PAPER_VALUES = (10.0, 12.0)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 and math.isfinite(b) else None


def clamp_mapping(
    values: dict[int, float], stats: FeatureStats, chosen: int, cfg: Any, resid_norm: float
) -> dict[str, Any]:
    """Clamp values in our SAE's units, as multiples of each feature's max / mean activation, and what the
    paper's 10-12 correspond to (as the same multiples of the chosen feature's max and of the residual norm)."""
    alive = stats.max_act[stats.max_act > 0]
    typical = float(alive.median()) if alive.numel() else 0.0
    per = {}
    for f, v in values.items():
        mx, mean = float(stats.max_act[f]), float(stats.mean_act[f])
        per[str(f)] = {"value": v, "ref_max": mx, "ref_mean": mean, "x_max": _ratio(v, mx), "x_mean": _ratio(v, mean)}
    cmax, cmean = float(stats.max_act[chosen]), float(stats.mean_act[chosen])
    paper = {
        str(int(p)): {
            "x_chosen_max": _ratio(p, cmax),
            "x_chosen_mean": _ratio(p, cmean),
            "x_typical_max": _ratio(p, typical),
            "fraction_of_resid_norm": _ratio(p, resid_norm),
        }
        for p in PAPER_VALUES
    }
    return {
        "mode": "absolute" if cfg.clamp_value is not None else "multiple_of_max",
        "multiple": cfg.clamp_multiple,
        "absolute": cfg.clamp_value,
        "typical_max_act": typical,
        "median_resid_norm": resid_norm,
        "reference_tokens": stats.n_tokens,
        "per_feature": per,
        "chosen": {
            "feature": chosen,
            "ref_max": cmax,
            "ref_mean": cmean,
            "value": values.get(chosen),
            "fraction_of_resid_norm": _ratio(values.get(chosen, math.nan), resid_norm),
        },
        "paper_values": paper,
        "note": "a clamp to c adds (c - z_f) W_dec[f] to the residual; the paper's SAE units are not ours, so its "
        "10-12 are expressed as multiples of our chosen feature's max / mean activation on the reference "
        "tokens (corpus + chat prompts) and as fractions of the median residual norm at the hook",
    }


def ranker_comparison(
    rankings: dict[str, Ranking], chosen: int | None, cheap: Sequence[CheapResult], per_ranker: int
) -> dict[str, Any]:
    """How each ranker placed the chosen feature (= causal screens it needs to reach it) and how many of its
    top ``per_ranker`` had a positive cheap-screen objective."""
    by_f = {c.feature: c for c in cheap}
    best_cheap = cheap[0].feature if cheap else None
    rows: dict[str, Any] = {}
    for name, r in rankings.items():
        top = r.top(per_ranker)
        screened = [by_f[f] for f in top if f in by_f]
        rows[name] = {
            "rank_of_chosen": r.rank_of(chosen) if chosen is not None else None,
            "rank_of_best_cheap": r.rank_of(best_cheap) if best_cheap is not None else None,
            "top_n": per_ranker,
            "top_n_screened": len(screened),
            "top_n_positive": sum(c.objective > 0 for c in screened),
            "best_objective_in_top_n": max((c.objective for c in screened), default=None),
        }
    key = "rank_of_chosen" if chosen is not None else "rank_of_best_cheap"
    ranked = [(v[key], k) for k, v in rows.items() if v[key] is not None]
    best = min(ranked)[0] if ranked else None
    winners = sorted(k for v, k in ranked if v == best)
    return {"by_ranker": rows, "criterion": key, "winners": winners, "best_rank": best}


def build_report(
    *,
    cfg: Any,
    model_name: str,
    sae: Any,
    fp: str,
    harm_ids: list[str],
    safe_ids: list[str],
    tokens: dict[str, Any],
    calib: Any,
    base: dict[str, Any],
    base_h: Any,
    base_s: Any,
    paper: dict[str, Any],
    rankings: dict[str, Ranking],
    pool: list[int],
    mapping: dict[str, Any],
    cheap: list[CheapResult],
    gens: list[GenResult],
    chosen: GenResult | None,
    comparison: dict[str, Any],
    control: Any,
    cards: list[FeatureCard],
    fast: bool,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The content of ``features.json``."""
    ranks = {f: {k: r.rank_of(f) for k, r in rankings.items()} for f in pool}
    return {
        "format": FORMAT,
        "status": "ok" if chosen else "no_candidate_passed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config_to_dict(cfg),
        "seed": cfg.seed,
        "model": model_name,
        "sae": {
            "path": cfg.sae,
            "hook": sae.cfg.hook_name,
            "architecture": sae.cfg.architecture,
            "d_sae": sae.d_sae,
            "d_in": sae.d_in,
            "k": sae.cfg.k,
            "fingerprint": fp,
        },
        "data": {
            "harmful": {"name": cfg.harmful, "ids": harm_ids},
            "harmless": {"name": cfg.harmless, "ids": safe_ids},
        },
        "refusal_score": {**tokens, "calibration": calib.to_dict()},
        "baseline": {
            "harmful": asdict(base_h),
            "harmless": asdict(base_s),
            "examples": [
                {"prompt_id": i, "completion": c}
                for i, c in zip(
                    harm_ids[:3] + safe_ids[:3],
                    base["harmful"]["completions"][:3] + base["harmless"]["completions"][:3],
                    strict=False,
                )
            ],
        },
        "paper": paper,
        "rankers": {k: r.to_dict(limit=50) for k, r in rankings.items()},
        "screen": {
            "pool": pool,
            "pool_ranks": {str(f): v for f, v in ranks.items()},
            "clamp": mapping,
            "fast_path": fast,
            "cheap": [asdict(c) for c in cheap],
            "generation": [g.to_dict() for g in gens],
        },
        "chosen": chosen.to_dict() if chosen else None,
        "ranker_comparison": comparison,
        "control": control.to_dict() if control is not None else None,
        "features": {str(c.feature): c.to_dict() for c in cards},
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
