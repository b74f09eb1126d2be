"""The discovery's result, :class:`FeatureReport`, whose JSON form is ``features.json``.

``features.json`` (format ``saesteer.features.v2``) holds: ``config``, ``seed``, ``model``, ``sae``,
``data`` (prompt ids), ``refusal_score`` (tokens, calibration against the judge), ``baseline``,
``paper`` (archetype responses and candidates), ``rankers`` (top lists), ``screen`` (pool, clamp
mapping with per-feature reference max / mean for every screened feature and the control, ``cheap`` and
``generation`` results), ``chosen``, ``ranker_comparison``, ``control``, ``control_checks`` (the
control's neutrality checks), ``features`` (feature cards), ``status`` (``ok`` or
``no_candidate_passed``) and ``timings``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json
from saesteer.errors import SaesteerError
from saesteer.features.contexts import FeatureStats
from saesteer.features.control import ControlCheck, ControlChoice
from saesteer.features.rankers import Ranking
from saesteer.features.screen import CheapResult, GenResult, Rate

FORMAT = "saesteer.features.v2"
READABLE = (FORMAT, "saesteer.features.v1")  # v1: the same without control_checks
PAPER_VALUES = (10.0, 12.0)


@dataclass
class SaeInfo:
    """Which SAE the discovery ran on."""

    path: str
    hook: str
    architecture: str
    d_sae: int
    d_in: int
    k: int | None
    fingerprint: str


@dataclass
class Baseline:
    """Unsteered judged refusal on the dev prompts, with a few example completions."""

    harmful: Rate
    harmless: Rate
    examples: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Screen:
    """The causal screen: the pooled candidates, their clamp values, cheap and generation results."""

    pool: list[int]
    pool_ranks: dict[str, dict[str, int | None]]
    clamp: dict[str, Any]
    fast_path: bool
    cheap: list[CheapResult]
    generation: list[GenResult]


@dataclass
class FeatureReport:
    """Everything ``find_features`` found; :meth:`to_json` is the content of ``features.json``."""

    status: str
    created: str
    config: dict[str, Any]
    seed: int
    model: str
    sae: SaeInfo
    data: dict[str, Any]
    refusal_score: dict[str, Any]
    baseline: Baseline
    paper: dict[str, Any]
    rankers: dict[str, Any]
    screen: Screen
    chosen: GenResult | None
    ranker_comparison: dict[str, Any]
    control: ControlChoice | None
    control_checks: list[ControlCheck]
    cards: dict[str, Any]
    timings: dict[str, float]

    @property
    def chosen_passed(self) -> bool:
        return self.chosen is not None

    @property
    def refusal_feature(self) -> int | None:
        """The feature to steer: the chosen one, else (none passed) the best cheap-screened one."""
        if self.chosen is not None:
            return self.chosen.feature
        return self.screen.cheap[0].feature if self.screen.cheap else None

    @property
    def control_feature(self) -> int | None:
        return self.control.feature if self.control is not None else None

    def ref_max(self, feature: int) -> float | None:
        """The feature's max activation on the reference tokens (the clamp unit), if it was measured."""
        per = self.screen.clamp.get("per_feature", {}).get(str(feature))
        return None if per is None else float(per["ref_max"])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT}
        for f in fields(self):
            out["features" if f.name == "cards" else f.name] = getattr(self, f.name)
        out["screen"] = {**asdict(self.screen), "generation": [g.to_dict() for g in self.screen.generation]}
        out["chosen"] = self.chosen.to_dict() if self.chosen else None
        for key in ("sae", "baseline", "control"):
            out[key] = asdict(out[key]) if out[key] is not None else None
        out["control_checks"] = [c.to_dict() for c in self.control_checks]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeatureReport:
        if d.get("format") not in READABLE:
            raise SaesteerError(f"features.json has format {d.get('format')!r}, not {FORMAT}; rerun find-features")
        s, b = d["screen"], d["baseline"]
        kw: dict[str, Any] = {f.name: d.get("features" if f.name == "cards" else f.name) for f in fields(cls)}
        kw["sae"] = SaeInfo(**d["sae"])
        kw["baseline"] = Baseline(Rate(**b["harmful"]), Rate(**b["harmless"]), list(b.get("examples", [])))
        kw["screen"] = Screen(
            list(s["pool"]), dict(s["pool_ranks"]), dict(s["clamp"]), bool(s["fast_path"]),
            [CheapResult(**c) for c in s["cheap"]], [GenResult.from_dict(g) for g in s["generation"]],
        )  # fmt: skip
        kw["chosen"] = GenResult.from_dict(d["chosen"]) if d["chosen"] else None
        kw["control"] = ControlChoice(**d["control"]) if d["control"] else None
        kw["control_checks"] = [ControlCheck(**c) for c in d.get("control_checks", [])]
        return cls(**kw)

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureReport:
        p = Path(path)
        try:
            return cls.from_json(json.loads(p.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SaesteerError(f"cannot read the feature report {p} ({exc}); rerun find-features") from None


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
