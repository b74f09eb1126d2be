"""The experiment design of the study: which steering conditions it measures, as plain data.

:func:`build_grid` turns the found features and a :class:`SweepConfig` into a list of
:class:`Condition`: the unsteered baseline, each refusal feature clamped at each value, each
control feature clamped at each value, the refusal clamps behind a gate (conditional steering),
and the difference-in-means direction added at each coefficient. A condition's interventions and
gate are plain dicts (JSON-friendly, hashable into a cache key); the caller turns them into
steering objects:

* ``{"op": "clamp", "feature": F, "value": V}`` -> ``ClampFeature(F, V)``
* ``{"op": "add_direction", "coeff": C}`` -> ``RefusalDirection.add(C)``
* gate ``{"type": "feature", "feature": F, "threshold": T | None, "fpr": 0.05, "reduce": "last", "tail": 5}``
  or ``{"type": "direction", ...}``; ``threshold: None`` means calibrate it on harmless dev prompts at ``fpr``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json, opt
from saesteer.errors import SaesteerError
from saesteer.report.results import KINDS, ResultRow

GATE_TYPES = ("feature", "direction", "probe", "fitted")
CLAMP_UNITS = ("absolute", "max")
GRID_FORMAT = "saesteer.sweep_grid.v1"
# the source a scored condition depends on (stage cache keys): not the report, the app or the CLI, so a change
# in how results are presented never reruns an hour of generation
SCORING_CODE = (
    "model", "sae", "steering", "gating", "evaluation", "stages", "report/results",
    "study/config", "study/design", "study/prompts", "study/sweep_eval", "study/sweep_stage", "study/dev_stages",
)  # fmt: skip


@dataclass
class SweepConfig:
    """The sweep grid: which steering conditions the study measures."""

    clamp_values: list[float] = opt(
        [4.0, 8.0], "values the refusal features are clamped to (SAE activation units, or see --clamp-units)"
    )
    control_values: list[float] = opt([], "values the control features are clamped to (empty: the clamp values)")
    clamp_units: str = opt(
        "absolute",
        "absolute: values are SAE activations; max: multiples of each feature's max activation on the harvest",
    )
    conditional: bool = opt(True, "also run the refusal-feature clamps behind a gate (conditional steering)")
    conditional_values: list[float] = opt([], "clamp values run behind the gate (empty: all clamp values)")
    gate: str = opt(
        "direction",
        "gate of conditional steering: direction (projection on the difference-in-means direction), "
        "feature (an SAE latent; see --gate-feature), probe (a linear harm probe the caller fits) or fitted (the "
        "best of saesteer.gating's variants, with its own dev threshold); several comma-separated run side by "
        "side, each optionally with its reduction, e.g. probe:mean,direction:last",
    )
    gate_feature: int | None = opt(None, "SAE latent read by a feature gate (default: the first refusal feature)")
    gate_threshold: float | None = opt(None, "gate threshold (default: calibrated on harmless dev prompts)")
    gate_fpr: float = opt(0.05, "target false-positive rate on harmless dev prompts when calibrating the gate")
    gate_reduce: str = opt("last", "gate score per prompt: last token, mean over tokens, or tail")
    gate_tail: int = opt(5, "tokens averaged by --gate-reduce tail")
    direction_coeffs: list[float] = opt(
        [1.0], "coefficients of the difference-in-means baseline, x + C * r (empty: no direction baseline)"
    )


@dataclass(frozen=True)
class Condition:
    """One steering condition of the sweep, as plain data."""

    name: str
    kind: str
    interventions: tuple[dict[str, Any], ...] = ()
    gate: dict[str, Any] | None = None
    feature: int | None = None
    value: float | None = None
    unconditional: str | None = None  # for a conditional condition: the name of the same edit without the gate
    label: str = ""  # the value as the user gave it, e.g. "2x max"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SaesteerError(f"condition {self.name!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if (self.kind == "conditional") != (self.gate is not None):
            raise SaesteerError(f"condition {self.name!r}: a gate belongs to conditional conditions only")
        if (self.kind == "baseline") != (not self.interventions):
            raise SaesteerError(f"condition {self.name!r}: only the baseline has no interventions")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "interventions": [dict(i) for i in self.interventions],
            "gate": dict(self.gate) if self.gate is not None else None,
            "feature": self.feature,
            "value": self.value,
            "unconditional": self.unconditional,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition:
        try:
            return cls(
                name=str(d["name"]),
                kind=str(d["kind"]),
                interventions=tuple(dict(i) for i in d.get("interventions") or ()),
                gate=dict(d["gate"]) if d.get("gate") is not None else None,
                feature=None if d.get("feature") is None else int(d["feature"]),
                value=None if d.get("value") is None else float(d["value"]),
                unconditional=d.get("unconditional"),
                label=str(d.get("label") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SaesteerError(f"malformed condition {dict(d)!r} ({exc}); regenerate the sweep grid") from None

    @property
    def key(self) -> str:
        """A stable hash of what the condition does (not its name): a cache key for its results."""
        spec = {"interventions": [dict(i) for i in self.interventions], "gate": self.gate}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def row(
        self,
        metric: str,
        *,
        n: int,
        score: float,
        ci_lo: float,
        ci_hi: float,
        k: int | None = None,
        datasets: Sequence[str] = (),
        interval: str = "wilson",
        seconds: float = 0.0,
    ) -> ResultRow:
        """A result row of this condition."""
        return ResultRow(
            self.name, self.kind, metric, n=n, score=score, ci_lo=ci_lo, ci_hi=ci_hi, feature=self.feature,
            value=self.value, datasets=tuple(datasets), k=k, interval=interval, seconds=seconds,
        )  # fmt: skip

    def rate_row(self, metric: str, k: int, n: int, datasets: Sequence[str] = (), seconds: float = 0.0) -> ResultRow:
        """A rate ``k / n`` of this condition with its Wilson 95% interval."""
        return ResultRow.from_rate(
            self.name, self.kind, metric, k, n, feature=self.feature, value=self.value, datasets=tuple(datasets),
            seconds=seconds,
        )  # fmt: skip


BASELINE = Condition("baseline", "baseline")


def _num(v: float) -> str:
    return f"{v:g}"


def _check_values(name: str, values: Sequence[float]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise SaesteerError(f"sweep {name}: {v!r} is not a finite number")
        out.append(float(v))
    if len(set(out)) != len(out):
        raise SaesteerError(f"sweep {name}: repeated values {out}; list each value once")
    return out


def _check_features(name: str, features: Sequence[int]) -> list[int]:
    out = []
    for f in features:
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise SaesteerError(f"sweep {name}: {f!r} is not a feature index (an int >= 0)")
        out.append(f)
    if len(set(out)) != len(out):
        raise SaesteerError(f"sweep {name}: repeated features {out}; list each feature once")
    return out


def _resolve(cfg: SweepConfig, feature: int, mult: float, feature_max: Mapping[int, float] | None) -> tuple[float, str]:
    """(absolute clamp value, label as given)."""
    if cfg.clamp_units == "absolute":
        return mult, _num(mult)
    if feature_max is None or feature not in feature_max:
        raise SaesteerError(
            f"clamp_units=max needs feature {feature}'s max activation; pass feature_max from the feature stats "
            "or use clamp_units=absolute"
        )
    top = float(feature_max[feature])
    if not math.isfinite(top) or top <= 0:
        raise SaesteerError(f"feature {feature} has max activation {top}; it never fires, so pick another feature")
    return mult * top, f"{_num(mult)}x max"


def _clamp_name(prefix: str, feature: int, value: float, label: str, units: str) -> str:
    name = f"{prefix} f={feature} c={value:.4g}"
    return f"{name} ({label})" if units == "max" else name


def gate_types(cfg: SweepConfig) -> list[str]:
    """The gates of the conditional conditions: ``cfg.gate`` is one type or several, comma-separated."""
    types = [g.strip() for g in cfg.gate.split(",") if g.strip()]
    bad = [g for g in types if g.partition(":")[0] not in GATE_TYPES]
    if bad or not types:
        raise SaesteerError(
            f"unknown gate {cfg.gate!r}; use one of {', '.join(GATE_TYPES)} (or several, comma-separated)"
        )
    if len(set(types)) != len(types):
        raise SaesteerError(f"gate {cfg.gate!r} names a gate twice; list each once")
    return types


def gate_spec(cfg: SweepConfig, refusal_features: Sequence[int], gate: str | None = None) -> dict[str, Any]:
    """The gate of the conditional conditions (``gate``: one of :func:`gate_types`), as plain data."""
    gate, _, reduce = (gate or gate_types(cfg)[0]).partition(":")
    reduce = reduce or cfg.gate_reduce
    if gate not in GATE_TYPES:
        raise SaesteerError(f"unknown gate {gate!r}; use one of {', '.join(GATE_TYPES)}")
    if not 0.0 <= cfg.gate_fpr < 1.0:
        raise SaesteerError(f"gate_fpr {cfg.gate_fpr} must lie in [0, 1), e.g. 0.05")
    if cfg.gate_threshold is not None and not math.isfinite(cfg.gate_threshold):
        raise SaesteerError(f"gate_threshold {cfg.gate_threshold} must be a finite number (or unset to calibrate)")
    if reduce not in ("last", "mean", "tail") or cfg.gate_tail < 1:
        raise SaesteerError(
            f"gate reduction {reduce!r} / gate_tail {cfg.gate_tail}: use last, mean or tail, and a tail >= 1"
        )
    spec: dict[str, Any] = {"type": gate}
    if gate == "feature":
        feat = cfg.gate_feature if cfg.gate_feature is not None else (refusal_features[0] if refusal_features else None)
        if feat is None:
            raise SaesteerError("a feature gate needs gate_feature or at least one refusal feature")
        spec["feature"] = _check_features("gate_feature", [feat])[0]
    spec.update(threshold=cfg.gate_threshold, fpr=cfg.gate_fpr, reduce=reduce, tail=cfg.gate_tail)
    return spec


def build_grid(
    cfg: SweepConfig,
    refusal_features: Sequence[int],
    control_features: Sequence[int] = (),
    feature_max: Mapping[int, float] | None = None,
    direction: bool = True,
) -> list[Condition]:
    """The sweep's conditions in report order: baseline, refusal clamps, control clamps, conditional, direction.

    ``feature_max`` (feature -> max activation) is needed with ``clamp_units="max"``; ``direction=False``
    drops the difference-in-means baseline (no direction was computed).
    """
    if cfg.clamp_units not in CLAMP_UNITS:
        raise SaesteerError(f"unknown clamp_units {cfg.clamp_units!r}; use one of {', '.join(CLAMP_UNITS)}")
    refusal = _check_features("refusal features", refusal_features)
    control = _check_features("control features", control_features)
    if not refusal:
        raise SaesteerError("the sweep needs at least one refusal feature; run the feature search or pass one")
    both = sorted(set(refusal) & set(control))
    if both:
        raise SaesteerError(f"features {both} are both refusal and control features; a control must differ")
    values = _check_values("clamp_values", cfg.clamp_values)
    if not values:
        raise SaesteerError("sweep clamp_values is empty; give at least one value, e.g. 8")
    control_values = _check_values("control_values", cfg.control_values) or values
    cond_values = _check_values("conditional_values", cfg.conditional_values) or values
    unknown = sorted(set(cond_values) - set(values))
    if unknown:
        raise SaesteerError(f"conditional_values {unknown} are not among clamp_values {values}; add them there")

    grid = [BASELINE]
    clamp_names: dict[tuple[int, float], str] = {}
    for f in refusal:
        for v in values:
            val, label = _resolve(cfg, f, v, feature_max)
            name = _clamp_name("clamp", f, val, label, cfg.clamp_units)
            clamp_names[(f, v)] = name
            iv = ({"op": "clamp", "feature": f, "value": val},)
            grid.append(Condition(name, "refusal_feature", iv, feature=f, value=val, label=label))
    for f in control:
        for v in control_values:
            val, label = _resolve(cfg, f, v, feature_max)
            name = _clamp_name("control", f, val, label, cfg.clamp_units)
            iv = ({"op": "clamp", "feature": f, "value": val},)
            grid.append(Condition(name, "control", iv, feature=f, value=val, label=label))
    if cfg.conditional:
        types = gate_types(cfg)
        for gate_type in types:
            gate = gate_spec(cfg, refusal, gate_type)
            suffix = f" [{gate_type.partition(':')[0]} gate]" if len(types) > 1 else ""
            for f in refusal:
                for v in cond_values:
                    val, label = _resolve(cfg, f, v, feature_max)
                    twin = clamp_names[(f, v)]
                    iv = ({"op": "clamp", "feature": f, "value": val},)
                    grid.append(
                        Condition(
                            f"conditional {twin}{suffix}",
                            "conditional",
                            iv,
                            gate=dict(gate),
                            feature=f,
                            value=val,
                            unconditional=twin,
                            label=label,
                        )  # fmt: skip
                    )
    if direction:
        for c in _check_values("direction_coeffs", cfg.direction_coeffs):
            iv = ({"op": "add_direction", "coeff": c},)
            grid.append(Condition(f"diff-in-means add {_num(c)}", "direction", iv, value=c, label=_num(c)))
    names = [c.name for c in grid]
    if len(set(names)) != len(names):  # only reachable with clamp_units=max and two values that resolve equal
        raise SaesteerError("two sweep conditions got the same name; use distinct clamp values")
    return grid


def save_grid(path: str | os.PathLike[str], conditions: Sequence[Condition]) -> None:
    """Write the grid as JSON (atomically), so a report can be rebuilt from files."""
    atomic_write_json(path, {"format": GRID_FORMAT, "conditions": [c.to_dict() for c in conditions]})


def load_grid(path: str | os.PathLike[str]) -> list[Condition]:
    """Read a grid written by :func:`save_grid`."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise SaesteerError(f"sweep grid {p} not found; build it with build_grid and save_grid") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SaesteerError(f"sweep grid {p} is not valid JSON ({exc}); delete it to rebuild") from None
    if not isinstance(data, dict) or data.get("format") != GRID_FORMAT or not isinstance(data.get("conditions"), list):
        raise SaesteerError(f"{p} is not a saesteer sweep grid ({GRID_FORMAT}); delete it to rebuild")
    return [Condition.from_dict(d) for d in data["conditions"]]
