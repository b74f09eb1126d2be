"""A cheap, sensitive capability measure: how far steering moves the model on its own harmless answers.

For harmless dev prompts ``x_i`` the unsteered model answers greedily, ``y_i = (y_1 .. y_m)``. Teacher-forcing
``y_i`` after the chat-formatted ``x_i``, the unsteered next-token distribution is ``p_t`` and the steered one
``q_t`` at each answer position ``t``. Per prompt (means over its ``m`` answer tokens):

* ``KL_i = mean_t sum_v p_t(v) (log p_t(v) - log q_t(v))`` -- KL(unsteered || steered), in nats per token;
* ``CE_i = -mean_t log q_t(y_t)`` (steered) and ``CE0_i = -mean_t log p_t(y_t)`` (unsteered).

Reported: mean KL with a Student-t interval over prompts, mean CE of both, and the paired difference
``CE - CE0`` (paired t). No generation under steering, so it costs two forward passes per prompt.

A gated steering decides once per prompt from the prompt alone (as in generation, where the gate judges the
prompt pass); prompts it does not fire on are unsteered, so their KL is exactly 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.evaluation.gated import firing_summary, gate_decisions, ungated
from saesteer.evaluation.loglik import last_logprobs
from saesteer.evaluation.paired import paired_mean_diff_ci
from saesteer.evaluation.stats import mean_ci
from saesteer.model.generation import GenerationConfig, generate, to_messages
from saesteer.steering.engine import Steering

SteeringContext = Steering | Callable[[], AbstractContextManager[Any]]


@dataclass
class DivergenceResult:
    """KL and cross-entropy of a steered model on the unsteered model's answers, over ``n`` prompts."""

    n: int
    tokens: int
    kl: float
    kl_ci: tuple[float, float]
    ce_steered: float
    ce_base: float
    delta_ce: float
    delta_ce_ci: tuple[float, float]
    seconds: float
    method: str = "KL(unsteered||steered) and CE per answer token, teacher-forced; t intervals over prompts"
    settings: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def base_responses(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 64, batch_size: int = 8
) -> list[str]:
    """The unsteered model's greedy answers (call with no steering attached)."""
    return generate(
        model, tokenizer, list(prompts), GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    )


def _rows(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], system_prompt: str | None) -> list[Any]:
    rows = []
    for p, r in zip(prompts, responses, strict=True):
        chat = tokenizer.apply_chat_template(to_messages(p, system_prompt), tokenize=False, add_generation_prompt=True)
        ctx = tokenizer(chat, add_special_tokens=False)["input_ids"]
        ans = tokenizer(r, add_special_tokens=False)["input_ids"]
        if not ans:
            raise SaesteerError(f"empty response to {p[:40]!r}; drop it or generate longer answers")
        rows.append((list(ctx) + list(ans)[:-1], list(ans)))
    return rows


def _scores(model: Any, rows: Sequence[Any], pad_id: int, batch_size: int, steered: list[bool] | None, ctx: Any) -> Any:
    """Per row: (KL, CE steered, CE base) means over its answer tokens."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        keep = max(len(a) for _, a in batch)
        base = last_logprobs(model, [r for r, _ in batch], keep, pad_id)
        on = steered[start : start + batch_size] if steered is not None else [True] * len(batch)
        if any(on):
            with ctx():
                q = last_logprobs(model, [r for r, _ in batch], keep, pad_id)
        for b, (_, ans) in enumerate(batch):
            m = len(ans)
            lp = base[b, keep - m :]
            lq = q[b, keep - m :] if on[b] else lp
            tgt = torch.tensor(ans, device=lp.device)[:, None]
            kl = (lp.exp() * (lp - lq)).sum(-1).mean()
            out.append((float(kl), float(-lq.gather(-1, tgt).mean()), float(-lp.gather(-1, tgt).mean()), m))
    return out


@torch.no_grad()
def steering_divergence(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    steering: SteeringContext,
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> DivergenceResult:
    """KL and CE of the steered model on ``responses`` (the unsteered model's answers to ``prompts``).
    ``steering``: a :class:`Steering` (a gated one decides per prompt) or a factory of a context manager that
    steers ``model`` inside it."""
    if len(prompts) != len(responses) or not prompts:
        raise SaesteerError(f"give one response per prompt (got {len(prompts)} prompts, {len(responses)} responses)")
    t0 = time.perf_counter()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = _rows(tokenizer, prompts, responses, system_prompt)
    fired: list[bool] | None = None
    settings: dict[str, Any] = {"batch_size": batch_size}
    if isinstance(steering, Steering):
        if steering.gate is not None:
            fired = gate_decisions(model, tokenizer, steering.gate, prompts, batch_size, system_prompt)
            settings["gate"] = firing_summary(fired)
            plain = ungated(steering)
        else:
            plain = steering
        ctx: Callable[[], AbstractContextManager[Any]] = lambda: plain.apply(model)  # noqa: E731
    else:
        ctx = steering
    per = _scores(model, rows, pad_id, batch_size, fired, ctx)
    kl, ce_q, ce_p = [x[0] for x in per], [x[1] for x in per], [x[2] for x in per]
    k_mean, k_lo, k_hi = mean_ci(kl) if len(kl) > 1 else (kl[0], float("nan"), float("nan"))
    d = paired_mean_diff_ci(ce_q, ce_p)
    records = [{"kl": a, "ce_steered": b, "ce_base": c, "tokens": m} for a, b, c, m in per]
    return DivergenceResult(
        n=len(per),
        tokens=sum(x[3] for x in per),
        kl=k_mean,
        kl_ci=(max(0.0, k_lo), k_hi),
        ce_steered=sum(ce_q) / len(ce_q),
        ce_base=sum(ce_p) / len(ce_p),
        delta_ce=d.estimate,
        delta_ce_ci=(d.lo, d.hi),
        seconds=time.perf_counter() - t0,
        settings=settings,
        records=records,
    )
