"""The find-features stage config and its prompt loading."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.features.candidates import DEFAULT_ARCHETYPES
from saesteer.features.control import DEFAULT_TOPIC_PROMPTS
from saesteer.features.refusal_score import DEFAULT_COMPLIANCE_WORDS, DEFAULT_REFUSAL_WORDS


@dataclass
class FindFeaturesConfig:
    """Refusal feature discovery: candidates, rankers, causal screen, control feature, interpretation."""

    sae: str = opt("", "SAE folder (SAELens layout: cfg.json + sae_weights.safetensors)")
    out: str = opt("runs/features", "output folder: features.json, features.md, features.html, contexts, stages/")
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data)")
    harmful: str = opt("harmbench:val", "harmful dev prompts of the screen (a load_prompts name, e.g. harmbench:val)")
    harmless: str = opt("alpaca", "harmless dev prompts of the screen (over-refusal), e.g. alpaca or jbb:benign")
    n_harmful: int = opt(80, "harmful dev prompts (deterministic sample under --seed)")
    n_harmless: int = opt(80, "harmless dev prompts")
    rank_harmful: str = opt("advbench", "harmful prompts for the rankers (dev prompts are excluded)")
    rank_harmless: str = opt("alpaca", "harmless prompts for the rankers (dev prompts are excluded)")
    n_rank: int = opt(64, "prompts per side for the contrastive and direction rankers")
    n_attribution: int = opt(32, "harmful prompts for the attribution ranker (a forward and backward each)")
    archetypes: list[str] = opt(
        list(DEFAULT_ARCHETYPES), "archetypal harmful prompts whose refusals give the candidates"
    )
    require_refusal: bool = opt(True, "use only archetype responses the judge calls refusals")
    min_refusal_tokens: int = opt(2, "a candidate is active on at least this many refusal tokens")
    archetype_tokens: int = opt(32, "new tokens of the model's responses to the archetypes")
    per_ranker: int = opt(10, "top features of each ranker that enter the causal screen")
    max_screen: int = opt(40, "at most this many features are cheap-screened (one forward per prompt each)")
    clamp_value: float | None = opt(None, "clamp every candidate to this value (SAE units); unset: --clamp-multiple")
    clamp_multiple: float = opt(2.0, "clamp value = this x the feature's max activation on the reference tokens")
    penalty: float = opt(1.0, "objective = refusal gain on harmful - penalty x refusal gain on harmless prompts")
    n_generate: int = opt(5, "best cheap-screened features that are also screened by generation + judge")
    max_new_tokens: int = opt(24, "new tokens per completion in the generation screen and the baseline")
    batch_size: int = opt(16, "prompts per forward / generation batch")
    positions: str = opt("all", "positions clamped in the generation screen: all, prompt or generated")
    min_gain: float = opt(0.0, "a feature passes when its refusal gain exceeds this and its objective is > 0")
    judge: str = opt("keyword", "refusal judge: keyword, llm:MODEL@BASE_URL or hf:PATH_OR_HUB_ID")
    score_mode: str = opt("logodds", "cheap refusal score: logodds (refusal mass vs rest) or diff (vs compliance)")
    refusal_words: list[str] = opt(list(DEFAULT_REFUSAL_WORDS), "typical first words of a refusal")
    compliance_words: list[str] = opt(list(DEFAULT_COMPLIANCE_WORDS), "typical first words of a compliant answer")
    corpus: str | None = opt(
        None,
        "corpus for contexts and statistics (.txt/.jsonl(.gz)); default: the data "
        "directory's corpus if present; 'none' to use chat prompts only",
    )
    corpus_windows: int = opt(64, "corpus windows encoded for contexts and statistics")
    context_len: int = opt(128, "tokens per corpus window")
    topic_prompts: list[str] = opt(list(DEFAULT_TOPIC_PROMPTS), "topic prompts (unrelated to safety) for the control")
    control_max_cos: float = opt(
        0.1, "a control's decoder row has |cosine| <= this with the refusal direction and the chosen feature's row"
    )
    control_multiple: float | None = opt(
        None, "the control check clamps a candidate to this x its own max (default: --clamp-multiple's strength)"
    )
    control_band: float = opt(0.05, "a control passes if its cheap-score refusal changes stay within +/- this")
    control_gen_band: float = opt(0.10, "... and then its judged refusal changes (generation) within +/- this")
    control_n_generate: int = opt(16, "harmful and harmless dev prompts each for the control's generation check")
    control_tries: int = opt(8, "control candidates checked at most (best statistics match first)")
    control_fallback: bool = opt(
        True, "if none stays within the bands, the least refusal-moving one stands in (unverified)"
    )
    n_contexts: int = opt(10, "top-activating contexts shown per feature")
    fast_screen: bool = opt(True, "cheap screen: reuse the activations up to the SAE's layer (checked; falls back)")
    system_prompt: str | None = opt(None, "system prompt for every chat prompt (default: the template's)")
    seed: int = opt(0, "seed of the prompt samples (the screen is deterministic under it)")
    resume: bool = opt(True, "reuse finished stages of OUT/stages/ (keyed by config, model, SAE and code)")

    def validate(self) -> None:
        checks = [
            (self.n_harmful >= 1 and self.n_harmless >= 1, "n_harmful and n_harmless must be >= 1"),
            (self.n_rank >= 1 and self.n_attribution >= 1, "n_rank and n_attribution must be >= 1"),
            (self.per_ranker >= 1 and self.max_screen >= 1, "per_ranker and max_screen must be >= 1"),
            (self.n_generate >= 1, "n_generate must be >= 1 (the choice rests on the generation screen)"),
            (self.max_new_tokens >= 1 and self.batch_size >= 1, "max_new_tokens and batch_size must be >= 1"),
            (self.min_refusal_tokens >= 1, "min_refusal_tokens must be >= 1"),
            (self.positions in ("all", "prompt", "generated"), "positions must be all, prompt or generated"),
            (self.clamp_multiple > 0, "clamp_multiple must be > 0"),
            (len(self.archetypes) > 0, "give at least one archetypal prompt (--archetypes)"),
            (len(self.topic_prompts) > 0, "give at least one topic prompt (--topic-prompts)"),
            (self.control_band >= 0 and self.control_gen_band >= 0, "control_band and control_gen_band must be >= 0"),
            (
                self.control_n_generate >= 1 and self.control_tries >= 1,
                "control_n_generate, control_tries must be >= 1",
            ),
            (self.control_multiple is None or self.control_multiple > 0, "control_multiple must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise SaesteerError(f"find-features: {msg}")


def load_texts(
    name: str, n: int, seed: int, data_dir: str | None, exclude: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(texts, ids) of ``n`` prompts of set ``name`` under ``seed``, skipping the ids in ``exclude``."""
    from saesteer.evaluation.datasets import load_prompts

    prompts = load_prompts(name, seed=seed, data_dir=data_dir)
    skip = set(exclude)
    prompts = [p for p in prompts if p.id not in skip]
    if n < len(prompts):
        from saesteer.evaluation.datafiles import subsample

        prompts = subsample(prompts, n, seed, f"features:{name}")
    if not prompts:
        raise SaesteerError(f"prompt set {name!r} is empty (after excluding the dev prompts); give another set")
    return [p.text for p in prompts], [p.id for p in prompts]


def resolve_sets(cfg: FindFeaturesConfig, log: Callable[[str], None]) -> FindFeaturesConfig:
    """Fall back to the built-in suites when the default data sets are asked for but no data directory exists."""
    from dataclasses import replace

    from saesteer.evaluation.datafiles import data_dir

    if data_dir(cfg.data_dir) is not None:
        return cfg
    defaults = FindFeaturesConfig()
    swap = {
        "harmful": "builtin_harmful",
        "rank_harmful": "builtin_harmful",
        "harmless": "builtin_harmless",
        "rank_harmless": "builtin_harmless",
    }
    changes: dict[str, Any] = {k: v for k, v in swap.items() if getattr(cfg, k) == getattr(defaults, k)}
    if changes:
        log(
            f"no data directory found; using the built-in suites ({', '.join(sorted(set(changes.values())))}) -- "
            "set SAESTEER_DATA_DIR or --data-dir for HarmBench / Alpaca"
        )
    return replace(cfg, **changes)
