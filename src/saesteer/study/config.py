"""The study's configuration and its profiles (CPU default, GPU with paper-sized samples)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from saesteer.config import opt
from saesteer.errors import SaesteerError

# Sizes for this 2-core CPU (the default) and for a GPU (closer to the paper's samples). A field the
# user sets explicitly wins over its profile value.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {  # the issue-3 SAE (2M tokens, 16k latents, k=32) and small samples: about 1 h on 2 cores
        "n_tokens": 2_000_000,
        "safety_n": 30,
        "alpaca_n": 30,
        "max_new_tokens": 16,
        "mmlu_n": 100,
        "mmlu_shots": 0,
        "truthfulqa_n": 30,
        "gsm8k_n": 6,
        "gsm8k_shots": 2,
        "gsm8k_max_new_tokens": 128,
        "multiturn_n": 8,
        "multiturn_steps": 2,
        "crescendo_n": 0,
        "find_n": 32,
        "find_screen": 16,
        "find_generate": 3,
        "chat_n": 200,
        "chat_tokens": 48,
    },
    "gpu": {
        "n_tokens": 20_000_000,
        "safety_n": 0,
        "alpaca_n": 250,
        "max_new_tokens": 64,
        "mmlu_n": 2000,
        "mmlu_shots": 5,
        "truthfulqa_n": 817,
        "gsm8k_n": 500,
        "gsm8k_shots": 8,
        "gsm8k_max_new_tokens": 256,
        "multiturn_n": 100,
        "multiturn_steps": 0,
        "crescendo_n": 30,
        "find_n": 80,
        "find_screen": 60,
        "find_generate": 10,
        "chat_n": 1000,
        "chat_tokens": 128,
    },
    "tiny": {  # a smoke run of the whole pipeline in minutes (used by the tests)
        "n_tokens": 40_000,
        "safety_n": 6,
        "alpaca_n": 6,
        "max_new_tokens": 6,
        "mmlu_n": 4,
        "mmlu_shots": 0,
        "truthfulqa_n": 3,
        "gsm8k_n": 1,
        "gsm8k_shots": 0,
        "gsm8k_max_new_tokens": 8,
        "multiturn_n": 2,
        "multiturn_steps": 2,
        "crescendo_n": 0,
        "find_n": 6,
        "find_screen": 3,
        "find_generate": 1,
        "chat_n": 8,
        "chat_tokens": 12,
    },
}


@dataclass
class StudyConfig:
    """``saesteer reproduce``: harvest -> train SAE -> find features -> sweep -> evaluate -> report."""

    profile: str = opt("cpu", "sample sizes: cpu (this 2-core machine, ~1 h), gpu (paper-sized samples), tiny")
    out_dir: str = opt("runs/reproduce", "where every stage writes (each stage cached by its inputs, resumable)")
    report_dir: str | None = opt(None, "also copy the report (Markdown, HTML, plots) here, e.g. docs/reproduce")
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data; none: built-ins)")
    hook: str = opt("blocks.12.hook_resid_post", "hook point of the SAE and the steering")
    acts: str | None = opt(None, "reuse this activation cache instead of harvesting")
    sae: str | None = opt(None, "reuse this SAE folder (SAELens layout) instead of harvesting and training")
    n_tokens: int | None = opt(None, "training tokens to harvest (default: the profile's)")
    d_sae: int = opt(16384, "SAE latents")
    k: int = opt(32, "SAE active latents per token")
    chat_fraction: float = opt(0.1, "share of harvest windows from chat conversations (with the model's responses)")
    clamp_multiples: list[float] = opt([1.0, 2.0], "refusal-feature clamp values, as multiples of its max activation")
    direction_coeffs: list[float] = opt([1.0], "difference-in-means baseline: x + C * r (r has the mean-diff norm)")
    gate: str = opt(
        "probe:mean,direction:last",
        "conditional steering's harm detectors, side by side: probe (logistic regression on prompt activations, fit "
        "on dev prompts disjoint from the test sets), direction (difference-in-means projection) or feature; each "
        "with its token reduction (mean, last or tail)",
    )
    gate_fpr: float = opt(0.05, "conditional steering: gate threshold set to this false-positive rate on harmless")
    safety_n: int | None = opt(None, "prompts per safety set (0 = all; default: the profile's)")
    alpaca_n: int | None = opt(None, "Alpaca prompts in the safe sets")
    max_new_tokens: int | None = opt(None, "tokens generated per safety prompt (refusals start early)")
    mmlu_n: int | None = opt(None, "MMLU questions")
    mmlu_shots: int | None = opt(None, "MMLU shots")
    truthfulqa_n: int | None = opt(None, "TruthfulQA MC questions")
    gsm8k_n: int | None = opt(None, "GSM8K problems")
    gsm8k_shots: int | None = opt(None, "GSM8K shots")
    gsm8k_max_new_tokens: int | None = opt(None, "GSM8K tokens per answer")
    multiturn_n: int | None = opt(None, "FRACTURED-SORRY-Bench escalations")
    multiturn_steps: int | None = opt(None, "keep the last N sub-questions of each escalation (0 = all)")
    crescendo_n: int | None = opt(None, "Crescendo objectives (0 = skip the attacker loop)")
    find_n: int | None = opt(None, "dev prompts per side in feature discovery")
    find_screen: int | None = opt(None, "features cheap-screened in discovery")
    find_generate: int | None = opt(None, "features screened by generation in discovery")
    chat_n: int | None = opt(None, "harmful and harmless prompts whose chat conversations join the harvest (each)")
    chat_tokens: int | None = opt(None, "tokens of the model's own responses in those conversations")
    batch_size: int = opt(16, "prompts per batch")
    seed: int = opt(0, "seed of every sample")

    def resolved(self) -> StudyConfig:
        """A copy with every unset size filled from the profile."""
        if self.profile not in PROFILES:
            raise SaesteerError(f"unknown profile {self.profile!r}; use one of {', '.join(PROFILES)}")
        prof = PROFILES[self.profile]
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in prof.items():
            if values.get(key) is None:
                values[key] = value
        return StudyConfig(**values)

    def size(self, name: str) -> int:
        value = getattr(self.resolved() if getattr(self, name) is None else self, name)
        return int(value)
