"""``find_features``: the whole refusal-feature discovery, stage by stage, resumable.

1. baseline: cheap refusal scores and greedy generations (judged) on the harmful and harmless dev
   prompts; the score's threshold and AUROC against the judge;
2. the paper's candidates (features on the model's own refusals to archetypal prompts);
3. the other rankers (contrastive, decoder cosine with the diff-in-means direction, attribution);
4. token contexts and feature statistics (corpus windows + chat prompts), which set the clamp values;
5. cheap causal screen of the pooled top features of every ranker; 6. generation screen of the best
   few; 7. the chosen feature and how each ranker placed it; 8. the control feature; 9. feature cards;
   and the outputs (``features.json``, ``features.md``, ``features.html``).

Every expensive stage is stored in ``OUT/checkpoint.json`` as it finishes (per feature in the
screens), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.features import candidates as cand_mod
from saesteer.features import rankers as rk
from saesteer.features.config import Checkpoint, FindFeaturesConfig, identity, load_texts, resolve_sets
from saesteer.features.contexts import sae_fingerprint
from saesteer.features.control import pick_control, topic_ranking
from saesteer.features.interpret import describe_feature
from saesteer.features.reference import reference_store
from saesteer.features.refusal_score import RefusalTokens, calibrate_score
from saesteer.features.report import build_report, clamp_mapping, ranker_comparison
from saesteer.features.screen import (
    CheapResult,
    GenResult,
    Rate,
    ScreenRunner,
    cheap_result,
    clamp_values,
    gen_result,
    generate_judged,
    hook_point,
    screen_pool,
)
from saesteer.features.summary import write_outputs
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import GenerationConfig
from saesteer.sae.base import SAE
from saesteer.steering.direction import post_instruction_acts, post_instruction_tokens
from saesteer.steering.engine import Steering
from saesteer.steering.interventions import ClampFeature

SAFETY_RANKERS = ("paper", "contrastive", "direction_cosine", "attribution")


def _ranking_from(d: dict[str, Any]) -> rk.Ranking:
    return rk.Ranking(d["name"], list(d["features"]), list(d["scores"]), d.get("description", ""))


def _ranking_to(r: rk.Ranking) -> dict[str, Any]:
    return {"name": r.name, "features": r.features, "scores": r.scores, "description": r.description}


def find_features(
    model: Any,
    tokenizer: Any,
    sae: SAE,
    cfg: FindFeaturesConfig,
    model_name: str = "",
    judge: Any = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the discovery and write the outputs to ``cfg.out``; returns the report (the content of features.json).

    Raises :class:`SaesteerError` (after writing the outputs) when no candidate passes the screen.
    """
    from saesteer.evaluation.judges import get_judge

    cfg.validate()
    cfg = resolve_sets(cfg, log)
    t_start = time.time()
    timings: dict[str, float] = {}
    adapter = model if isinstance(model, ArchAdapter) else ArchAdapter(model)
    net = adapter.model
    hp = adapter.check(hook_point(sae))
    if sae.d_in != adapter.d_model:
        raise SaesteerError(f"SAE d_in {sae.d_in} != model d_model {adapter.d_model}; use an SAE trained on this model")
    sae = sae.to(next(net.parameters()).device).eval()
    judge = get_judge(judge if judge is not None else cfg.judge)
    out = Path(cfg.out)
    fp = sae_fingerprint(sae)
    ckpt = Checkpoint(out, identity(cfg, model_name, fp), enabled=cfg.resume)
    tokens = RefusalTokens.from_words(tokenizer, cfg.refusal_words, cfg.compliance_words, cfg.score_mode)
    gen_cfg = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, system_prompt=cfg.system_prompt
    )
    n_stages = 9

    def stage(i: int, text: str) -> float:
        log(f"[{i}/{n_stages}] {text}  (elapsed {time.time() - t_start:.0f}s)")
        return time.time()

    # --- data --------------------------------------------------------------------------------------------------
    harm, harm_ids = load_texts(cfg.harmful, cfg.n_harmful, cfg.seed, cfg.data_dir)
    safe, safe_ids = load_texts(cfg.harmless, cfg.n_harmless, cfg.seed, cfg.data_dir)
    dev_ids = harm_ids + safe_ids
    r_harm, _ = load_texts(cfg.rank_harmful, cfg.n_rank, cfg.seed, cfg.data_dir, exclude=dev_ids)
    r_safe, _ = load_texts(cfg.rank_harmless, cfg.n_rank, cfg.seed, cfg.data_dir, exclude=dev_ids)

    # --- 1. baseline -------------------------------------------------------------------------------------------
    t = stage(1, f"baseline: refusal scores and generations on {len(harm)} harmful + {len(safe)} harmless prompts")
    runner = ScreenRunner(
        adapter,
        tokenizer,
        sae,
        harm + safe,
        tokens,
        cfg.batch_size,
        cfg.system_prompt,
        fast=cfg.fast_screen,
        progress=progress,
    )
    is_harm = torch.tensor([True] * len(harm) + [False] * len(safe))

    def baseline_gen() -> dict[str, Any]:
        oh, rh = generate_judged(net, tokenizer, harm, gen_cfg, judge, progress=progress, desc="baseline harmful")
        os_, rs = generate_judged(net, tokenizer, safe, gen_cfg, judge, progress=progress, desc="baseline harmless")
        return {"harmful": {"completions": oh, "refused": rh}, "harmless": {"completions": os_, "refused": rs}}

    base = ckpt.stage("baseline_generation", baseline_gen)
    base_h, base_s = Rate.of(base["harmful"]["refused"]), Rate.of(base["harmless"]["refused"])
    calib = calibrate_score(runner.baseline, base["harmful"]["refused"] + base["harmless"]["refused"])
    log(
        f"    baseline refusal: harmful {base_h.rate:.1%} ({base_h.k}/{base_h.n}), harmless {base_s.rate:.1%} "
        f"({base_s.k}/{base_s.n}); cheap score vs judge: AUROC {calib.auroc:.3f}, agreement {calib.agreement:.1%}; "
        f"fast screen path: {'on' if runner.fast else 'off'}"
    )
    timings["baseline"] = time.time() - t

    # --- 2. the paper's candidates -------------------------------------------------------------------------------
    t = stage(2, f"paper's candidates: the model's refusals to {len(cfg.archetypes)} archetypal prompts")

    def paper() -> dict[str, Any]:
        cs = cand_mod.find_candidates(
            adapter,
            tokenizer,
            sae,
            cfg.archetypes,
            judge=judge,
            require_refusal=cfg.require_refusal,
            min_tokens=cfg.min_refusal_tokens,
            max_new_tokens=cfg.archetype_tokens,
            system_prompt=cfg.system_prompt,
        )
        return {"search": cs.to_dict(), "ranking": _ranking_to(cs.ranking())}

    paper_res = ckpt.stage("paper", paper)
    resp = paper_res["search"]["responses"]
    log(
        f"    {sum(r['used'] for r in resp)} of {len(resp)} archetype responses used "
        f"({sum(r['refused'] for r in resp)} judged refusals); {paper_res['search']['n_candidates']} candidates on "
        f"{paper_res['search']['n_refusal_tokens']} refusal tokens"
    )
    timings["paper"] = time.time() - t

    # --- 3. other rankers ----------------------------------------------------------------------------------------
    t = stage(
        3,
        f"rankers: contrastive + direction cosine ({len(r_harm)}+{len(r_safe)} prompts), "
        f"attribution ({min(cfg.n_attribution, len(r_harm))} prompts)",
    )
    n_post = post_instruction_tokens(tokenizer, cfg.system_prompt)

    def rankers() -> dict[str, Any]:
        acts_h = post_instruction_acts(
            adapter, tokenizer, r_harm, hp, n_post, cfg.batch_size, cfg.system_prompt, progress, "acts harmful"
        )
        acts_s = post_instruction_acts(
            adapter, tokenizer, r_safe, hp, n_post, cfg.batch_size, cfg.system_prompt, progress, "acts harmless"
        )
        direction = rk.diff_in_means(acts_h, acts_s)
        attr = rk.attribution_ranking(
            adapter,
            tokenizer,
            sae,
            r_harm[: cfg.n_attribution],
            tokens,
            hp,
            max(1, cfg.batch_size // 2),
            cfg.system_prompt,
            progress,
        )
        return {
            "direction": direction.tolist(),
            "n_post": n_post,
            "contrastive": _ranking_to(rk.contrastive_ranking(sae, acts_h, acts_s)),
            "direction_cosine": _ranking_to(rk.direction_cosine_ranking(sae, direction)),
            "attribution": _ranking_to(attr),
        }

    rank_res = ckpt.stage("rankers", rankers)
    rankings = {"paper": _ranking_from(paper_res["ranking"])}
    rankings.update({k: _ranking_from(rank_res[k]) for k in SAFETY_RANKERS[1:]})
    direction = torch.tensor(rank_res["direction"])
    timings["rankers"] = time.time() - t

    # --- 4. contexts and statistics ------------------------------------------------------------------------------
    t = stage(4, "token contexts and feature statistics (corpus windows + chat prompts)")
    store = reference_store(adapter, tokenizer, sae, cfg, ckpt, harm, safe, paper_res, progress, fp)
    stats = store.stats()
    timings["contexts"] = time.time() - t

    # --- 5. cheap screen -----------------------------------------------------------------------------------------
    pool = screen_pool([rankings[k] for k in SAFETY_RANKERS], cfg.per_ranker, cfg.max_screen)
    if not pool:
        raise SaesteerError("no features to screen: every ranker came back empty; check the SAE and the prompts")
    values = clamp_values(pool, stats.max_act, cfg.clamp_multiple, cfg.clamp_value)
    t = stage(5, f"cheap screen: {len(pool)} features x {runner.n} prompts, one forward each")
    cheap: list[CheapResult] = []
    from tqdm.auto import tqdm

    for f in tqdm(pool, desc="cheap screen", unit="feature", disable=not progress):
        key = f"cheap:{f}:{values[f]:.6g}"
        saved = ckpt.get(key)
        if saved is None:
            s = runner.scores(f, values[f])
            saved = ckpt.put(key, asdict(cheap_result(f, values[f], s, runner.baseline, is_harm, calib, cfg.penalty)))
        cheap.append(CheapResult(**saved))
    cheap.sort(key=lambda c: c.key(cfg.penalty))
    timings["cheap_screen"] = time.time() - t

    # --- 6. generation screen ------------------------------------------------------------------------------------
    top = cheap[: cfg.n_generate]
    t = stage(6, f"generation screen: {len(top)} features x {runner.n} prompts, {cfg.max_new_tokens} new tokens")
    gens: list[GenResult] = []
    for i, c in enumerate(top, 1):
        key = f"gen:{c.feature}:{c.value:.6g}"
        saved = ckpt.get(key)
        if saved is None:
            steer = Steering(adapter, sae, [ClampFeature(c.feature, c.value)], positions=cfg.positions)
            oh, rh = generate_judged(net, tokenizer, harm, gen_cfg, judge, steer, progress, f"[{i}/{len(top)}] harmful")
            os_, rs = generate_judged(
                net, tokenizer, safe, gen_cfg, judge, steer, progress, f"[{i}/{len(top)}] harmless"
            )
            pairs = list(zip(harm[:2], oh[:2], strict=True)) + list(zip(safe[:2], os_[:2], strict=True))
            ex = [{"prompt": p, "completion": o} for p, o in pairs]
            g = gen_result(c.feature, c.value, rh, rs, base_h, base_s, cfg.penalty, cfg.min_gain, ex)
            saved = ckpt.put(key, g.to_dict())
        gens.append(_gen_from(saved))
        log(
            f"    feature {gens[-1].feature}: harmful {gens[-1].harmful.rate:.1%}, harmless "
            f"{gens[-1].harmless.rate:.1%}, objective {gens[-1].objective:+.3f}"
        )
    timings["generation_screen"] = time.time() - t

    # --- 7. choice and ranker comparison -------------------------------------------------------------------------
    stage(7, "choosing the feature")
    passing = sorted([g for g in gens if g.passes], key=lambda g: (-g.objective, -g.gain[0], g.feature))
    chosen = passing[0] if passing else None
    comparison = ranker_comparison(rankings, chosen.feature if chosen else None, cheap, cfg.per_ranker)

    # --- 8. control ----------------------------------------------------------------------------------------------
    t = stage(8, "control feature")
    control = None
    target = chosen.feature if chosen else (gens[0].feature if gens else cheap[0].feature)
    cos = rk.direction_cosine_ranking(sae, direction) if float(direction.norm()) > 0 else None
    cos_t = torch.zeros(sae.d_sae)
    if cos is not None:
        cos_t[torch.tensor(cos.features)] = torch.tensor(cos.scores)
    exclude = set(pool) | {f for k in SAFETY_RANKERS for f in rankings[k].top(100)}
    control = pick_control(topic_ranking(store), stats, target, exclude, cos_t, cfg.control_max_cos)
    timings["control"] = time.time() - t

    # --- 9. interpretation and outputs ---------------------------------------------------------------------------
    t = stage(9, "feature cards and outputs")
    shown: list[tuple[int, str]] = []
    if chosen:
        shown.append((chosen.feature, "chosen refusal feature"))
    if control.feature is not None:
        shown.append((control.feature, "control feature"))
    for g in gens:
        if g.feature not in [f for f, _ in shown]:
            shown.append((g.feature, "generation-screened candidate"))
    cards = [describe_feature(adapter, tokenizer, sae, store, f, cfg.n_contexts, title) for f, title in shown]
    if control.feature is not None and control.feature not in values:  # the control is clamped the same way
        values.update(clamp_values([control.feature], stats.max_act, cfg.clamp_multiple, cfg.clamp_value))
    mapping = clamp_mapping(values, stats, chosen.feature if chosen else target, cfg, runner.median_resid_norm())
    timings["interpretation"] = time.time() - t
    timings["total"] = time.time() - t_start
    report = build_report(
        cfg=cfg,
        model_name=model_name,
        sae=sae,
        fp=fp,
        harm_ids=harm_ids,
        safe_ids=safe_ids,
        tokens=tokens.to_dict(tokenizer),
        calib=calib,
        base=base,
        base_h=base_h,
        base_s=base_s,
        paper=paper_res["search"],
        rankings=rankings,
        pool=pool,
        mapping=mapping,
        cheap=cheap,
        gens=gens,
        chosen=chosen,
        comparison=comparison,
        control=control,
        cards=cards,
        fast=runner.fast,
        timings=timings,
    )
    write_outputs(out, report, cards)
    log(f"wrote {out / 'features.json'}, features.md, features.html ({timings['total']:.0f}s)")
    if chosen is None:
        best = max(gens, key=lambda g: g.objective) if gens else None
        detail = (
            f"best: feature {best.feature}, refusal gain {best.gain[0]:+.1%}, over-refusal {best.over_refusal[0]:+.1%}"
            if best
            else "no feature reached the generation screen"
        )
        raise SaesteerError(
            f"no candidate passed the screen ({detail}); try a larger SAE, another layer, an SAE trained with chat "
            f"data, or a different --clamp-multiple; details in {out / 'features.json'}"
        )
    return report


def _gen_from(d: dict[str, Any]) -> GenResult:
    return GenResult(
        d["feature"],
        d["value"],
        Rate(**d["harmful"]),
        Rate(**d["harmless"]),
        (d["gain"]["d"], d["gain"]["lo"], d["gain"]["hi"]),
        (d["over_refusal"]["d"], d["over_refusal"]["lo"], d["over_refusal"]["hi"]),
        d["objective"],
        d["passes"],
        d["significant"],
        d.get("examples", []),
    )
