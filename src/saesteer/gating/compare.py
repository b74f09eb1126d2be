"""Fit every gate variant on one part of the dev data and measure it on the other.

The dev prompts of each role (harmful, look-alikes, Alpaca) split by text hash into a *fit* part
and a *calibration* part (:meth:`GateData.split`). Probes and directions are fit on the fit part's
readouts; every variant (the judge too) is scored on the calibration part, where its threshold is
chosen by the :class:`~saesteer.gating.threshold.Objective` and its firing rates are counted. So the
reported rates are of prompts the scorer never saw (the threshold is one number chosen on them). The
gate saved by ``fit-gate`` is exactly the measured one.

Cost: ``ms_per_prompt`` is what the gate adds to a generation. A probe or direction scores the
activations of the prompt pass the generation runs anyway (timed on real hidden states of 16
calibration prompts); the judge runs one extra full forward of the wrapped request per prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.gating.judge import judge_scores
from saesteer.gating.scorers import diff_in_means, fit_sparse_probe
from saesteer.gating.threshold import Objective, auroc, best_under_budget, choose_threshold
from saesteer.gating.variants import ROLES, GateData, VariantResult, VariantSpec
from saesteer.model.adapter import ArchAdapter
from saesteer.steering.gate import Gate, LatentProbeScorer, fit_probe
from saesteer.steering.readout import position_rules, readouts

Readouts = dict[tuple[str, str], torch.Tensor]


def _by_role(acts: Readouts, key: tuple[str, str], sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    x, out, at = acts[key], {}, 0
    for r in ROLES:
        out[r] = x[at : at + sizes[r]]
        at += sizes[r]
    return out


def _fit_scorer(spec: VariantSpec, fit: dict[str, torch.Tensor], sae: Any, l1: float) -> Any:
    neg_all = torch.cat([fit["hard"], fit["alpaca"]])
    if spec.kind == "probe":
        return fit_probe(fit["harmful"], neg_all, l2=1e-2)
    if spec.kind == "probe_alpaca":
        return fit_probe(fit["harmful"], fit["alpaca"], l2=1e-2)
    if spec.kind == "harm_direction":
        return diff_in_means(fit["harmful"], neg_all)
    if spec.kind == "refusal_direction":
        return diff_in_means(fit["harmful"], fit["alpaca"])
    if spec.kind == "latent_probe":
        feats, w, b = fit_sparse_probe(fit["harmful"], neg_all, l1=l1)
        return LatentProbeScorer(sae, feats, w, b)
    raise SaesteerError(f"no fit for variant kind {spec.kind!r}")


def _score(scorer: Any, x: torch.Tensor) -> torch.Tensor:
    if isinstance(scorer, LatentProbeScorer):  # x holds reduced latents: the probe is linear in them
        return x[:, scorer.features] @ scorer.weight + scorer.bias
    return scorer.token_scores(x)


def _time_gate(gate: Gate, hidden: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, real = hidden
    gate.scores(x, real)  # warm-up: builds the scorer's device caches
    start = time.perf_counter()
    gate.scores(x, real)
    return 1000 * (time.perf_counter() - start) / x.shape[0]


def _measure(cal: dict[str, torch.Tensor], objective: Objective) -> tuple[float, dict[str, tuple[int, int]], float]:
    thr = choose_threshold(cal["harmful"], cal["hard"], cal["alpaca"], objective)
    fired = {r: (int((cal[r] > thr).sum()), int(cal[r].numel())) for r in ROLES}
    rate = {r: k / n for r, (k, n) in fired.items()}
    return thr, fired, rate["harmful"] - objective.lam_hard * rate["hard"] - objective.lam_alpaca * rate["alpaca"]


def _result(
    spec: VariantSpec, cal: dict[str, torch.Tensor], objective: Objective, ms: float, gate: Gate | None,
    features: list[int] | None = None,
) -> VariantResult:  # fmt: skip
    thr, fired, j = _measure(cal, objective)
    _, budget = best_under_budget(cal["harmful"], cal["hard"], cal["alpaca"])
    return VariantResult(
        spec, thr, fired, auroc(cal["harmful"], cal["hard"]), auroc(cal["harmful"], cal["alpaca"]), budget, j, ms,
        features or [], None if gate is None else gate.with_threshold(thr),
    )  # fmt: skip


def compare_variants(
    model: Any,
    tokenizer: Any,
    data: GateData,
    specs: Sequence[VariantSpec],
    objective: Objective | None = None,
    sae: Any = None,
    fit_fraction: float = 0.5,
    batch_size: int = 16,
    system_prompt: str | None = None,
    l1: float = 0.02,
    log: Callable[[str], None] = lambda _m: None,
) -> list[VariantResult]:
    """Fit and measure every variant in ``specs`` (see the module docstring); results in ``specs`` order."""
    obj = objective or Objective()
    if any(s.kind == "latent_probe" for s in specs) and sae is None:
        raise SaesteerError("a latent_probe variant needs an SAE; pass --sae DIR (or drop the variant)")
    fit_d, cal_d = data.split(fit_fraction)
    rule_names = sorted({s.rule for s in specs if s.kind != "judge"})
    rules = list(position_rules(rule_names, tokenizer, system_prompt).values()) if rule_names else []
    hooks = sorted({s.hook for s in specs if s.kind != "judge"})
    latents = sae if any(s.kind == "latent_probe" for s in specs) else None
    acts: dict[str, Readouts] = {}
    sizes: dict[str, dict[str, int]] = {}
    for part, d in (("fit", fit_d), ("cal", cal_d)):
        sizes[part] = {r: len(d.role(r)) for r in ROLES}
        if hooks:
            log(f"readouts of {sum(sizes[part].values())} {part} prompts at {', '.join(hooks)}")
            prompts = [p for r in ROLES for p in d.role(r)]
            acts[part] = readouts(model, tokenizer, prompts, hooks, rules, batch_size, system_prompt, latents)
    hidden = _hidden_states(model, tokenizer, cal_d.harmful[:16], hooks, system_prompt)
    by_name = {r.name: r for r in rules}
    out = []
    for spec in specs:
        if spec.kind == "judge":
            log("judge: one extra forward per calibration prompt")
            s, ms = judge_scores(model, tokenizer, [p for r in ROLES for p in cal_d.role(r)], batch_size=batch_size,
                                 system_prompt=system_prompt)  # fmt: skip
            cal = dict(zip(ROLES, s.split([sizes["cal"][r] for r in ROLES]), strict=True))
            out.append(_result(spec, cal, obj, ms, None))
            continue
        key = ("sae:" + spec.hook if spec.kind == "latent_probe" else spec.hook, spec.rule)
        fit = _by_role(acts["fit"], key, sizes["fit"])
        scorer = _fit_scorer(spec, fit, sae, l1)
        cal = {r: _score(scorer, x) for r, x in _by_role(acts["cal"], key, sizes["cal"]).items()}
        gate = Gate(scorer, 0.0, spec.hook, **by_name[spec.rule].gate_kwargs())
        feats = list(scorer.features) if isinstance(scorer, LatentProbeScorer) else None
        out.append(_result(spec, cal, obj, _time_gate(gate, hidden[spec.hook]), gate, feats))
        if spec.kind == "harm_direction" and (spec.hook, "template_last") in acts["fit"]:
            fit_t = _by_role(acts["fit"], (spec.hook, "template_last"), sizes["fit"])
            refusal = diff_in_means(fit_t["harmful"], fit_t["alpaca"]).weight
            out[-1].extra["cos_refusal_direction"] = float(torch.dot(scorer.weight, refusal))
        log(f"{spec.name}: J={out[-1].objective:+.3f}")
    return out


def _hidden_states(
    model: Any, tokenizer: Any, prompts: Sequence[Any], hooks: Sequence[str], system_prompt: str | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Real prompt-pass hidden states at each hook (for timing the scorers)."""
    from saesteer.model.generation import encode_chats

    if not hooks:
        return {}
    ad = model if isinstance(model, ArchAdapter) else ArchAdapter(model)
    dev = next(ad.model.parameters()).device
    enc = encode_chats(tokenizer, list(prompts), system_prompt)
    ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    return {h: (ad.run_to(h, ids, mask), mask.bool()) for h in hooks}


def best_variant(results: Sequence[VariantResult]) -> VariantResult:
    """The steerable variant (not the judge) with the best objective; ties: the larger AUROC on look-alikes."""
    steerable = [r for r in results if r.gate is not None]
    if not steerable:
        raise SaesteerError("no steerable gate variant was measured; include a probe or direction variant")
    return max(steerable, key=lambda r: (round(r.objective, 9), r.auroc_hard[0]))
