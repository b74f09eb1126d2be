"""The discovery's summary as report sections (rendered by :mod:`saesteer.report.render`), and the output files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saesteer.config import atomic_write_text
from saesteer.features.interpret import FeatureCard, cards_html
from saesteer.features.report import FeatureReport

if TYPE_CHECKING:
    from saesteer.report.render import Section

Block = tuple[Any, ...]
TITLE = "Refusal feature discovery"


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _rate(r: dict[str, Any]) -> str:
    return f"{r['k']}/{r['n']} = {_pct(r['rate'])} [{_pct(r['lo'])}, {_pct(r['hi'])}]"


def _diff(d: dict[str, Any]) -> str:
    return f"{d['d']:+.1%} [{d['lo']:+.1%}, {d['hi']:+.1%}]"


def _num(x: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _opt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def control_checks_block(checks: Sequence[dict[str, Any]]) -> Block:
    """The control's neutrality checks as a table (refusal-rate changes, harmful / harmless prompts)."""
    rows = [
        [
            c["feature"],
            f"{c['value']:.3f} ({c['multiple']:.2f} x max)",
            _num(c["cos_direction"], "{:+.3f}"),
            _num(c["cos_chosen"], "{:+.3f}"),
            f"{c['cheap_unsafe_delta']:+.1%} / {c['cheap_safe_delta']:+.1%}",
            f"{_opt_pct(c['gen_unsafe_delta'])} / {_opt_pct(c['gen_safe_delta'])} (n={c['gen_n']})",
            f"+/-{c['band']:.0%}, +/-{c['gen_band']:.0%}",
            "yes" if c["passed"] else "no",
        ]  # fmt: skip
        for c in checks
    ]
    heads = ["feature", "clamp", "cos refusal dir.", "cos chosen", "cheap: harmful / harmless",
             "generation: harmful / harmless", "bands", "passed"]  # fmt: skip
    return ("table", heads, rows)


def summary_blocks(rep: dict[str, Any]) -> list[Block]:
    """The summary as blocks: ("h", text) starts a section, then ("p", text) and ("table", headers, rows)."""
    cal = rep["refusal_score"]["calibration"]
    b: list[Block] = [
        ("h", "Setup"),
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
    if rep["control_checks"]:
        b.append(("p", f"checks in order (cheap score: {rep['control_checks'][0]['cheap_measure']}):"))
        b.append(control_checks_block(rep["control_checks"]))
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
            (f"every clamp = {m['absolute']}" if m["absolute"] is not None else f"clamp = {m['multiple']} x max")
            + f" (SAE units; max over {m['reference_tokens']} reference tokens); chosen/reference feature "
            f"{m['chosen']['feature']}: max "
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


def summary_sections(rep: dict[str, Any]) -> list[Section]:
    """The summary blocks grouped into sections at each heading."""
    from saesteer.report.render import Section

    sections: list[Section] = []
    for blk in summary_blocks(rep):
        if blk[0] == "h":
            sections.append(Section(blk[1]))
        else:
            sections[-1].blocks.append(blk)
    return sections


def write_outputs(out: str | Path, report: FeatureReport, cards: Sequence[FeatureCard]) -> None:
    """Write features.json, features.md and features.html into ``out`` atomically."""
    from saesteer.report.render import Section, to_markdown

    p = Path(out)
    report.save(p / "features.json")
    sections = [*summary_sections(report.to_json()), Section("Feature cards")]
    atomic_write_text(p / "features.md", to_markdown(TITLE, sections) + "\n" + "".join(c.to_markdown() for c in cards))
    atomic_write_text(p / "features.html", cards_html(cards, TITLE, sections))
