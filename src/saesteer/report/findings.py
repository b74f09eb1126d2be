"""The report's findings: short claims, each computed from its interval and stated only as far as it goes.

A difference whose 95% interval excludes 0 is stated with its interval. One whose interval includes 0 is
"not detectable at n=..." with the minimum detectable effect of a paired design at that n (McNemar's test,
80% power, two-sided 5%; Connor 1987) where the outcomes are 0/1. A capability benchmark whose baseline
interval includes chance (MMLU 25%) cannot show a loss and says so. The paper is quoted beside a claim,
never as a verdict the intervals do not support.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from saesteer.evaluation import paired
from saesteer.report.derived import GOAL_GAIN_KEPT, GOAL_OVER_REFUSAL, Derived, Estimate, paired_items
from saesteer.report.results import METRIC_LABELS, ResultsTable

#: chance accuracy of the capability benchmarks (0 where guessing cannot score)
CHANCE = {"mmlu": 0.25, "truthfulqa_mc1": 0.0, "truthfulqa_mc2": 0.0, "gsm8k": 0.0, "humaneval": 0.0}


@dataclass(frozen=True)
class PaperNumbers:
    """The paper's numbers: O'Brien et al. 2024, Phi-3 Mini, refusal feature clamped (percent, baseline -> steered)."""

    model: str = "Phi-3 Mini"
    unsafe_refusal: tuple[float, float] = (62.0, 100.0)
    over_refusal: float = 3.4  # safe-prompt refusal, steered / baseline
    mmlu: tuple[float, float] = (68.8, 36.0)
    gsm8k: tuple[float, float] = (82.5, 35.6)
    truthfulqa: tuple[float, float] = (65.0, 53.8)
    multiturn_asr: tuple[float, float] = (55.9, 32.6)  # Crescendo attack success
    control: str = "a control feature clamped the same way also degrades the benchmarks"


PAPER = PaperNumbers()


@dataclass(frozen=True)
class Headline:
    """The conditions the report headlines, chosen on dev data (``dev=False``: taken in grid order instead)."""

    clamp: str | None
    gate: str | None
    dev: bool = True
    control_note: str | None = None  # set when the control is an unverified stand-in: how far it moved refusal


def fmt_num(v: float, digits: int = 1) -> str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


def fmt_pts(e: Estimate | None, signed: bool = True) -> str:
    """``+38.0 pts [30.1, 45.2]`` (fractions shown as percentage points)."""
    if e is None:
        return "n/a"
    v = 100 * e.value
    head = f"{v:+.1f}" if signed and math.isfinite(v) else fmt_num(v)
    return f"{head} pts [{fmt_num(100 * e.lo)}, {fmt_num(100 * e.hi)}]"


def fmt_ratio(e: Estimate | None) -> str:
    """``x3.40 [2.10, 5.60]``."""
    if e is None:
        return "n/a"
    return f"x{fmt_num(e.value, 2)} [{fmt_num(e.lo, 2)}, {fmt_num(e.hi, 2)}]"


def fmt_share(e: Estimate | None) -> str:
    """``93% [81, 104]`` (a fraction as percent)."""
    if e is None:
        return "n/a"
    return f"{fmt_num(100 * e.value, 0)}% [{fmt_num(100 * e.lo, 0)}, {fmt_num(100 * e.hi, 0)}]"


def default_headline(derived: Sequence[Derived]) -> Headline:
    """The first refusal clamp and the first gated clamp in grid order (when no dev choice is known)."""
    clamp = next((d.condition for d in derived if d.kind == "refusal_feature"), None)
    gate = next((d.condition for d in derived if d.kind == "conditional"), None)
    return Headline(clamp, gate, dev=False)


def mde(table: ResultsTable, metric: str, a: str, b: str) -> float | None:
    """Minimum detectable paired difference of 0/1 outcomes at the measured n and discordant share."""
    got = paired_items(table, metric, a, b)
    if got is None or not all(v in (0.0, 1.0) for v in got[0] + got[1]):
        return None
    x, y = [v == 1.0 for v in got[0]], [v == 1.0 for v in got[1]]
    return paired.mde_paired(len(x), paired.discordant_share(x, y))


def claim(label: str, e: Estimate | None, table: ResultsTable, metric: str, cond: str) -> str:
    """``label: +12.0 pts [4.1, 19.9] (n=210)`` or ``label: not detectable at n=210 (...; minimum detectable ...)``."""
    if e is None:
        return f"{label}: not measured"
    body = f"{fmt_pts(e)} (n={e.n})"
    if e.excludes_zero:
        return f"{label}: {body}"
    m = mde(table, metric, "baseline", cond)
    tail = ""
    if m is not None:
        tail = (f"; minimum detectable effect {100 * m:.1f} pts" if math.isfinite(m)
                else "; too few discordant pairs for any effect to be detectable at this n")  # fmt: skip
    return f"{label}: not detectable at n={e.n} ({body}{tail})"


def capability_claims(table: ResultsTable, d: Derived) -> list[str]:
    """One clause per benchmark: its loss, or why no loss can be measured on it."""
    out = []
    for metric, loss in d.capability_losses.items():
        label = METRIC_LABELS.get(metric, metric)
        base = table.get("baseline", metric)
        chance = CHANCE.get(metric, 0.0)
        if base is not None and chance > 0 and base.ci_lo <= chance:
            out.append(
                f"{label}: the baseline {100 * base.score:.1f}% [{100 * base.ci_lo:.1f}, {100 * base.ci_hi:.1f}] "
                f"includes chance ({100 * chance:.0f}%), so no loss is detectable at n={base.n}"
            )
        else:
            out.append(claim(f"{label} loss", loss, table, metric, d.condition))
    return out


def _by_name(derived: Sequence[Derived]) -> Mapping[str, Derived]:
    return {d.condition: d for d in derived}


def _clamp(table: ResultsTable, derived: Sequence[Derived], h: Headline) -> list[str]:
    d = _by_name(derived).get(h.clamp or "")
    if d is None:
        return ["No refusal-feature clamp was measured."]
    how = "chosen on dev prompts" if h.dev else "first in the grid (no dev choice recorded)"
    out = [
        f"Headline condition: {d.condition} ({how}). "
        + claim("Unsafe-refusal gain", d.safety_gain, table, "unsafe_refusal", d.condition)
        + ".",  # fmt: skip
        claim("Safe-prompt over-refusal", d.over_refusal_diff, table, "safe_refusal", d.condition)
        + f"; ratio {fmt_ratio(d.over_refusal)} (paper: x{PAPER.over_refusal}).",
    ]
    caps = capability_claims(table, d)
    if caps:
        out.append("Capability under this clamp: " + "; ".join(caps) + ".")
    return out


def _control(table: ResultsTable, derived: Sequence[Derived], h: Headline) -> list[str]:
    out = []
    for d in (d for d in derived if d.kind == "control"):
        parts = [claim("unsafe-refusal change", d.safety_gain, table, "unsafe_refusal", d.condition)]
        parts += capability_claims(table, d)
        note = f" Not verified neutral: {h.control_note}." if h.control_note else ""
        out.append(f"Control {d.condition}: " + "; ".join(parts) + f". (Paper: {PAPER.control}.){note}")
    if not out:  # the paper's control comparison can't be made; say so rather than stay silent
        out.append(f"No control feature was measured, so the paper's control comparison ({PAPER.control}) is not "
                   "made here; the setup's feature table says why.")  # fmt: skip
    return out


def _gate(table: ResultsTable, derived: Sequence[Derived], h: Headline) -> list[str]:
    d = _by_name(derived).get(h.gate or "")
    if d is None:
        return []
    goal = f"goal: keep >= {GOAL_GAIN_KEPT:.0%} of the gain with over-refusal <= x{GOAL_OVER_REFUSAL}"
    kept = d.gain_kept
    verdict = ""
    if kept is not None and d.over_refusal is not None and math.isfinite(kept.lo):
        if kept.lo >= GOAL_GAIN_KEPT and d.over_refusal.hi <= GOAL_OVER_REFUSAL:
            verdict = " The goal is met with both intervals inside it."
        elif kept.hi < GOAL_GAIN_KEPT or d.over_refusal.lo > GOAL_OVER_REFUSAL:
            verdict = " The goal is missed: an interval lies wholly outside it."
        else:
            verdict = " Whether the goal is met is not resolved at this n (an interval straddles its bound)."
    return [
        f"Conditional steering, {d.condition} ({goal}): kept {fmt_share(kept)} of the clamp's gain; "
        + claim("unsafe-refusal gain", d.safety_gain, table, "unsafe_refusal", d.condition)
        + "; "
        + claim("over-refusal", d.over_refusal_diff, table, "safe_refusal", d.condition)
        + "."
        + verdict
    ]


def _direction(table: ResultsTable, derived: Sequence[Derived]) -> list[str]:
    return [
        f"Direction baseline {d.condition}: "
        + claim("unsafe-refusal gain", d.safety_gain, table, "unsafe_refusal", d.condition)
        + "; "
        + claim("over-refusal", d.over_refusal_diff, table, "safe_refusal", d.condition)
        + "".join("; " + c for c in capability_claims(table, d))
        + "."
        for d in derived
        if d.kind == "direction"
    ]


def _multiturn(table: ResultsTable, derived: Sequence[Derived], h: Headline) -> list[str]:
    """Per attack: the baseline's success rate and its drop under the headline clamp, gate and direction."""
    by = _by_name(derived)
    shown = [by[c] for c in (h.clamp, h.gate) if c is not None and c in by] + [
        d for d in derived if d.kind == "direction"
    ]
    out = []
    for metric in dict.fromkeys(m for d in shown for m in d.asr_drops):
        base = table.get("baseline", metric)
        if base is None:
            continue
        drops = [claim(f"drop under {d.condition}", d.asr_drops[metric], table, metric, d.condition)
                 for d in shown if metric in d.asr_drops]  # fmt: skip
        label = METRIC_LABELS.get(metric, metric)
        out.append(f"{label}: baseline {100 * base.score:.1f}% (n={base.n}); " + "; ".join(drops) + ".")
    return out


def _seeds(seeds: Mapping[str, object] | None, d: Derived | None) -> list[str]:
    """The seed spread of the headline gain and over-refusal, whether the effects hold in every seed, and whether
    the spread is wider than the gain's own interval (then the gain is quoted with its spread)."""
    if not seeds or not isinstance(seeds.get("gain"), Mapping):
        return []
    g, o = seeds["gain"], seeds.get("over_refusal")
    assert isinstance(g, Mapping)
    same = "the same feature (or a decoder-cosine match) every time" if seeds.get("all_match") else (
        "different features across seeds")  # fmt: skip
    spread = g["max"] - g["min"]
    text = (
        f"Across {g['n_seeds']} SAE seeds the headline clamp's gain ranged {100 * g['min']:+.1f} to "
        f"{100 * g['max']:+.1f} pts (sd {100 * g['sd']:.1f})"
    )
    if isinstance(o, Mapping):
        text += f" and its over-refusal x{o['min']:.2f} to x{o['max']:.2f}"
    text += f"; discovery chose {same}."
    held = [what for key, what in (("gain_positive_every_seed", "raised unsafe refusal"),
                                   ("over_refusal_every_seed", "raised safe-prompt refusal")) if seeds.get(key)]  # fmt: skip
    if held:
        text += f" In every seed the clamp {' and '.join(held)} (each seed's paired interval excludes no effect)."
    if d is not None and d.safety_gain is not None:
        outside = g["min"] < d.safety_gain.lo or g["max"] > d.safety_gain.hi
        if spread > d.safety_gain.width or outside:
            text += (f" The seeds' gains fall outside the headline's interval [{100 * d.safety_gain.lo:.1f}, "
                     f"{100 * d.safety_gain.hi:.1f}]: the gain is {100 * g['min']:+.1f} to {100 * g['max']:+.1f} pts "
                     "across seeds, not the headline's estimate alone.")  # fmt: skip
    return [text]


def findings(
    table: ResultsTable,
    derived: Sequence[Derived],
    headline: Headline | None = None,
    seeds: Mapping[str, object] | None = None,
) -> list[str]:
    """The findings, as short claims: headline clamp, control, gate, direction, multi-turn, seed spread."""
    h = headline or default_headline(derived)
    return [
        *_clamp(table, derived, h),
        *_control(table, derived, h),
        *_gate(table, derived, h),
        *_direction(table, derived),
        *_multiturn(table, derived, h),
        *_seeds(seeds, _by_name(derived).get(h.clamp or "")),
    ]
