"""``find_features``: the whole refusal-feature discovery, stage by stage, resumable.

1. baseline: cheap refusal scores and greedy generations (judged) on the harmful and harmless dev
   prompts; the score's threshold and AUROC against the judge;
2. the paper's candidates (features on the model's own refusals to archetypal prompts);
3. the other rankers (contrastive, decoder cosine with the diff-in-means direction, attribution);
4. token contexts and feature statistics (corpus windows + chat prompts), which set the clamp values;
5. cheap causal screen of the pooled top features of every ranker; 6. generation screen of the best
   few; then the chosen feature (best objective ``gain - penalty * over_refusal`` among those that pass)
   and how each ranker placed it;
7. the control feature, verified neutral on the dev prompts (:mod:`saesteer.features.control`);
then feature cards and the outputs (``features.json``, ``features.md``, ``features.html``).

Stages 1-7 run through :class:`saesteer.stages.StageRunner` (:mod:`saesteer.features.discovery`), so an
interrupted run resumes where it stopped and a change of config or code reruns what it affects.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from saesteer.config import config_to_dict
from saesteer.errors import SaesteerError
from saesteer.features import discovery as dv
from saesteer.features.config import FindFeaturesConfig, load_texts, resolve_sets
from saesteer.features.contexts import FILE as CONTEXTS_FILE
from saesteer.features.contexts import ContextStore, sae_fingerprint
from saesteer.features.control import ControlCheck, ControlChoice
from saesteer.features.interpret import FeatureCard, describe_feature
from saesteer.features.rankers import Ranking
from saesteer.features.refusal_score import ScoreCalibration, calibrate_score
from saesteer.features.report import Baseline, FeatureReport, SaeInfo, Screen, clamp_mapping, ranker_comparison
from saesteer.features.screen import CheapResult, GenResult, Rate, clamp_values, screen_pool
from saesteer.features.summary import write_outputs
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE
from saesteer.stages import StageRunner, stable_hash

SAFETY_RANKERS = ("paper", "contrastive", "direction_cosine", "attribution")


@dataclass
class FeaturePrompts:
    """Prompt lists given by the caller instead of the config's set names (``str`` or objects with
    ``.text`` and ``.id``, e.g. :class:`saesteer.evaluation.records.Prompt`)."""

    screen_harmful: Sequence[Any]
    screen_harmless: Sequence[Any]
    rank_harmful: Sequence[Any]
    rank_harmless: Sequence[Any]


def _texts_ids(items: Sequence[Any]) -> tuple[list[str], list[str]]:
    texts = [x if isinstance(x, str) else x.text for x in items]
    ids = [stable_hash(x, 12) if isinstance(x, str) else str(x.id) for x in items]
    return texts, ids


def load_prompts(cfg: FindFeaturesConfig, given: FeaturePrompts | None = None) -> dv.Prompts:
    """The run's prompts: ``given``, else the config's sets (rankers' prompts exclude the dev prompts)."""
    if given is not None:
        lists = [given.screen_harmful, given.screen_harmless, given.rank_harmful, given.rank_harmless]
        if not all(lists):
            raise SaesteerError(
                "find_features: every prompt list (screen and rankers, harmful and harmless) needs items"
            )
        (h, hi), (s, si), (rh, _), (rs, _) = (_texts_ids(x) for x in lists)
        return dv.Prompts(h, hi, s, si, rh, rs)
    h, hi = load_texts(cfg.harmful, cfg.n_harmful, cfg.seed, cfg.data_dir)
    s, si = load_texts(cfg.harmless, cfg.n_harmless, cfg.seed, cfg.data_dir)
    rh, _ = load_texts(cfg.rank_harmful, cfg.n_rank, cfg.seed, cfg.data_dir, exclude=hi + si)
    rs, _ = load_texts(cfg.rank_harmless, cfg.n_rank, cfg.seed, cfg.data_dir, exclude=hi + si)
    return dv.Prompts(h, hi, s, si, rh, rs)


def _setup(
    model: Any, tokenizer: Any, sae: SAE, cfg: FindFeaturesConfig, judge: Any, runner: StageRunner | None,
    log: Callable[[str], None], **kw: Any,
) -> dv.Run:  # fmt: skip
    from saesteer.evaluation.judges import get_judge

    adapter = model if isinstance(model, ArchAdapter) else ArchAdapter(model)
    adapter.check_sae(sae)
    sae = sae.to(next(adapter.model.parameters()).device).eval()
    if runner is None:
        root = Path(cfg.out) / "stages"
        if not cfg.resume and root.is_dir():
            # only the stage folders this runner wrote (each holds inputs.json); anything else there is left alone
            for stage in root.iterdir():
                if stage.is_dir() and (stage / "inputs.json").is_file():
                    shutil.rmtree(stage)
        runner = StageRunner(root, log=log)
    judge = get_judge(judge if judge is not None else cfg.judge)
    return dv.Run(adapter, tokenizer, sae, cfg, judge, fingerprint=sae_fingerprint(sae), stages=runner, **kw)


def find_features(
    model: Any,
    tokenizer: Any,
    sae: SAE,
    cfg: FindFeaturesConfig,
    model_name: str = "",
    judge: Any = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    strict: bool = True,
    runner: StageRunner | None = None,
    prompts: FeaturePrompts | None = None,
) -> FeatureReport:
    """Run the discovery, write the outputs to ``cfg.out`` and return the report (whose JSON is features.json).

    ``runner``: run the stages under the caller's stage runner (default: one under ``OUT/stages``).
    ``prompts``: the dev and ranker prompts (default: the config's sets). When no candidate passes the
    screen, raises :class:`SaesteerError` after writing the outputs if ``strict``; otherwise the report's
    status is ``no_candidate_passed`` and :attr:`FeatureReport.refusal_feature` is the best screened one.
    """
    cfg.validate()
    cfg = resolve_sets(cfg, log)
    t0 = time.time()
    run = _setup(model, tokenizer, sae, cfg, judge, runner, log, prompts=load_prompts(cfg, prompts),
                 model_name=model_name, progress=progress)  # fmt: skip
    base = dv.baseline(run)
    calib = calibrate_score(base["scores"], base["harmful"]["refused"] + base["harmless"]["refused"])
    _log_baseline(log, base, calib)
    paper, ranks = dv.candidates(run), dv.rankers(run)
    rankings = {"paper": Ranking(**paper["ranking"]), **{k: Ranking(**ranks[k]) for k in SAFETY_RANKERS[1:]}}
    store = dv.contexts(run, paper)
    store.save(Path(cfg.out) / CONTEXTS_FILE)  # where ``feature show --run OUT`` reads it
    pool = screen_pool([rankings[k] for k in SAFETY_RANKERS], cfg.per_ranker, cfg.max_screen)
    if not pool:
        raise SaesteerError("no features to screen: every ranker came back empty; check the SAE and the prompts")
    values = clamp_values(pool, store.stats().max_act, cfg.clamp_multiple, cfg.clamp_value)
    cheap = [CheapResult(**c) for c in dv.cheap_screen(run, pool, values, base, calib)]
    gens = [
        GenResult.from_dict(g) for g in dv.generation_screen(run, [asdict(c) for c in cheap[: cfg.n_generate]], base)
    ]
    passing = sorted([g for g in gens if g.passes], key=lambda g: (-g.objective, -g.gain[0], g.feature))
    chosen = passing[0] if passing else None
    target = chosen.feature if chosen else (gens[0].feature if gens else cheap[0].feature)
    exclude = set(pool) | {f for k in SAFETY_RANKERS for f in rankings[k].top(100)}
    ctl = dv.control(run, store, (target, values[target]), torch.tensor(ranks["direction"]), exclude, base, calib)
    control, checks = ControlChoice(**ctl["control"]), [ControlCheck(**c) for c in ctl["checks"]]
    cards = _cards(run, store, chosen, control, gens)
    report = _report(run, calib, base, paper, rankings, pool, values, store, cheap, gens, chosen, control, checks)
    report.cards = {str(c.feature): c.to_dict() for c in cards}
    report.timings["total"] = round(time.time() - t0, 2)
    write_outputs(cfg.out, report, cards)
    log(f"wrote {Path(cfg.out) / 'features.json'}, features.md, features.html ({report.timings['total']:.0f}s)")
    if chosen is None and strict:
        raise SaesteerError(_no_pass_message(gens, Path(cfg.out)))
    return report


def _log_baseline(log: Callable[[str], None], base: dict[str, Any], calib: ScoreCalibration) -> None:
    h, s = Rate.of(base["harmful"]["refused"]), Rate.of(base["harmless"]["refused"])
    log(
        f"    baseline refusal: harmful {h.rate:.1%} ({h.k}/{h.n}), harmless {s.rate:.1%} ({s.k}/{s.n}); cheap score "
        f"vs judge: AUROC {calib.auroc:.3f}, agreement {calib.agreement:.1%}; fast screen path: "
        f"{'on' if base['fast'] else 'off'}"
    )


def _no_pass_message(gens: list[GenResult], out: Path) -> str:
    best = max(gens, key=lambda g: g.objective) if gens else None
    detail = (
        f"best: feature {best.feature}, refusal gain {best.gain[0]:+.1%}, over-refusal {best.over_refusal[0]:+.1%}"
        if best
        else "no feature reached the generation screen"
    )
    return (
        f"no candidate passed the screen ({detail}); try a larger SAE, another layer, an SAE trained with chat "
        f"data, or a different --clamp-multiple; details in {out / 'features.json'}"
    )


def _cards(
    run: dv.Run, store: ContextStore, chosen: GenResult | None, control: ControlChoice, gens: list[GenResult]
) -> list[FeatureCard]:
    shown: dict[int, str] = {}
    if chosen:
        shown[chosen.feature] = "chosen refusal feature"
    if control.feature is not None:
        shown[control.feature] = "control feature"
    for g in gens:
        shown.setdefault(g.feature, "generation-screened candidate")
    n = run.cfg.n_contexts
    return [describe_feature(run.adapter, run.tokenizer, run.sae, store, f, n, t) for f, t in shown.items()]


def _report(
    run: dv.Run, calib: ScoreCalibration, base: dict[str, Any], paper: dict[str, Any], rankings: dict[str, Ranking],
    pool: list[int], values: dict[int, float], store: ContextStore, cheap: list[CheapResult], gens: list[GenResult],
    chosen: GenResult | None, control: ControlChoice, checks: list[ControlCheck],
) -> FeatureReport:  # fmt: skip
    cfg, sae, p = run.cfg, run.sae, run.prompts
    stats, values = store.stats(), dict(values)
    target = control.target
    if control.feature is not None:  # the control's clamp, as checked
        values[control.feature] = next(c.value for c in checks if c.feature == control.feature)
    examples = [
        {"prompt_id": i, "completion": c}
        for i, c in zip(
            p.harm_ids[:3] + p.safe_ids[:3],
            base["harmful"]["completions"][:3] + base["harmless"]["completions"][:3],
            strict=False,
        )
    ]
    return FeatureReport(
        status="ok" if chosen else "no_candidate_passed",
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        config=config_to_dict(cfg),
        seed=cfg.seed,
        model=run.model_name,
        sae=SaeInfo(cfg.sae, sae.cfg.hook_name, sae.cfg.architecture, sae.d_sae, sae.d_in, sae.cfg.k, run.fingerprint),
        data={
            "harmful": {"name": cfg.harmful, "ids": p.harm_ids},
            "harmless": {"name": cfg.harmless, "ids": p.safe_ids},
        },
        refusal_score={**run.tokens.to_dict(run.tokenizer), "calibration": calib.to_dict()},
        baseline=Baseline(Rate.of(base["harmful"]["refused"]), Rate.of(base["harmless"]["refused"]), examples),
        paper=paper["search"],
        rankers={k: r.to_dict(limit=50) for k, r in rankings.items()},
        screen=Screen(
            pool,
            {str(f): {k: r.rank_of(f) for k, r in rankings.items()} for f in pool},
            clamp_mapping(values, stats, chosen.feature if chosen else target, cfg, base["median_resid_norm"]),
            bool(base["fast"]),
            cheap,
            gens,
        ),  # fmt: skip
        chosen=chosen,
        ranker_comparison=ranker_comparison(rankings, chosen.feature if chosen else None, cheap, cfg.per_ranker),
        control=control,
        control_checks=checks,
        cards={},
        timings={k.removeprefix("features."): round(v, 2) for k, v in run.stages.times.items() if k[:9] == "features."},
    )
