"""The study's configuration: the stage configs, nested, and profiles that size them.

``StudyConfig`` composes the configs of the stages it runs (harvest, SAE training, feature discovery, the
sweep design, generation, safety, capability and multi-turn evaluation) plus the few settings that are the
study's own (where it writes, the hook, the seed, the dev-split sizes). A profile is a set of defaults for
those nested fields; ``StudyConfig.from_profile("cpu", {"train.d_sae": 4096})`` starts from the profile and
applies the overrides (nested dicts or dotted keys; an unknown key is an error).

The study sets some nested fields itself (paths, hook, seed, data directory: :data:`STUDY_OWNED`), so they
are the same in every stage; :meth:`StudyConfig.validate` rejects a value there with the study-level
option to use instead.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from saesteer.activations.harvest import HarvestConfig
from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.evaluation.capability import CapabilityConfig
from saesteer.evaluation.multiturn import MultiTurnConfig
from saesteer.evaluation.safety import SafetyConfig
from saesteer.features.config import FindFeaturesConfig
from saesteer.model.generation import GenerationConfig
from saesteer.report.results import KINDS
from saesteer.sae.finetune import FinetuneConfig
from saesteer.sae.train import TrainConfig
from saesteer.study.design import SweepConfig


@dataclass
class ChatDataConfig:
    """The model's own chat conversations that join the harvest (so the SAE sees chat-formatted text)."""

    n: int = opt(200, "harmful and harmless prompts (each) whose conversations join the harvest")
    max_new_tokens: int = opt(48, "tokens of the model's own response in each conversation")


@dataclass
class DevConfig:
    """Sizes of the dev-split stages (none of these prompts is ever scored as a test result)."""

    direction_n: int = opt(64, "harmful and harmless prompts (each) of the difference-in-means direction")
    probe_n: int = opt(120, "harmful prompts the harm probe of a probe gate is fit on (harmless: twice as many)")
    gate_calibration_n: int = opt(64, "harmless prompts the gate thresholds are calibrated on")
    choice_n: int = opt(24, "prompts per side on which the headline clamp value and gate are chosen")
    sae_eval_texts: int = opt(32, "corpus texts of the spliced SAE metrics (CE / KL increase)")


@dataclass
class EvaluateConfig:
    """What the sweep measures beyond the stage configs."""

    crescendo_n: int = opt(0, "Crescendo objectives (0 = skip the attacker loop)")
    multiturn_max_new_tokens: int = opt(48, "tokens per target turn in the multi-turn attacks")
    capability_on: str = opt(
        "headline",
        "conditions the capability benchmarks run on: headline (baseline, dev-chosen clamp, control, best gate, "
        "direction) or all",
    )
    capability_skip: list[str] = opt(
        [], "condition kinds left out of the capability benchmarks (e.g. direction; the KL / CE measure still runs)"
    )
    crescendo_skip: list[str] = opt([], "condition kinds Crescendo does not attack (e.g. conditional direction)")
    examples: int = opt(3, "example completions per condition shown side by side in the report")
    mmlu_per_subject: int = opt(0, "MMLU test questions per subject (0: capability.mmlu_n over all subjects)")
    humaneval_n: int = opt(20, "HumanEval problems (pass@1, greedy; 0 = skip)")
    humaneval_max_new_tokens: int = opt(384, "tokens generated per HumanEval answer")
    divergence_n: int = opt(24, "harmless dev prompts of the KL / cross-entropy measure")
    divergence_max_new_tokens: int = opt(48, "tokens of the unsteered responses the KL / CE measure scores")
    variant_attacks: bool = opt(
        True, "generate FRACTURED under every gate variant (gate_variants stage; off: the chosen gate's only)"
    )
    gate_variants: bool = opt(
        True, "score every dev-fit gate variant on the test items beside the chosen gate (the gate_variants stage)"
    )
    compose_gated: bool = opt(
        False,
        "a gated condition's safety and capability outcome per item is its ungated clamp's where the gate fires and "
        "the baseline's where not, both already measured: compose them instead of generating again",
    )
    unchosen: bool = opt(True, "also score on test the clamp values and gates the dev choice did not pick")


@dataclass
class StudyConfig:
    """``saesteer reproduce``: harvest -> train SAE -> find features -> choose on dev -> sweep -> report."""

    profile: str = opt(
        "cpu", "sample sizes: tiny (smoke), cpu, full, gpu (paper-sized); what each runs and costs: docs/study.md"
    )
    out_dir: str = opt("runs/reproduce", "where every stage writes (each stage cached by its inputs, resumable)")
    report_dir: str | None = opt(
        None, "also publish the report here (a new or empty folder, or an earlier report it replaces)"
    )
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data; none: built-ins)")
    hook: str = opt("blocks.12.hook_resid_post", "hook point of the SAE and the steering")
    acts: str | None = opt(None, "reuse this activation cache instead of harvesting")
    sae: str | None = opt(None, "reuse this SAE folder (SAELens layout) instead of harvesting and training")
    seed: int = opt(0, "seed of every sample, of the SAE initialisation and of the batch order")
    seeds: int = opt(1, "repeat SAE training, feature discovery and the headline conditions over this many seeds")
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    chat: ChatDataConfig = field(default_factory=ChatDataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    features: FindFeaturesConfig = field(default_factory=FindFeaturesConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    dev: DevConfig = field(default_factory=DevConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    capability: CapabilityConfig = field(default_factory=CapabilityConfig)
    multiturn: MultiTurnConfig = field(default_factory=MultiTurnConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    @classmethod
    def from_profile(cls, profile: str = "cpu", overrides: Mapping[str, Any] | None = None) -> StudyConfig:
        """The profile's config with ``overrides`` applied (nested dicts or dotted keys), validated."""
        if profile not in PROFILES:
            raise SaesteerError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
        cfg = cls(profile=profile)
        apply_overrides(cfg, STUDY_DEFAULTS, where="study defaults")
        apply_overrides(cfg, PROFILES[profile], where=f"profile {profile}")
        apply_overrides(cfg, overrides or {})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise a one-line error for a bad profile, seed count or a study-owned nested field that was set."""
        if self.profile not in PROFILES:
            raise SaesteerError(f"unknown profile {self.profile!r}; use one of {', '.join(PROFILES)}")
        if self.seeds < 1:
            raise SaesteerError(f"seeds={self.seeds}; use 1 or more")
        if self.seeds > 1 and self.sae:
            raise SaesteerError("seeds > 1 retrains the SAE; drop --sae (reuse a harvest with --acts instead)")
        if self.evaluate.capability_on not in ("headline", "all"):
            raise SaesteerError(f"evaluate.capability_on={self.evaluate.capability_on!r}; use headline or all")
        for name in ("capability_skip", "crescendo_skip"):
            bad = [k for k in getattr(self.evaluate, name) if k not in KINDS]
            if bad:
                raise SaesteerError(f"evaluate.{name}: unknown condition kind {bad[0]!r}; use {', '.join(KINDS)}")
        for dotted, top in STUDY_OWNED.items():
            section, name = dotted.split(".")
            sub = getattr(self, section)
            f = next(f for f in dataclasses.fields(sub) if f.name == name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
            if getattr(sub, name) != default:
                raise SaesteerError(f"{dotted} is set by the study; set {top} instead")


#: nested fields the study sets itself -> the study-level option that sets them
STUDY_OWNED: dict[str, str] = {
    "harvest.out_dir": "out_dir",
    "harvest.hook": "hook",
    "harvest.corpus": "data_dir (the corpus is the data directory's, else the built-in one)",
    "harvest.chat_file": "chat.n / chat.max_new_tokens",
    "harvest.seed": "seed",
    "train.out_dir": "out_dir",
    "train.seed": "seed",
    "train.total_tokens": "harvest.n_tokens (the SAE trains on every harvested token once)",
    "finetune.out_dir": "out_dir",
    "finetune.context_len": "harvest.context_len",
    "finetune.outlier_factor": "harvest.outlier_factor",
    "features.sae": "sae",
    "features.out": "out_dir",
    "features.data_dir": "data_dir",
    "features.seed": "seed",
    "features.harmful": "the split plan (saesteer.evaluation.selection): the screen's dev prompts",
    "features.harmless": "the split plan (saesteer.evaluation.selection): the screen's dev prompts",
    "features.rank_harmful": "the split plan (saesteer.evaluation.selection): the rankers' dev prompts",
    "features.rank_harmless": "the split plan (saesteer.evaluation.selection): the rankers' dev prompts",
    "features.n_harmless": "features.n_harmful (the screen draws the same number per side)",
    "features.control_multiple": "sweep.clamp_values (the control is checked at the strongest clamp)",
    "safety.data_dir": "data_dir",
    "safety.seed": "seed",
    "capability.data_dir": "data_dir",
    "capability.seed": "seed",
    "multiturn.data_dir": "data_dir",
    "multiturn.seed": "seed",
    "multiturn.checkpoint": "out_dir",
    "generation.seed": "seed",
}

#: the study's own defaults, under every profile
STUDY_DEFAULTS: dict[str, Any] = {
    "sweep.clamp_values": [1.0, 2.0],
    "sweep.clamp_units": "max",
    "sweep.gate": "fitted,direction:last",
    "sweep.direction_coeffs": [1.0],
}

PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {  # a smoke run of the whole pipeline in minutes (the tests use it)
        "harvest.n_tokens": 40_000,
        "harvest.held_out_tokens": 4096,
        "harvest.shard_tokens": 8192,
        "chat.n": 8,
        "chat.max_new_tokens": 12,
        "train.batch_size": 800,
        "finetune.tokens": 512,
        "finetune.batch_windows": 2,
        "features.n_harmful": 6,
        "features.n_rank": 12,
        "features.n_attribution": 6,
        "features.max_screen": 3,
        "features.n_generate": 1,
        "dev.direction_n": 8,
        "dev.probe_n": 8,
        "dev.gate_calibration_n": 8,
        "dev.choice_n": 4,
        "dev.sae_eval_texts": 4,
        "generation.max_new_tokens": 6,
        "safety.n": 6,
        "safety.alpaca_n": 6,
        "capability.mmlu_n": 4,
        "capability.mmlu_shots": 0,
        "capability.truthfulqa_n": 3,
        "capability.gsm8k_n": 1,
        "capability.gsm8k_shots": 0,
        "capability.gsm8k_max_new_tokens": 8,
        "multiturn.n": 2,
        "multiturn.max_steps": 2,
        "evaluate.examples": 2,
        "evaluate.humaneval_n": 1,
        "evaluate.humaneval_max_new_tokens": 16,
        "evaluate.divergence_n": 4,
        "evaluate.divergence_max_new_tokens": 8,
    },
    "cpu": {  # the default, sized to <= 60 min on a 2-core CPU: a 600k-token 16k-latent SAE, small test samples,
        # capability as HumanEval + the KL/CE measure (the log-likelihood benchmarks run in the full profile)
        "harvest.n_tokens": 600_000,
        "harvest.held_out_tokens": 65_536,
        "harvest.shard_tokens": 250_000,
        "chat.n": 200,
        "chat.max_new_tokens": 48,
        "train.batch_size": 4096,
        # AuxK revives latents silent for the window that counts them dead: the 500k default revives too late
        # for a run this short (held-out dead 38% -> 14% at the same FVU on 2M tokens, docs/study.md)
        "train.dead_tokens": 65_536,
        "finetune.tokens": 0,
        "features.n_harmful": 32,
        "features.n_rank": 64,
        "features.n_attribution": 32,
        "features.max_screen": 12,
        "features.n_generate": 2,
        "generation.max_new_tokens": 16,
        "safety.n": 30,
        "safety.alpaca_n": 30,
        "capability.mmlu_n": 0,
        "capability.mmlu_shots": 5,
        "capability.truthfulqa_n": 0,
        "capability.gsm8k_n": 0,
        "capability.gsm8k_shots": 0,
        "capability.gsm8k_max_new_tokens": 128,
        "multiturn.n": 8,
        "multiturn.max_steps": 2,
        "evaluate.humaneval_n": 20,
        "evaluate.humaneval_max_new_tokens": 256,
        "evaluate.divergence_n": 24,
        "evaluate.variant_attacks": False,
    },
    "gpu": {  # paper-sized samples
        "harvest.n_tokens": 20_000_000,
        "harvest.held_out_tokens": 65_536,
        "harvest.shard_tokens": 262_144,
        "chat.n": 1000,
        "chat.max_new_tokens": 128,
        "train.batch_size": 4096,
        "finetune.tokens": 262_144,
        "features.n_harmful": 80,
        "features.max_screen": 60,
        "features.n_generate": 10,
        "generation.max_new_tokens": 64,
        "safety.n": None,
        "safety.alpaca_n": 250,
        "capability.mmlu_n": 2000,
        "capability.mmlu_shots": 5,
        "capability.truthfulqa_n": 817,
        "capability.gsm8k_n": 500,
        "capability.gsm8k_shots": 8,
        "capability.gsm8k_max_new_tokens": 256,
        "multiturn.n": 100,
        "evaluate.crescendo_n": 30,
        "evaluate.capability_on": "all",
        "evaluate.humaneval_n": 164,
        "evaluate.humaneval_max_new_tokens": 512,
        "evaluate.divergence_n": 64,
    },
}
# the full profile: the cpu profile's stages up to the sweep (same inputs, so its caches serve) and test sets at
# their full size; capability on the headline conditions only
PROFILES["full"] = {
    **PROFILES["cpu"],  # so every stage before the sweep has the cpu profile's inputs, and its caches serve
    "safety.n": None,
    "safety.alpaca_n": 300,
    "safety.unseen": False,  # the generalisation check on unseen sets is the cpu report's; ~7 min of generation
    "evaluate.mmlu_per_subject": 10,
    "capability.batch_size": 16,
    "capability.generate_batch_size": 32,  # HumanEval / GSM8K: 0.74x the time of 16 (bench/drop_finished.py)
    "capability.mmlu_shots": 5,
    "capability.share_prefix": True,  # per-subject shots and the TruthfulQA primer run once: ~4x less prefill
    "capability.truthfulqa_n": 100,
    "capability.gsm8k_n": 150,
    "capability.gsm8k_shots": 0,  # chat, zero-shot: four shots would add ~800 prompt tokens per question
    "capability.gsm8k_max_new_tokens": 256,
    "multiturn.n": 60,
    "multiturn.max_turns": 2,  # each attacker turn reads a ~2k-token system prompt: ~3 min per turn of 20 attacks
    "evaluate.crescendo_n": 20,
    # Crescendo on the baseline and the chosen clamp only: the paper's multi-turn claim is the clamp's (~7 min a
    # condition; FRACTURED, ~1.5 min, still attacks every condition)
    "evaluate.crescendo_skip": ["direction", "control", "conditional"],
    "evaluate.gate_variants": False,  # the variants' table is the cpu report's; saves ~13 min
    "evaluate.capability_on": "headline",
    "evaluate.compose_gated": True,
    "evaluate.unchosen": False,
    "evaluate.humaneval_n": 164,
    "evaluate.humaneval_max_new_tokens": 384,
}


def apply_overrides(cfg: Any, overrides: Mapping[str, Any], where: str = "config") -> None:
    """Set ``cfg``'s (nested) fields from ``overrides``: ``{"train": {"k": 16}}`` or ``{"train.k": 16}``."""
    for key, value in overrides.items():
        head, _, rest = str(key).partition(".")
        names = {f.name for f in dataclasses.fields(cfg)}
        if head not in names:
            raise SaesteerError(
                f"{where}: unknown option {key!r} of {type(cfg).__name__}; known: {', '.join(sorted(names))}"
            )
        current = getattr(cfg, head)
        if rest:
            if not dataclasses.is_dataclass(current):
                raise SaesteerError(f"{where}: {head!r} has no sub-options (got {key!r})")
            apply_overrides(current, {rest: value}, where)
        elif dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            apply_overrides(current, value, where)
        elif dataclasses.is_dataclass(current):
            raise SaesteerError(f"{where}: {key!r} is a section; give a mapping of its options")
        else:
            setattr(cfg, head, copy.deepcopy(value))
