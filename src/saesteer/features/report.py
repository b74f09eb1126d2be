"""The discovery's outputs: ``features.json`` (machine-readable) and a Markdown + HTML summary.

``features.json`` (format ``saesteer.features.v1``) holds: ``config``, ``seed``, ``model``, ``sae``,
``data`` (prompt ids), ``refusal_score`` (tokens, calibration against the judge), ``baseline``,
``paper`` (archetype responses and candidates), ``rankers`` (top lists), ``screen`` (pool, clamp
mapping, ``cheap`` and ``generation`` results), ``chosen``, ``ranker_comparison``, ``control``,
``features`` (feature cards), ``status`` (``ok`` or ``no_candidate_passed``) and ``timings``.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json, atomic_write_text, config_to_dict
from saesteer.features.contexts import FeatureStats
from saesteer.features.interpret import HTML_HEAD, FeatureCard
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


# --- summary rendering -------------------------------------------------------------------------------------------

Block = tuple[Any, ...]


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _rate(r: dict[str, Any]) -> str:
    return f"{r['k']}/{r['n']} = {_pct(r['rate'])} [{_pct(r['lo'])}, {_pct(r['hi'])}]"


def _diff(d: dict[str, Any]) -> str:
    return f"{d['d']:+.1%} [{d['lo']:+.1%}, {d['hi']:+.1%}]"


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def summary_blocks(rep: dict[str, Any]) -> list[Block]:
    """The summary as blocks: ("h", text), ("p", text), ("table", headers, rows)."""
    cal = rep["refusal_score"]["calibration"]
    b: list[Block] = [
        ("h", "Refusal feature discovery"),
        (
            "p",
            f"model {rep['model'] or '-'}; SAE {rep['sae']['path'] or '-'} ({rep['sae']['architecture']}, "
            f"{rep['sae']['d_sae']} features, {rep['sae']['hook']}); seed {rep['seed']}; status "
            f"**{rep['status']}**",
        ),
        ("h", "Baseline (greedy, judged)"),
        (
            "table",
            ["set", "refused"],
            [
                [rep["data"]["harmful"]["name"], _rate(rep["baseline"]["harmful"])],
                [rep["data"]["harmless"]["name"], _rate(rep["baseline"]["harmless"])],
            ],
        ),
        (
            "p",
            f"cheap refusal score ({rep['refusal_score']['mode']}) vs judge: AUROC {_num(cal['auroc'])}, "
            f"agreement {_pct(cal['agreement'])} at threshold {_num(cal['threshold'])} (n={cal['n']})",
        ),
    ]
    ch = rep["chosen"]
    b.append(("h", "Chosen feature"))
    if ch:
        b.append(
            (
                "p",
                f"feature **{ch['feature']}** clamped to {ch['value']:.3f}: harmful {_rate(ch['harmful'])} "
                f"(gain {_diff(ch['gain'])}), harmless {_rate(ch['harmless'])} (over-refusal "
                f"{_diff(ch['over_refusal'])}); gain interval excludes 0: {ch['significant']}",
            )
        )
    else:
        b.append(("p", "none passed the screen (see the generation screen below)"))
    ctl = rep["control"]
    b.append(("h", "Control feature"))
    b.append(
        (
            "p",
            f"feature **{ctl['feature']}**: {ctl['reason']} (freq {_num(ctl['freq'], '{:.2e}')} vs "
            f"{ctl['target_freq']:.2e}, mean act {_num(ctl['mean_act'])} vs {ctl['target_mean_act']:.3f})"
            if ctl and ctl["feature"] is not None
            else f"none: {ctl['reason'] if ctl else '-'}",
        )
    )
    g_rows = [
        [
            g["feature"],
            f"{g['value']:.3f}",
            _rate(g["harmful"]),
            _rate(g["harmless"]),
            _diff(g["gain"]),
            _diff(g["over_refusal"]),
            f"{g['objective']:+.3f}",
            "yes" if g["passes"] else "no",
        ]
        for g in rep["screen"]["generation"]
    ]
    b += [
        ("h", "Generation screen"),
        (
            "table",
            ["feature", "clamp", "harmful refused", "harmless refused", "gain", "over-refusal", "objective", "passes"],
            g_rows,
        ),
    ]
    names = list(rep["rankers"])
    c_rows = [
        [
            c["feature"],
            f"{c['value']:.3f}",
            *[_num(rep["screen"]["pool_ranks"][str(c["feature"])].get(n), "{}") for n in names],
            f"{c['d_harmful_score']:+.3f}",
            f"{c['d_harmless_score']:+.3f}",
            _pct(c["harmful_pred"]),
            _pct(c["harmless_pred"]),
            f"{c['objective']:+.3f}",
        ]
        for c in rep["screen"]["cheap"]
    ]
    b += [
        ("h", "Cheap screen (one forward per prompt)"),
        (
            "table",
            [
                "feature",
                "clamp",
                *[f"rank: {n}" for n in names],
                "d score harmful",
                "d score harmless",
                "pred. harmful",
                "pred. harmless",
                "objective",
            ],
            c_rows,
        ),
    ]
    comp = rep["ranker_comparison"]
    r_rows = [
        [
            n,
            _num(v["rank_of_chosen"], "{}"),
            _num(v["rank_of_best_cheap"], "{}"),
            f"{v['top_n_positive']}/{v['top_n_screened']}",
            _num(v["best_objective_in_top_n"], "{:+.3f}"),
        ]
        for n, v in comp["by_ranker"].items()
    ]
    b += [
        ("h", "Rankers compared"),
        (
            "p",
            f"fewest causal screens to the {'chosen' if rep['chosen'] else 'best cheap'} feature: "
            f"{', '.join(comp['winners']) or '-'} (rank {comp['best_rank']})",
        ),
        (
            "table",
            ["ranker", "rank of chosen", "rank of best cheap", "positive in top N", "best objective in top N"],
            r_rows,
        ),
    ]
    m = rep["screen"]["clamp"]
    pv = m["paper_values"]
    b += [
        ("h", "Clamp units"),
        (
            "p",
            f"mode {m['mode']} (multiple {m['multiple']}); chosen/reference feature {m['chosen']['feature']}: max "
            f"{m['chosen']['ref_max']:.3f}, mean {m['chosen']['ref_mean']:.3f}; median residual norm "
            f"{m['median_resid_norm']:.2f}. The paper's 10 / 12 = {_num(pv['10']['x_chosen_max'], '{:.2f}')} / "
            f"{_num(pv['12']['x_chosen_max'], '{:.2f}')} x this feature's max, "
            f"{_num(pv['10']['fraction_of_resid_norm'], '{:.2f}')} / "
            f"{_num(pv['12']['fraction_of_resid_norm'], '{:.2f}')} x the residual norm.",
        ),
    ]
    a_rows = [
        [r["prompt"], r["response"][:160], "yes" if r["refused"] else "no", "yes" if r["used"] else "no"]
        for r in rep["paper"]["responses"]
    ]
    b += [
        ("h", "Archetypal prompts (paper's procedure)"),
        ("table", ["prompt", "response", "refused", "used"], a_rows),
        (
            "p",
            f"{rep['paper']['n_candidates']} candidates active on >= {rep['paper']['min_tokens']} of "
            f"{rep['paper']['n_refusal_tokens']} refusal tokens",
        ),
    ]
    return b


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(rep: dict[str, Any], cards: Sequence[FeatureCard]) -> str:
    out: list[str] = []
    for blk in summary_blocks(rep):
        if blk[0] == "h":
            out += [f"{'#' if not out else '##'} {blk[1]}", ""]
        elif blk[0] == "p":
            out += [blk[1], ""]
        else:
            out += ["| " + " | ".join(blk[1]) + " |", "|" + "---|" * len(blk[1])]
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in blk[2]] + [""]
    out += ["## Feature cards", ""] + [c.to_markdown() for c in cards]
    return "\n".join(out) + "\n"


def render_html(rep: dict[str, Any], cards: Sequence[FeatureCard]) -> str:
    out = [HTML_HEAD.format(title="saesteer: refusal features")]
    first = True
    for blk in summary_blocks(rep):
        if blk[0] == "h":
            out.append(f"<h{1 if first else 2}>{html.escape(blk[1])}</h{1 if first else 2}>")
            first = False
        elif blk[0] == "p":
            text = html.escape(blk[1])
            parts = text.split("**")
            out.append("<p>" + "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts)) + "</p>")
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in blk[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in blk[2])
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
    out.append("<h2>Feature cards</h2>")
    out += [c.to_html() for c in cards]
    return "".join(out) + "</body></html>\n"


def write_outputs(out: str | Path, report: dict[str, Any], cards: Sequence[FeatureCard]) -> None:
    """Write features.json, features.md and features.html into ``out`` atomically."""
    p = Path(out)
    atomic_write_json(p / "features.json", report)
    atomic_write_text(p / "features.md", render_markdown(report, cards))
    atomic_write_text(p / "features.html", render_html(report, cards))
