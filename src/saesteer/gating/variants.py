"""Gate variants, the dev data they are fit on, their measured results, and the comparison table.

Variant kinds (each read at a hook and a position rule, see :mod:`saesteer.steering.readout`):

* ``probe``: dense logistic probe, harmful vs hard negatives (XSTest-safe, JBB-benign) + Alpaca;
* ``probe_alpaca``: the same probe fit against Alpaca only (the usual recipe);
* ``latent_probe``: L1 logistic probe on SAE latents (sparse: the features it uses are listed);
* ``harm_direction``: difference in means, harmful minus every harmless prompt (look-alikes included);
* ``refusal_direction``: difference in means, harmful minus Alpaca (Arditi et al.; at ``template_last``);
* ``judge``: the model asked whether the request is harmful (one extra forward; not a steering-hook gate).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.model.adapter import HookPoint
from saesteer.steering.readout import RULES

KINDS = ("probe", "probe_alpaca", "latent_probe", "harm_direction", "refusal_direction", "judge")
ROLES = ("harmful", "hard", "alpaca")


@dataclass(frozen=True)
class GateData:
    """Dev prompts by role: ``harmful``, ``hard`` (safe look-alikes) and ``alpaca``; ``sources`` names the sets."""

    harmful: list[Any]
    hard: list[Any]
    alpaca: list[Any]
    sources: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in ROLES:
            if not getattr(self, role):
                raise SaesteerError(f"gate dev data: no {role} prompts; give at least one per role")

    def role(self, name: str) -> list[Any]:
        return list(getattr(self, name))

    def split(self, fit_fraction: float = 0.5) -> tuple[GateData, GateData]:
        """(fit, calibration) parts: each prompt goes by the sha256 of its text, whatever the order."""
        if not 0.0 < fit_fraction < 1.0:
            raise SaesteerError(f"fit_fraction={fit_fraction} must be between 0 and 1")
        parts: dict[str, tuple[list[Any], list[Any]]] = {}
        for role in ROLES:
            items = self.role(role)
            keys = [int(hashlib.sha256(str(p).encode("utf-8")).hexdigest()[:12], 16) / 16**12 for p in items]
            fit = [p for p, k in zip(items, keys, strict=True) if k < fit_fraction]
            cal = [p for p, k in zip(items, keys, strict=True) if k >= fit_fraction]
            if not fit or not cal:
                raise SaesteerError(
                    f"gate dev data: too few {role} prompts ({len(items)}) to split into fit and calibration"
                )
            parts[role] = (fit, cal)
        fit_d = GateData(parts["harmful"][0], parts["hard"][0], parts["alpaca"][0], self.sources)
        cal_d = GateData(parts["harmful"][1], parts["hard"][1], parts["alpaca"][1], self.sources)
        return fit_d, cal_d

    def provenance(self) -> dict[str, Any]:
        from saesteer.steering.gatefile import prompts_sha256

        return {
            r: {"n": len(self.role(r)), "sets": self.sources.get(r, []), "sha256": prompts_sha256(self.role(r))}
            for r in ROLES
        }


@dataclass(frozen=True)
class VariantSpec:
    """One gate variant: what is fit (``kind``), where it reads (``hook``) and at which position (``rule``)."""

    kind: str
    hook: str = ""
    rule: str = "instruction"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SaesteerError(f"unknown gate variant {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind != "judge":
            if self.rule not in RULES:
                raise SaesteerError(f"unknown position rule {self.rule!r}; use one of {', '.join(RULES)}")
            object.__setattr__(self, "hook", HookPoint.parse(self.hook).name)

    @property
    def name(self) -> str:
        if self.kind == "judge":
            return "judge"
        return f"{self.kind}@{self.hook.split('.')[1]}:{self.rule}"

    @classmethod
    def parse(cls, text: str, default_hook: str) -> VariantSpec:
        """``kind``, ``kind:rule`` or ``kind@layer:rule`` (e.g. ``probe@9:instruction``)."""
        kind, _, rest = text.strip().partition("@")
        kind, _, rule0 = kind.partition(":")
        layer, _, rule = rest.partition(":") if rest else ("", "", rule0)
        hook = default_hook
        if layer:
            hp = HookPoint.parse(default_hook)
            try:
                hook = HookPoint(hp.kind, int(layer)).name
            except ValueError:
                raise SaesteerError(f"gate variant {text!r}: the layer after @ must be a number") from None
        return cls(kind, hook if kind != "judge" else "", rule or "instruction")


def default_specs(
    layers: Sequence[int], hook_kind: str = "resid_post", latent_hook: str | None = None
) -> list[VariantSpec]:
    """The comparison grid: the hard-negative probe at every layer and rule; the harm direction at every layer
    (instruction token); at the deepest layer (the steering layer) the Alpaca-only probe, the refusal direction,
    and, given an SAE's hook, the sparse latent probe; the judge."""
    hooks = [HookPoint(hook_kind, layer).name for layer in layers]
    deep = hooks[-1]
    specs = [VariantSpec("probe", h, r) for h in hooks for r in RULES]
    specs += [VariantSpec("probe_alpaca", deep, r) for r in ("instruction", "template")]
    specs += [VariantSpec("harm_direction", h, "instruction") for h in hooks]
    specs += [VariantSpec("refusal_direction", deep, r) for r in ("template_last", "instruction")]
    if latent_hook is not None:
        specs += [VariantSpec("latent_probe", latent_hook, r) for r in ("instruction", "template")]
    specs.append(VariantSpec("judge"))
    return specs


@dataclass
class VariantResult:
    """A variant's dev measurement at its chosen threshold (counts ``k/n`` per role, on the calibration part)."""

    spec: VariantSpec
    threshold: float
    fired: dict[str, tuple[int, int]]
    auroc_hard: tuple[float, float, float]
    auroc_alpaca: tuple[float, float, float]
    budget_tpr: float
    objective: float
    ms_per_prompt: float
    features: list[int] = field(default_factory=list)
    gate: Any = None  # the fitted saesteer.steering.gate.Gate (None for the judge)
    extra: dict[str, Any] = field(default_factory=dict)

    def rate(self, role: str) -> float:
        k, n = self.fired[role]
        return k / n if n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        from saesteer.evaluation.stats import wilson

        out: dict[str, Any] = {"variant": self.spec.name, "kind": self.spec.kind, "hook": self.spec.hook}
        out.update(rule=self.spec.rule, threshold=self.threshold, objective=self.objective)
        for role, (k, n) in self.fired.items():
            p, lo, hi = wilson(k, n)
            out[f"fire_{role}"] = {"k": k, "n": n, "rate": p, "lo": lo, "hi": hi}
        out.update(auroc_hard=list(self.auroc_hard), auroc_alpaca=list(self.auroc_alpaca))
        out.update(budget_tpr=self.budget_tpr, ms_per_prompt=self.ms_per_prompt, features=self.features, **self.extra)
        return out


TABLE_HEADERS = [
    "variant", "TPR harmful", "FPR look-alikes", "FPR Alpaca", "AUROC harmful vs look-alikes", "TPR within budget",
    "J", "threshold", "ms/prompt",
]  # fmt: skip


def _pct(k: int, n: int) -> str:
    from saesteer.evaluation.stats import wilson

    p, lo, hi = wilson(k, n)
    return f"{100 * p:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] (n={n})"


def variant_table(results: Sequence[VariantResult]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the comparison, best objective first, ready for ``saesteer.report.render``."""
    rows = []
    for r in sorted(results, key=lambda r: -r.objective):
        a, lo, hi = r.auroc_hard
        name = r.spec.name + (f" ({len(r.features)} features)" if r.features else "")
        rows.append([
            name, _pct(*r.fired["harmful"]), _pct(*r.fired["hard"]), _pct(*r.fired["alpaca"]),
            f"{a:.2f} [{lo:.2f}, {hi:.2f}]", f"{100 * r.budget_tpr:.0f}%", f"{r.objective:+.2f}",
            f"{r.threshold:.4g}", f"{r.ms_per_prompt:.2f}",
        ])  # fmt: skip
    return list(TABLE_HEADERS), rows
