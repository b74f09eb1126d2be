"""Conditional steering: a gate decides per conversation, from the prompt's activations, whether to steer.

A gate reads the activation at its hook point during the *prompt* forward pass (the call with an
empty KV cache), scores every token with a :class:`Scorer`, reduces the token scores of each
example to one number (``last``: the real token ``offset`` places before the last one, e.g. the
instruction's last token when ``offset`` is the number of post-instruction template tokens; ``mean``
over real tokens; or ``tail``: the mean over the last ``tail`` tokens, e.g. the post-instruction
template tokens), and steers the examples whose
score exceeds ``threshold``. The decision is per example and persists over the decode steps of
that generation. The gate's hook point must come at or before the steering hook point, so the
gate sees unsteered activations and decides before the first edit.

Scorers: :class:`FeatureScorer` (an SAE latent as a harm detector), :class:`ProjectionScorer`
(a linear probe ``x . w + b``, e.g. a difference-in-means direction or :func:`fit_probe`) and
:class:`LatentProbeScorer` (a sparse linear probe on a few SAE latents).
:func:`calibrate` picks the threshold that keeps the false-positive rate on harmless dev prompts
at or below a target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from saesteer.config import atomic_write_bytes
from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter, HookPoint, check_width
from saesteer.sae.base import SAE
from saesteer.steering.interventions import as_direction, check_feature
from saesteer.steering.operators import make_reader

REDUCTIONS = ("last", "mean", "tail")
PROBE_FORMAT = "saesteer.probe.v1"


def same_activation(a: HookPoint, b: HookPoint) -> bool:
    """True for the same point, or ``resid_post.L`` vs ``resid_pre.L+1`` (the same tensor)."""
    if a == b:
        return True
    return any(p.kind == "resid_post" and q.kind == "resid_pre" and q.layer == p.layer + 1 for p, q in ((a, b), (b, a)))


class Scorer(Protocol):
    """Scores every token: activation (batch, seq, d_model) -> (batch, seq) float32."""

    def token_scores(self, x: torch.Tensor) -> torch.Tensor: ...

    def validate(self, d_model: int) -> None: ...


class _SaeLatents:
    """What the SAE-latent scorers share: the SAE's hook, the width check, one latent reader per device."""

    def __init__(self, sae: SAE, features: Sequence[int], topk_exact: bool):
        self.sae = sae
        self.topk_exact = topk_exact
        self._features = list(features)
        self._readers: dict[torch.device, Any] = {}

    @property
    def hook_name(self) -> str:
        return self.sae.cfg.hook_name

    def validate(self, d_model: int) -> None:
        check_width(self.sae.d_in, d_model, "gate SAE")

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """(..., |features|) float32 latents of activations ``x`` (..., d_model)."""
        dev = x.device
        if dev not in self._readers:
            self._readers[dev] = make_reader(self.sae, self._features, dev, self.topk_exact)
        flat = x.reshape(-1, x.shape[-1]).to(torch.float32)
        return self._readers[dev](flat).reshape(*x.shape[:-1], len(self._features))


class FeatureScorer(_SaeLatents):
    """An SAE latent's activation as the score (a harm-detector feature)."""

    def __init__(self, sae: SAE, feature: int, topk_exact: bool = True):
        check_feature("gate feature", feature, sae.d_sae)
        super().__init__(sae, [feature], topk_exact)
        self.feature = feature

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.latents(x)[..., 0]


class ProjectionScorer:
    """A linear score ``x . w + b`` (a linear probe, or a projection on a difference-in-means direction)."""

    def __init__(self, weight: torch.Tensor | Sequence[float], bias: float = 0.0, normalize: bool = False):
        w = as_direction("gate direction", weight)
        if normalize:
            n = float(w.norm())
            if n == 0.0:
                raise SaesteerError("gate direction is all zeros; give a non-zero direction")
            w = w / n
        if not math.isfinite(bias):
            raise SaesteerError(f"gate bias is {bias}; give a finite number")
        self.weight = w
        self.bias = float(bias)
        self._w: dict[torch.device, torch.Tensor] = {}

    hook_name = ""

    def validate(self, d_model: int) -> None:
        if self.weight.shape[0] != d_model:
            raise SaesteerError(
                f"gate direction has {self.weight.shape[0]} dims but the model's d_model is {d_model}; "
                "use a direction or probe fit on this model"
            )

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write the probe (weight, bias) as safetensors, atomically."""
        from safetensors.torch import save

        tensors = {"weight": self.weight.contiguous().clone(), "bias": torch.tensor([self.bias])}
        atomic_write_bytes(path, save(tensors, {"format": PROBE_FORMAT, **(metadata or {})}))

    @classmethod
    def load(cls, path: str | Path) -> tuple[ProjectionScorer, dict[str, str]]:
        """Read a probe written by :meth:`save`; returns (scorer, metadata)."""
        bad = f"{path} is not a saesteer probe file (weight + bias); fit and save a probe"
        missing = f"probe file {path} not found; fit one with fit_probe and save it"
        meta, t = read_tagged_safetensors(path, PROBE_FORMAT, bad, missing)
        if set(t) != {"weight", "bias"}:
            raise SaesteerError(bad)
        return cls(t["weight"], float(t["bias"][0])), meta

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device
        if dev not in self._w:
            self._w[dev] = self.weight.to(dev)
        return x.to(torch.float32) @ self._w[dev] + self.bias


def read_tagged_safetensors(
    path: str | Path, fmt: str, bad: str, missing: str
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file whose metadata ``format`` is ``fmt``; one-line errors otherwise."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise SaesteerError(missing)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            if meta.get("format") != fmt:
                raise SaesteerError(bad)
            return meta, {k: fh.get_tensor(k) for k in fh.keys()}
    except SaesteerError:
        raise
    except Exception:  # safetensors' header errors
        raise SaesteerError(bad) from None


class LatentProbeScorer(_SaeLatents):
    """A linear score on a few SAE latents, ``z_S(x) . w + b`` (a sparse probe: the features it reads are named)."""

    def __init__(self, sae: SAE, features: Sequence[int], weight: torch.Tensor | Sequence[float], bias: float = 0.0):
        feats = [int(f) for f in features]
        if not feats:
            raise SaesteerError("a latent probe needs at least one feature; lower the L1 penalty")
        for f in feats:
            check_feature("latent probe feature", f, sae.d_sae)
        w = torch.as_tensor(weight, dtype=torch.float32).flatten()
        if w.shape[0] != len(feats):
            raise SaesteerError(f"latent probe: {len(feats)} features but {w.shape[0]} weights; give one per feature")
        super().__init__(sae, feats, topk_exact=True)  # exact latents: the full encoder decides Top-k membership
        self.features, self.weight, self.bias = feats, w, float(bias)
        self._weights: dict[torch.device, torch.Tensor] = {}

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._weights:
            self._weights[x.device] = self.weight.to(x.device)
        return self.latents(x) @ self._weights[x.device] + self.bias


def reduce_tokens(x: torch.Tensor, real: torch.Tensor | None, reduce: str, tail: int, offset: int = 0) -> torch.Tensor:
    """Reduce (batch, seq, ...) over the tokens to (batch, ...): the real token ``offset`` places before the
    ``last`` one (the first real token if the prompt is shorter), the ``mean``, or the ``tail`` mean."""
    b, t = x.shape[:2]
    if real is None:
        real = torch.ones(b, t, dtype=torch.bool, device=x.device)
    extra = (1,) * (x.ndim - 2)
    if reduce == "last":
        from_end = real.flip(-1).to(torch.int32).cumsum(-1).flip(-1)  # real tokens at or after p
        pick = real & (from_end <= offset + 1)  # the offset+1 last real tokens; the earliest of them is wanted
        first = pick.to(torch.int8).argmax(-1)
        return x[torch.arange(b, device=x.device), first]
    if reduce == "tail":
        from_end = real.flip(-1).to(torch.int32).cumsum(-1).flip(-1)  # real tokens at or after p
        real = real & (from_end <= tail)
    w = real.to(x.dtype).reshape(b, t, *extra)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


def reduce_scores(
    scores: torch.Tensor, real: torch.Tensor | None, reduce: str, tail: int, offset: int = 0
) -> torch.Tensor:
    """Per-example score (batch,) from token scores (batch, seq), ignoring padding."""
    return reduce_tokens(scores, real, reduce, tail, offset)


@dataclass(frozen=True, eq=False)
class Gate:
    """Steer an example when its reduced prompt score at ``hook`` is above ``threshold``."""

    scorer: Any
    threshold: float = 0.0
    hook: str = ""
    reduce: str = "last"
    tail: int = 5
    offset: int = 0

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise SaesteerError(f"unknown gate reduction {self.reduce!r}; use one of {', '.join(REDUCTIONS)}")
        if self.tail < 1:
            raise SaesteerError(f"gate tail must be >= 1, got {self.tail}")
        if self.offset < 0 or (self.offset and self.reduce != "last"):
            raise SaesteerError(f"gate offset {self.offset}: give an offset >= 0, and only with reduce='last'")
        if not math.isfinite(self.threshold) and self.threshold != -math.inf:
            raise SaesteerError(f"gate threshold is {self.threshold}; give a finite number")
        hook = self.hook or getattr(self.scorer, "hook_name", "")
        if not hook:
            raise SaesteerError("gate needs a hook point, e.g. hook='blocks.12.hook_resid_post'")
        hp = HookPoint.parse(hook)
        own = getattr(self.scorer, "hook_name", "")
        if own and not same_activation(hp, HookPoint.parse(own)):
            raise SaesteerError(
                f"gate SAE was trained on {HookPoint.parse(own).name} but the gate reads {hp.name}; "
                "gate at the SAE's hook point"
            )
        object.__setattr__(self, "hook", hp.name)

    def scores(self, x: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        """Per-example scores (batch,) of a prompt activation (batch, seq, d_model)."""
        return reduce_scores(self.scorer.token_scores(x), real, self.reduce, self.tail, self.offset)

    def decide(self, scores: torch.Tensor) -> torch.Tensor:
        """Which examples to steer (batch,) bool."""
        return scores > self.threshold

    def with_threshold(self, threshold: float) -> Gate:
        return replace(self, threshold=float(threshold))

    def calibrated(self, scores_harmless: torch.Tensor | Sequence[float], target_fpr: float) -> Gate:
        """This gate with the threshold set by :func:`calibrate`."""
        return self.with_threshold(calibrate(scores_harmless, target_fpr))


def calibrate(scores_harmless: torch.Tensor | Sequence[float], target_fpr: float) -> float:
    """The lowest threshold at which at most ``target_fpr`` of the harmless scores lie strictly above it."""
    s = torch.as_tensor(scores_harmless, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise SaesteerError("calibrate: no harmless scores; score a dev split of harmless prompts first")
    if not bool(torch.isfinite(s).all()):
        raise SaesteerError("calibrate: harmless scores contain NaN or inf; check the scorer")
    if not 0.0 <= target_fpr <= 1.0:
        raise SaesteerError(f"calibrate: target_fpr must be in [0, 1], got {target_fpr}")
    allowed = math.floor(target_fpr * s.numel() + 1e-9)  # how many harmless prompts may fire
    if allowed >= s.numel():
        return -math.inf
    desc = s.sort(descending=True).values
    return float(desc[allowed])


def false_positive_rate(scores_harmless: torch.Tensor | Sequence[float], threshold: float) -> float:
    """Fraction of harmless scores above ``threshold``."""
    s = torch.as_tensor(scores_harmless, dtype=torch.float64).flatten()
    return float((s > threshold).double().mean())


def _per_prompt(
    adapter: ArchAdapter | Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    reducers: Sequence[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]],
    batch_size: int,
    system_prompt: str | None,
) -> tuple[ArchAdapter, list[list[torch.Tensor]]]:
    """Run chat prompts in batches, each batch one truncated forward to the deepest hook of ``reducers``; each
    ``(hook, reduce)`` turns a batch's activation at its hook (and the real-token mask) into per-prompt rows."""
    from saesteer.model.generation import encode_chats

    ad = adapter if isinstance(adapter, ArchAdapter) else ArchAdapter(adapter)
    dev = next(ad.model.parameters()).device
    out: list[list[torch.Tensor]] = [[] for _ in reducers]
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            enc = encode_chats(tokenizer, list(prompts[i : i + batch_size]), system_prompt)
            ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
            acts = ad.run_to_all([hook for hook, _ in reducers], ids, mask)
            for rows, x, (_, reduce) in zip(out, acts, reducers, strict=True):
                rows.append(reduce(x, mask.bool()).cpu())
    return ad, out


def prompt_scores(
    adapter: ArchAdapter | Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    gate: Gate,
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> torch.Tensor:
    """The gate's per-prompt scores (N,) on chat prompts, exactly as the gate computes them while steering."""
    return prompt_scores_many(adapter, tokenizer, prompts, [gate], batch_size, system_prompt)[0]


def prompt_scores_many(
    adapter: ArchAdapter | Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    gates: Sequence[Gate],
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> list[torch.Tensor]:
    """:func:`prompt_scores` of several gates from one truncated forward per batch (it records every gate's hook
    point and stops after the deepest), so scoring many gates costs one prompt pass, not one per gate."""
    ad = adapter if isinstance(adapter, ArchAdapter) else ArchAdapter(adapter)
    for g in gates:
        g.scorer.validate(ad.d_model)
    _, out = _per_prompt(ad, tokenizer, prompts, [(g.hook, g.scores) for g in gates], batch_size, system_prompt)
    return [torch.cat(o) if o else torch.zeros(0) for o in out]


def prompt_activations(
    adapter: ArchAdapter | Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    hook: str,
    reduce: str = "mean",
    tail: int = 5,
    batch_size: int = 16,
    system_prompt: str | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Per-prompt activations (N, d_model) at ``hook``, reduced over tokens the way a :class:`Gate` reduces
    scores; a linear probe fit on them scores prompts exactly as the gate will (mean and tail are linear)."""
    if reduce not in REDUCTIONS:
        raise SaesteerError(f"unknown reduction {reduce!r}; use one of {', '.join(REDUCTIONS)}")

    def pool(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return reduce_tokens(x.float(), real, reduce, tail, offset)

    ad, out = _per_prompt(adapter, tokenizer, prompts, [(hook, pool)], batch_size, system_prompt)
    return torch.cat(out[0]) if out[0] else torch.zeros(0, ad.d_model)


def fit_probe(positive: torch.Tensor, negative: torch.Tensor, l2: float = 1e-3, steps: int = 200) -> ProjectionScorer:
    """Logistic-regression probe on (N, d_model) activations: positive (harmful) vs negative (harmless)."""
    if positive.ndim != 2 or negative.ndim != 2 or positive.shape[1] != negative.shape[1]:
        raise SaesteerError("fit_probe: give two (N, d_model) activation matrices of the same width")
    if positive.shape[0] == 0 or negative.shape[0] == 0:
        raise SaesteerError("fit_probe: need at least one positive and one negative example")
    x = torch.cat([positive, negative]).to(torch.float32)
    y = torch.cat([torch.ones(positive.shape[0]), torch.zeros(negative.shape[0])])
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    w_raw = w.detach() / sd
    b_raw = float(b.detach() - (mu * w_raw).sum())
    return ProjectionScorer(w_raw, b_raw)
