"""Causal screen: clamp each candidate feature and measure refusals on harmful and harmless dev prompts.

Two stages, both deterministic (fixed prompt order, greedy decoding, ties broken by feature id):

1. **Cheap screen** (every candidate): one forward pass per prompt with the feature clamped at every
   prompt position, scored by the refusal score at the first assistant position
   (:mod:`saesteer.features.refusal_score`). The activations at the SAE's hook are computed once
   (:class:`ScreenRunner`); each candidate then runs only the layers after the hook (the prefix is
   the same for every candidate), which halves the cost at a middle layer. That fast path is checked
   against a full forward on the first batch and falls back to hooks where it does not match.
   Predicted refusal = score above the threshold calibrated against the judge on baseline generations.
2. **Generation screen** (the best few): greedy generation with the clamp (through
   :class:`~saesteer.steering.engine.Steering`), judged; refusal gain on harmful prompts and
   over-refusal on harmless prompts with 95% intervals (:func:`~saesteer.evaluation.stats.diff_ci`).

Both stages rank by ``gain - penalty * over_refusal``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from saesteer.errors import SaesteerError
from saesteer.evaluation.stats import diff_ci, wilson
from saesteer.features.refusal_score import RefusalTokens, ScoreCalibration, last_logits, length_batches
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE
from saesteer.steering.interventions import ClampFeature
from saesteer.steering.operators import Editor
from saesteer.steering.positions import ForwardInfo


class _Skip(nn.Module):
    """Stands in for a decoder layer whose output is already known: returns its input."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def skipped_layers(adapter: ArchAdapter, n: int) -> Iterator[None]:
    """Temporarily replace the first ``n`` decoder layers by pass-throughs (restored on exit)."""
    saved = [adapter.layers[i] for i in range(n)]
    try:
        for i in range(n):
            adapter.layers[i] = _Skip()
        yield
    finally:
        for i, layer in enumerate(saved):
            adapter.layers[i] = layer


@dataclass
class _Batch:
    index: list[int]
    ids: torch.Tensor
    mask: torch.Tensor
    resid: torch.Tensor  # activation at the hook, model dtype, on the model's device


class ScreenRunner:
    """Refusal scores of a fixed prompt list under clamps of single features, reusing the prefix activations."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        sae: SAE,
        prompts: Sequence[Any],
        tokens: RefusalTokens,
        batch_size: int = 16,
        system_prompt: str | None = None,
        fast: bool = True,
        progress: bool = False,
    ):
        from tqdm.auto import tqdm

        from saesteer.model.generation import encode_chats

        if len(prompts) == 0:
            raise SaesteerError("empty prompt set for the screen; give harmful and harmless dev prompts")
        self.adapter = model if isinstance(model, ArchAdapter) else ArchAdapter(model)
        self.hook = self.adapter.check_sae(sae)
        self.sae = sae
        self.tokens = tokens
        tokens.validate(self.adapter.vocab_size)
        self.n = len(prompts)
        dev = next(self.adapter.model.parameters()).device
        self.batches: list[_Batch] = []
        self.baseline = torch.empty(self.n)
        for idx in tqdm(
            length_batches([len(str(p)) for p in prompts], batch_size),
            desc="screen: cache prefix",
            disable=not progress,
            unit="batch",
        ):
            enc = encode_chats(tokenizer, [prompts[i] for i in idx], system_prompt)
            ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
            resid, logits = self.adapter.run_full(self.hook, ids, mask, mask_positions=True, last_only=True)
            self.baseline[idx] = tokens.score(logits).cpu()
            self.batches.append(_Batch(idx, ids, mask, resid))
        self.n_skip = self._skip_count() if fast else None
        self.fast = self.n_skip is not None and self._verify(self.batches[0])

    def median_resid_norm(self) -> float:
        """Median norm of the cached activations over real tokens (the first token of each row left out)."""
        norms = []
        for b in self.batches:
            real = b.mask.bool().clone()
            first = real.float().argmax(dim=1)
            real[torch.arange(real.shape[0]), first] = False
            norms.append(b.resid.float().norm(dim=-1)[real].cpu())
        allv = torch.cat(norms)
        return float(allv.median()) if allv.numel() else float("nan")

    def _skip_count(self) -> int | None:
        if self.hook.kind == "resid_post":
            return self.hook.layer + 1
        if self.hook.kind == "resid_pre":
            return self.hook.layer
        return None  # mlp_out: the layer's own residual add comes after the hook

    @torch.no_grad()
    def _suffix_logits(self, b: _Batch, x: torch.Tensor) -> torch.Tensor:
        assert self.n_skip is not None
        with skipped_layers(self.adapter, self.n_skip):
            return last_logits(self.adapter, b.ids, b.mask, inputs_embeds=x)

    def _verify(self, b: _Batch) -> bool:
        """Whether the suffix forward from the cached activation reproduces the full forward."""
        try:
            got = self.tokens.score(self._suffix_logits(b, b.resid)).cpu()
        except Exception:  # an architecture whose layers or embeddings do not fit the fast path
            return False
        want = self.baseline[b.index]
        return bool(torch.allclose(got, want, rtol=1e-3, atol=1e-2 * (1.0 + float(want.abs().max()))))

    @torch.no_grad()
    def scores(self, feature: int, value: float) -> torch.Tensor:
        """Refusal score (n,) of every prompt with ``feature`` clamped to ``value`` at all prompt positions."""
        iv = ClampFeature(int(feature), float(value))
        out = torch.empty(self.n)
        if self.fast:
            editor = Editor(self.sae, [iv])
            for b in self.batches:
                info = ForwardInfo(batch=b.ids.shape[0], seq=b.ids.shape[1], past=0, real=b.mask.bool())
                x = editor.apply(b.resid, b.mask.bool(), info)
                out[b.index] = self.tokens.score(self._suffix_logits(b, x)).cpu()
            return out
        from saesteer.steering.engine import Steering

        with Steering(self.adapter, self.sae, [iv], positions="all").apply():
            for b in self.batches:
                out[b.index] = self.tokens.score(last_logits(self.adapter, b.ids, b.mask)).cpu()
        return out


@dataclass
class CheapResult:
    """One candidate's cheap screen: mean scores, their shifts, predicted refusal rates, objective."""

    feature: int
    value: float
    harmful_score: float
    harmless_score: float
    d_harmful_score: float
    d_harmless_score: float
    harmful_pred: float | None
    harmless_pred: float | None
    objective: float

    def key(self, penalty: float) -> tuple[float, float, int]:
        """Sort key, best first: objective, then the penalised score shift, then feature id."""
        return (-self.objective, -(self.d_harmful_score - penalty * self.d_harmless_score), self.feature)


def cheap_result(
    feature: int,
    value: float,
    scores: torch.Tensor,
    base: torch.Tensor,
    harmful: torch.Tensor,
    calib: ScoreCalibration,
    penalty: float,
) -> CheapResult:
    """Summarise a candidate's scores against the baseline (``harmful`` marks the harmful prompts)."""
    hs, ss = scores[harmful], scores[~harmful]
    dh = float(hs.mean() - base[harmful].mean())
    ds = float(ss.mean() - base[~harmful].mean()) if ss.numel() else 0.0
    ph: float | None = None
    ps: float | None = None
    objective = dh - penalty * ds
    if calib.threshold is not None:
        ph, bh = float(calib.predict(hs).float().mean()), float(calib.predict(base[harmful]).float().mean())
        ps = float(calib.predict(ss).float().mean()) if ss.numel() else 0.0
        bs = float(calib.predict(base[~harmful]).float().mean()) if ss.numel() else 0.0
        objective = (ph - bh) - penalty * (ps - bs)
    return CheapResult(
        feature, value, float(hs.mean()), float(ss.mean()) if ss.numel() else math.nan, dh, ds, ph, ps, objective
    )


@dataclass
class Rate:
    """``k`` of ``n`` refused, with the Wilson 95% interval."""

    k: int
    n: int
    rate: float
    lo: float
    hi: float

    @classmethod
    def of(cls, refused: Sequence[bool]) -> Rate:
        k, n = sum(bool(r) for r in refused), len(refused)
        p, lo, hi = wilson(k, n)
        return cls(k, n, p, lo, hi)


@dataclass
class GenResult:
    """One candidate's generation screen against the unsteered baseline."""

    feature: int
    value: float
    harmful: Rate
    harmless: Rate
    gain: tuple[float, float, float]  # harmful refusal rate, steered - baseline: (d, lo, hi)
    over_refusal: tuple[float, float, float]  # harmless refusal rate, steered - baseline
    objective: float
    passes: bool
    significant: bool
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gain"] = dict(zip(("d", "lo", "hi"), self.gain, strict=True))
        d["over_refusal"] = dict(zip(("d", "lo", "hi"), self.over_refusal, strict=True))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenResult:
        def ci(x: dict[str, float]) -> tuple[float, float, float]:
            return (x["d"], x["lo"], x["hi"])

        return cls(
            d["feature"],
            d["value"],
            Rate(**d["harmful"]),
            Rate(**d["harmless"]),
            ci(d["gain"]),
            ci(d["over_refusal"]),
            d["objective"],
            d["passes"],
            d["significant"],
            list(d.get("examples", [])),
        )


def gen_result(
    feature: int,
    value: float,
    harm_refused: Sequence[bool],
    safe_refused: Sequence[bool],
    base_harm: Rate,
    base_safe: Rate,
    penalty: float,
    min_gain: float = 0.0,
    examples: list[dict[str, str]] | None = None,
) -> GenResult:
    """Rates, intervals and the objective; passes when gain > ``min_gain`` and the objective is > 0."""
    h, s = Rate.of(harm_refused), Rate.of(safe_refused)
    gain = diff_ci(h.k, h.n, base_harm.k, base_harm.n)
    over = diff_ci(s.k, s.n, base_safe.k, base_safe.n) if s.n and base_safe.n else (0.0, 0.0, 0.0)
    objective = gain[0] - penalty * over[0]
    return GenResult(
        feature, value, h, s, gain, over, objective, gain[0] > min_gain and objective > 0, gain[1] > 0, examples or []
    )


def generate_judged(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    gen_cfg: Any,
    judge: Any,
    steering: Any = None,
    progress: bool = False,
    desc: str = "generate",
) -> tuple[list[str], list[bool]]:
    """Completions (steered inside ``steering.apply()`` if given) and the judge's refusal verdicts."""
    from saesteer.model.generation import generate

    ctx = steering.apply() if steering is not None else contextlib.nullcontext()
    with ctx:
        outs = generate(model, tokenizer, list(prompts), gen_cfg, progress=progress, desc=desc)
    return outs, list(judge.judge(list(prompts), outs))


def clamp_values(
    features: Sequence[int], ref_max: torch.Tensor, multiple: float, absolute: float | None = None
) -> dict[int, float]:
    """Clamp value per feature: ``absolute`` if given, else ``multiple`` x the feature's max reference
    activation (features never seen active get ``multiple`` x the median max of the active ones)."""
    if absolute is not None:
        return {int(f): float(absolute) for f in features}
    if multiple <= 0:
        raise SaesteerError(f"clamp multiple {multiple} must be > 0 (or give an absolute --clamp-value)")
    alive = ref_max[ref_max > 0]
    floor = float(alive.median()) if alive.numel() else 1.0
    return {int(f): multiple * (float(ref_max[f]) if float(ref_max[f]) > 0 else floor) for f in features}


def screen_pool(rankings: Sequence[Any], per_ranker: int, max_total: int) -> list[int]:
    """Candidates for the causal screen: the top ``per_ranker`` of each ranking, interleaved round-robin
    (rank 1 of every ranker first), without duplicates, at most ``max_total``."""
    if per_ranker < 1 or max_total < 1:
        raise SaesteerError("per-ranker and max-screen counts must be >= 1")
    pool: list[int] = []
    for r in range(per_ranker):
        for ranking in rankings:
            if r < len(ranking.features) and ranking.features[r] not in pool and len(pool) < max_total:
                pool.append(ranking.features[r])
    return pool
