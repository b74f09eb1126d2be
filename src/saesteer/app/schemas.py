"""Request bodies of the app's API (pydantic) and the checks that need the loaded model and SAE.

Every bad input ends in a 4xx with a one-line message naming the field and the fix: shapes and types
(422, from pydantic), then ranges that depend on the SAE, the tokenizer and the activation cache (400).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saesteer.app.config import MAX_NEW_TOKENS_LIMIT
from saesteer.app.generation import GenRequest
from saesteer.app.state import AppState, GateDefault, feature_gate
from saesteer.model.generation import encode_chats
from saesteer.steering.gate import FeatureScorer

MAX_MESSAGES = 64
MAX_FEATURES = 16


class BadInput(ValueError):
    """A request that is well-formed but out of range; answered with HTTP 400 and this message."""


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class FeatureValue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feature: int = Field(description="SAE latent index, 0 <= feature < d_sae")
    value: float = Field(allow_inf_nan=False, description="clamp value (finite, within the feature's bounds)")


class GateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    feature: int | None = Field(default=None, description="gate on this SAE latent (default: the app's --gate)")
    threshold: float | None = Field(default=None, allow_inf_nan=False)


class GenerateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    messages: list[Message] | None = Field(None, max_length=MAX_MESSAGES)
    features: list[FeatureValue] = Field(min_length=1, max_length=MAX_FEATURES)
    gate: GateIn = Field(default_factory=lambda: GateIn())
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0, le=5.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, lt=2**31)

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateIn:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (a string) or 'messages' (a chat)")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("'prompt' is empty; type a prompt")
        if self.messages is not None:
            if not self.messages or self.messages[-1].role != "user":
                raise ValueError("'messages' must end with a user message (the turn the model answers)")
        return self


def conversation(body: GenerateIn) -> list[dict[str, str]]:
    if body.messages is not None:
        return [{"role": m.role, "content": m.content} for m in body.messages]
    assert body.prompt is not None
    return [{"role": "user", "content": body.prompt}]


def check_feature(state: AppState, feature: int, what: str) -> None:
    d = state.sae.d_sae
    if not 0 <= feature < d:
        raise BadInput(f"{what}: feature {feature} out of range; this SAE has features 0..{d - 1}")


def to_request(state: AppState, body: GenerateIn) -> GenRequest:
    """Range checks against the SAE, the tokenizer and the feature bounds; the generation request."""
    conv = conversation(body)
    cfg = state.cfg
    chars = sum(len(m["content"]) for m in conv)
    if chars > cfg.max_prompt_chars:
        raise BadInput(f"prompt is {chars} characters; the limit is {cfg.max_prompt_chars} (shorten it)")
    n_tok = int(encode_chats(state.tokenizer, [conv])["input_ids"].shape[1])
    if n_tok > cfg.max_prompt_tokens:
        raise BadInput(f"prompt is {n_tok} tokens after the chat template; the limit is {cfg.max_prompt_tokens}")
    seen: set[int] = set()
    clamps: list[tuple[int, float]] = []
    for fv in body.features:
        check_feature(state, fv.feature, "features")
        if fv.feature in seen:
            raise BadInput(f"feature {fv.feature} is listed twice; give each feature once")
        seen.add(fv.feature)
        b = state.browser.value_bounds(fv.feature)
        if not b["lo"] <= fv.value <= b["hi"]:
            raise BadInput(
                f"feature {fv.feature}: value {fv.value:g} is outside [{b['lo']:.4g}, {b['hi']:.4g}] ({b['basis']})"
            )
        clamps.append((fv.feature, float(fv.value)))
    gate, spec = None, None
    if body.gate.enabled:
        g = body.gate
        if g.feature is not None:
            check_feature(state, g.feature, "gate")
            if g.threshold is None:
                raise BadInput("gate: give a threshold with the gate feature (score > threshold steers)")
            default = feature_gate(state.sae, g.feature, g.threshold, cfg.gate_reduce)
        elif state.gate is not None:
            default = state.gate
            if g.threshold is not None:
                scorer = default.gate.scorer
                if isinstance(scorer, FeatureScorer):
                    default = feature_gate(state.sae, scorer.feature, g.threshold, default.gate.reduce)
                else:
                    default = GateDefault(default.gate.with_threshold(g.threshold), None, default.description)
        else:
            raise BadInput("gate: no gate configured; give a gate feature and threshold, or start the app with --gate")
        gate, spec = default.gate, default.spec
    return GenRequest(
        conversation=conv,
        clamps=clamps,
        gate=gate,
        gate_spec=spec,
        max_new_tokens=body.max_new_tokens,
        do_sample=body.do_sample,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
    )
