"""The stages of the refusal-feature discovery, each cached by :class:`saesteer.stages.StageRunner`.

A stage's key covers the config fields it reads, the model, the SAE's fingerprint, its prompts, the
folders of the stages it builds on and the source of the packages in :data:`CODE`; change any of them
and it reruns, while the stages before it are reused. Stages that loop over features (the screens and
the control check) keep one file per finished feature in their folder, so an interrupted stage
resumes at the feature where it stopped.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from saesteer.config import atomic_write_json
from saesteer.features import candidates as cand_mod
from saesteer.features import rankers as rk
from saesteer.features.config import FindFeaturesConfig
from saesteer.features.contexts import FILE as CONTEXTS_FILE
from saesteer.features.contexts import ContextStore
from saesteer.features.reference import reference_store, run_corpus_texts
from saesteer.features.refusal_score import RefusalTokens, ScoreCalibration
from saesteer.features.screen import ScreenRunner, generate_judged
from saesteer.model.adapter import ArchAdapter, HookPoint
from saesteer.model.generation import GenerationConfig
from saesteer.sae.base import SAE
from saesteer.stages import StageRunner, stable_hash
from saesteer.steering.direction import post_instruction_acts, post_instruction_tokens
from saesteer.steering.engine import Steering
from saesteer.steering.interventions import ClampFeature

T = TypeVar("T")
CODE = ("features", "steering", "model", "sae", "evaluation")
RESULT = "result.json"


@dataclass
class Prompts:
    """The dev prompts of the screen and the prompts of the rankers (texts and ids)."""

    harm: list[str]
    harm_ids: list[str]
    safe: list[str]
    safe_ids: list[str]
    rank_harm: list[str]
    rank_safe: list[str]


@dataclass
class Run:
    """What every stage of one discovery run shares."""

    adapter: ArchAdapter
    tokenizer: Any
    sae: SAE
    cfg: FindFeaturesConfig
    judge: Any
    prompts: Prompts
    model_name: str
    fingerprint: str
    stages: StageRunner
    progress: bool = True

    @property
    def hook(self) -> HookPoint:
        return self.adapter.check(self.sae.cfg.hook_name)

    @functools.cached_property
    def tokens(self) -> RefusalTokens:
        c = self.cfg
        return RefusalTokens.from_words(self.tokenizer, c.refusal_words, c.compliance_words, c.score_mode)

    @property
    def gen_cfg(self) -> GenerationConfig:
        c = self.cfg
        return GenerationConfig(max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, system_prompt=c.system_prompt)

    @property
    def is_harm(self) -> torch.Tensor:
        return torch.tensor([True] * len(self.prompts.harm) + [False] * len(self.prompts.safe))

    @functools.cached_property
    def screen(self) -> ScreenRunner:
        """The cheap-screen runner over the dev prompts (built on first use: one forward per prompt)."""
        c, p = self.cfg, self.prompts
        return ScreenRunner(
            self.adapter, self.tokenizer, self.sae, p.harm + p.safe, self.tokens, c.batch_size, c.system_prompt,
            fast=c.fast_screen, progress=self.progress,
        )  # fmt: skip

    def key(self, fields: Sequence[str], **extra: Any) -> dict[str, Any]:
        """A stage's inputs: the named config fields, the model, the SAE and ``extra`` (upstream stages...)."""
        c = self.cfg
        judge = f"{c.judge}:{type(self.judge).__name__}" if "judge" in fields else None
        base: dict[str, Any] = {"model": self.model_name, "sae": self.fingerprint, "system_prompt": c.system_prompt}
        base |= {"batch_size": c.batch_size, "judge": judge, "seed": c.seed}
        return base | {f: getattr(c, f) for f in fields if f != "judge"} | extra

    def stage(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], T], load: Callable[[Path], T]) -> T:
        return self.stages.run(f"features.{name}", inputs, fn, load, code=CODE)

    def json_stage(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], Any]) -> Any:
        """A stage whose result is JSON, stored as ``result.json`` in its folder."""

        def compute(folder: Path) -> Any:
            result = fn(folder)
            atomic_write_json(folder / RESULT, result)
            return json.loads(json.dumps(result, default=str))  # as a later run will load it (str keys...)

        return self.stage(name, inputs, compute, lambda folder: json.loads((folder / RESULT).read_text()))

    def folder(self, name: str) -> str:
        """The folder name of a finished stage (its identity, for the stages that build on it)."""
        return self.stages.folders[f"features.{name}"].name


def per_item(folder: Path, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One item of a looping stage: read ``folder/name.json`` if an earlier attempt finished it, else compute it."""
    path = folder / f"{name}.json"
    if path.is_file():
        try:
            return dict(json.loads(path.read_text()))
        except ValueError:
            pass  # a torn write of an earlier attempt: compute it again
    result = fn()
    atomic_write_json(path, result)
    return result


def prompt_ids(p: Prompts) -> str:
    return stable_hash([p.harm_ids, p.safe_ids, p.harm, p.safe])


def baseline(run: Run) -> dict[str, Any]:
    """Unsteered judged generations and cheap refusal scores on the dev prompts."""
    p, net = run.prompts, run.adapter.model

    def compute(_folder: Path) -> dict[str, Any]:
        sr = run.screen
        kw = {"progress": run.progress}
        oh, rh = generate_judged(net, run.tokenizer, p.harm, run.gen_cfg, run.judge, desc="baseline harmful", **kw)
        os_, rs = generate_judged(net, run.tokenizer, p.safe, run.gen_cfg, run.judge, desc="baseline harmless", **kw)
        return {
            "harmful": {"completions": oh, "refused": rh},
            "harmless": {"completions": os_, "refused": rs},
            "scores": sr.baseline.tolist(),
            "fast": sr.fast,
            "median_resid_norm": sr.median_resid_norm(),
        }

    fields = ("max_new_tokens", "judge", "refusal_words", "compliance_words", "score_mode", "fast_screen")
    return run.json_stage("baseline", run.key(fields, prompts=prompt_ids(p)), compute)  # type: ignore[no-any-return]


def candidates(run: Run) -> dict[str, Any]:
    """The paper's candidates: features active on the model's own refusals to the archetypes."""
    c = run.cfg

    def compute(_folder: Path) -> dict[str, Any]:
        cs = cand_mod.find_candidates(
            run.adapter, run.tokenizer, run.sae, c.archetypes, judge=run.judge, require_refusal=c.require_refusal,
            min_tokens=c.min_refusal_tokens, max_new_tokens=c.archetype_tokens, system_prompt=c.system_prompt,
        )  # fmt: skip
        return {"search": cs.to_dict(), "ranking": asdict(cs.ranking())}

    fields = ("archetypes", "require_refusal", "min_refusal_tokens", "archetype_tokens", "judge")
    return run.json_stage("candidates", run.key(fields), compute)  # type: ignore[no-any-return]


def rankers(run: Run) -> dict[str, Any]:
    """Contrastive, decoder-cosine (with the diff-in-means direction) and attribution rankings."""
    c, p = run.cfg, run.prompts

    def compute(_folder: Path) -> dict[str, Any]:
        n_post = post_instruction_tokens(run.tokenizer, c.system_prompt)
        acts = [
            post_instruction_acts(
                run.adapter, run.tokenizer, texts, run.hook, n_post, c.batch_size, c.system_prompt, run.progress, desc
            )
            for texts, desc in ((p.rank_harm, "acts harmful"), (p.rank_safe, "acts harmless"))
        ]
        direction = rk.diff_in_means(acts[0], acts[1])
        attr = rk.attribution_ranking(
            run.adapter, run.tokenizer, run.sae, p.rank_harm[: c.n_attribution], run.tokens, run.hook,
            max(1, c.batch_size // 2), c.system_prompt, run.progress,
        )  # fmt: skip
        return {
            "direction": direction.tolist(),
            "contrastive": asdict(rk.contrastive_ranking(run.sae, acts[0], acts[1])),
            "direction_cosine": asdict(rk.direction_cosine_ranking(run.sae, direction)),
            "attribution": asdict(attr),
        }

    fields = ("n_attribution", "refusal_words", "compliance_words", "score_mode")
    texts = stable_hash([p.rank_harm, p.rank_safe])
    return run.json_stage("rankers", run.key(fields, rank_prompts=texts), compute)  # type: ignore[no-any-return]


def contexts(run: Run, paper: dict[str, Any]) -> ContextStore:
    """The reference tokens' sparse codes: feature statistics (clamp units) and top contexts."""
    c, p = run.cfg, run.prompts

    def compute(folder: Path) -> ContextStore:
        responses = paper["search"]["responses"]
        store = reference_store(run.adapter, run.tokenizer, run.sae, c, p.harm, p.safe, responses, run.progress)
        store.save(folder / CONTEXTS_FILE)
        return store

    fields = ("corpus_windows", "context_len", "topic_prompts")
    corpus = stable_hash(run_corpus_texts(c))  # by content: an edited corpus file is a new stage
    inputs = run.key(fields, corpus=corpus, prompts=prompt_ids(p), candidates=run.folder("candidates"))
    return run.stage("contexts", inputs, compute, lambda folder: ContextStore.load(folder / CONTEXTS_FILE))


def cheap_screen(
    run: Run, pool: list[int], values: dict[int, float], base: dict[str, Any], calib: ScoreCalibration
) -> list[dict[str, Any]]:
    """One forward per dev prompt for each pooled feature, clamped; sorted best first."""
    from tqdm.auto import tqdm

    from saesteer.features.screen import CheapResult, cheap_result

    base_scores = torch.tensor(base["scores"])

    def one(f: int) -> dict[str, Any]:
        s = run.screen.scores(f, values[f])
        return asdict(cheap_result(f, values[f], s, base_scores, run.is_harm, calib, run.cfg.penalty))

    def compute(folder: Path) -> dict[str, Any]:
        bar = tqdm(pool, desc="cheap screen", unit="feature", disable=not run.progress)
        rows = [CheapResult(**per_item(folder, f"cheap-{f}", functools.partial(one, f))) for f in bar]
        rows.sort(key=lambda r: r.key(run.cfg.penalty))
        return {"cheap": [asdict(r) for r in rows]}

    inputs = run.key(("penalty", "fast_screen"), pool=pool, values=values, baseline=run.folder("baseline"))
    return run.json_stage("cheap_screen", inputs, compute)["cheap"]  # type: ignore[no-any-return]


def clamp_generate(
    run: Run, harm: Sequence[str], safe: Sequence[str], desc: str = ""
) -> Callable[[int | None, float], tuple[tuple[list[str], list[bool]], tuple[list[str], list[bool]]]]:
    """A function generating judged completions of ``harm`` and ``safe`` with one feature clamped (None: none)."""
    net, tok, gen, judge = run.adapter.model, run.tokenizer, run.gen_cfg, run.judge

    def go(feature: int | None, value: float) -> tuple[tuple[list[str], list[bool]], tuple[list[str], list[bool]]]:
        steer = None
        if feature is not None:
            steer = Steering(run.adapter, run.sae, [ClampFeature(feature, value)], positions=run.cfg.positions)
        h = generate_judged(net, tok, harm, gen, judge, steer, run.progress, f"{desc}harmful")
        s = generate_judged(net, tok, safe, gen, judge, steer, run.progress, f"{desc}harmless")
        return h, s

    return go


def generation_screen(run: Run, top: list[dict[str, Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Greedy generation with each of the best cheap-screened features clamped, judged."""
    from saesteer.features.screen import Rate, gen_result

    c, p = run.cfg, run.prompts
    base_h, base_s = Rate.of(base["harmful"]["refused"]), Rate.of(base["harmless"]["refused"])

    def one(i: int, f: int, v: float) -> dict[str, Any]:
        (oh, rh), (os_, rs) = clamp_generate(run, p.harm, p.safe, f"[{i}/{len(top)}] ")(f, v)
        pairs = list(zip(p.harm[:2], oh[:2], strict=True)) + list(zip(p.safe[:2], os_[:2], strict=True))
        ex = [{"prompt": q, "completion": o} for q, o in pairs]
        return gen_result(f, v, rh, rs, base_h, base_s, c.penalty, c.min_gain, ex).to_dict()

    def compute(folder: Path) -> dict[str, Any]:
        rows = []
        for i, t in enumerate(top, 1):
            f, v = int(t["feature"]), float(t["value"])
            rows.append(per_item(folder, f"gen-{f}", functools.partial(one, i, f, v)))
            run.stages.log(f"    feature {f}: harmful {rows[-1]['harmful']['rate']:.1%}, harmless "
                           f"{rows[-1]['harmless']['rate']:.1%}, objective {rows[-1]['objective']:+.3f}")  # fmt: skip
        return {"generation": rows}

    fields = ("max_new_tokens", "positions", "penalty", "min_gain", "judge")
    inputs = run.key(fields, top=[(t["feature"], t["value"]) for t in top], baseline=run.folder("baseline"))
    return run.json_stage("generation_screen", inputs, compute)["generation"]  # type: ignore[no-any-return]


def control_multiple(cfg: FindFeaturesConfig, chosen_value: float, chosen_max: float) -> float:
    """The control's clamp as a multiple of its own max: the refusal clamp's strength unless set."""
    if cfg.control_multiple is not None:
        return cfg.control_multiple
    if cfg.clamp_value is not None and chosen_max > 0:
        return chosen_value / chosen_max
    return cfg.clamp_multiple


def _verifier(run: Run, base: dict[str, Any], calib: ScoreCalibration) -> Any:
    """The control check on the dev prompts: the screen's cheap scores, then clamped judged generation."""
    from saesteer.features.control import ControlVerifier

    c, p = run.cfg, run.prompts
    gen = clamp_generate(run, p.harm[: c.control_n_generate], p.safe[: c.control_n_generate], "control ")

    def refusals(f: int | None, v: float) -> tuple[list[bool], list[bool]]:
        (_, rh), (_, rs) = gen(f, v)
        return rh, rs

    baseline = torch.tensor(base["scores"])
    return ControlVerifier(
        run.screen.scores, baseline, run.is_harm, calib, refusals, c.control_band, c.control_gen_band
    )


def _stand_in(found: list[Any], checks: list[dict[str, Any]], why: str) -> dict[str, Any]:
    """The least refusal-moving checked candidate as an unverified control (see features.control, step 5)."""
    from saesteer.features.control import STAND_IN, ControlCheck, stand_in

    best = stand_in([ControlCheck(**k) for k in checks])
    assert best is not None  # checks is not empty
    cand = next(x for x in found if x.feature == best.feature)
    moved = f"{100 * best.cheap_unsafe_delta:+.1f} / {100 * best.cheap_safe_delta:+.1f} pts"
    if best.gen_unsafe_delta is not None and best.gen_safe_delta is not None:
        moved += f" (generation {100 * best.gen_unsafe_delta:+.1f} / {100 * best.gen_safe_delta:+.1f} pts)"
    reason = f"{STAND_IN}{why}; {best.feature} moved refusal least, by {moved} on unsafe / safe dev prompts"
    return {**asdict(cand), "reason": reason, "verified": False}


def control(
    run: Run,
    store: ContextStore,
    target: tuple[int, float],
    direction: torch.Tensor,
    exclude: set[int],
    base: dict[str, Any],
    calib: ScoreCalibration,
) -> dict[str, Any]:
    """Verified-neutral control feature: candidates by statistics, checked in order (see features.control)."""
    from saesteer.features.control import control_candidates, no_control, topic_ranking

    c, stats, (f_t, v_t) = run.cfg, store.stats(), target
    multiple = control_multiple(c, v_t, float(stats.max_act[f_t]))
    cos_dir = rk.decoder_cosine(run.sae, direction) if float(direction.norm()) > 0 else None
    cos_chosen = rk.decoder_cosine(run.sae, run.sae.W_dec[f_t])
    found = control_candidates(topic_ranking(store), stats, f_t, exclude, cos_dir, c.control_max_cos,
                               chosen_cosine=cos_chosen)[: c.control_tries]  # fmt: skip

    def compute(folder: Path) -> dict[str, Any]:
        verifier, checks = _verifier(run, base, calib), []
        for cand in found:
            f = int(cand.feature or 0)  # candidates always name a feature
            args = (
                f,
                multiple * float(stats.max_act[f]),
                multiple,
                cand.cosine_with_direction,
                cand.cosine_with_chosen,
            )
            checks.append(per_item(folder, f"check-{f}", lambda: verifier.check(*args).to_dict()))  # noqa: B023
            if checks[-1]["passed"]:
                return {"control": asdict(cand), "checks": checks}
        why = f"none of the {len(checks)} candidates checked stayed within the bands" if checks else (
            f"no topic feature is active, unrelated to safety (|cos| <= {c.control_max_cos}) and distinct")  # fmt: skip
        if checks and c.control_fallback:
            return {"control": _stand_in(found, checks, why), "checks": checks}
        considered = found[0].considered if found else 0  # every qualifying candidate, checked or not
        return {"control": asdict(no_control(stats, f_t, why, considered)), "checks": checks}

    fields = ("control_max_cos", "control_multiple", "control_band", "control_gen_band", "control_n_generate",
              "control_tries", "control_fallback", "clamp_multiple", "clamp_value", "positions", "max_new_tokens", "judge")  # fmt: skip
    inputs = run.key(
        fields, target=[f_t, v_t], exclude=sorted(exclude), contexts=run.folder("contexts"),
        rankers=run.folder("rankers"), baseline=run.folder("baseline"),
    )  # fmt: skip
    return run.json_stage("control", inputs, compute)  # type: ignore[no-any-return]
