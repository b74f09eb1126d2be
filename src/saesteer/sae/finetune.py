"""KL fine-tune: after MSE training, train the SAE on what the language model does with its output.

The SAE's reconstruction replaces the activation at its hook point and the frozen rest of the model
runs on; the loss is the mean over predicted positions of ``KL(p_clean || p_spliced)``, the next-token
distributions of the clean and the spliced model (Karvonen et al. 2025, arXiv 2503.17272: a short
end-to-end fine-tune closes much of the spliced-CE gap of an MSE-trained SAE). Only the SAE's
parameters train; positions whose activation norm exceeds ``outlier_factor`` times the median (the
attention sink, never in the training data) stay clean, as in evaluation. Adam with linear warmup and
linear decay to zero; the decoder stays on the unit sphere (radial gradient removed, rows renormalised),
as in MSE training. Each step costs two full forwards (clean, spliced) and a backward through the layers
after the hook. A checkpoint every ``checkpoint_every`` steps lets a killed run resume where it stopped.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from saesteer.activations.harvest import HarvestConfig, right_pad, window_stream
from saesteer.activations.store import read_manifest
from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import TopKSAE
from saesteer.sae.checkpoint import load_latest, save_checkpoint
from saesteer.sae.metrics import SaeEvalConfig, evaluate_sae


@dataclass
class FinetuneConfig:
    """The KL fine-tune stage."""

    tokens: int = opt(65_536, "token budget (windows x context_len) of the fine-tune")
    lr: float = opt(1e-4, "peak Adam learning rate")
    warmup_steps: int = opt(5, "steps of linear learning-rate warmup")
    batch_windows: int = opt(4, "windows per step")
    context_len: int = opt(128, "tokens per window")
    outlier_factor: float = opt(8.0, "leave positions unspliced whose norm exceeds this many times the median")
    checkpoint_every: int = opt(25, "steps between checkpoints (with out_dir)")
    out_dir: str | None = opt(None, "checkpoint folder (resumes from it); none: no checkpoints")
    progress: bool = opt(True, "show a progress bar")

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch_windows * self.context_len))


@dataclass
class FinetuneResult:
    """The fine-tuned SAE and what the stage cost."""

    sae: TopKSAE
    steps: int
    tokens: int
    seconds: float
    tokens_per_s: float
    log: list[dict[str, float]] = field(default_factory=list)


def windows_after_harvest(
    acts_dir: str | Path, tokenizer: Any, chat: list[list[dict[str, str]]]
) -> Iterable[list[int]]:
    """Token windows of a harvest's stream that the harvest did not consume (so the SAE never saw them)."""
    manifest = read_manifest(Path(acts_dir))
    if manifest is None or "config" not in manifest:
        raise SaesteerError(f"{acts_dir} is not a harvested activation cache; run `saesteer harvest` first")
    known = set(HarvestConfig.__dataclass_fields__)
    hcfg = HarvestConfig(**{k: v for k, v in manifest["config"].items() if k in known})
    stream = window_stream(hcfg, tokenizer, chat)
    return (ids for ids, _ in itertools.islice(stream, int(manifest["windows_consumed"]), None))


def _splice_mask(act: torch.Tensor, mask: torch.Tensor, factor: float) -> torch.Tensor:
    where = mask.bool()
    if factor > 0:
        norms = act.float().norm(dim=-1)
        where = where & (norms <= factor * norms[where].median())
    return where


def _kl_loss(model: nn.Module, adapter: ArchAdapter, sae: TopKSAE, ids: torch.Tensor, mask: torch.Tensor,
             factor: float) -> torch.Tensor:  # fmt: skip
    """Mean KL(clean || spliced) over valid next-token predictions, differentiable in the SAE's parameters."""
    hp = adapter.check(sae.cfg.hook_name)
    with torch.no_grad():
        act, clean = adapter.run_full(hp, ids, mask)
        ref_logp = F.log_softmax(clean[:, :-1].float(), dim=-1)
        del clean
    where = _splice_mask(act, mask, factor)[..., None]

    def hook(a: torch.Tensor) -> torch.Tensor:
        vals, idx = sae.topk(a.float())
        return torch.where(where, sae.decode_sparse(vals, idx).to(a.dtype), a)

    handle = adapter.add_hook(hp, hook)
    try:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        handle.remove()
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    valid = (mask[:, :-1].bool() & mask[:, 1:].bool()).float()
    return (kl * valid).sum() / valid.sum().clamp_min(1)


def _lr(cfg: FinetuneConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * max(0.0, (cfg.steps - step) / max(1, cfg.steps - cfg.warmup_steps))


def finetune_kl(
    model: nn.Module,
    sae: TopKSAE,
    windows: Iterable[Sequence[int]],
    cfg: FinetuneConfig,
    pad_id: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``sae`` on the model's KL for ``cfg.tokens`` tokens of ``windows``; the model is frozen."""
    if not isinstance(sae, TopKSAE):
        raise SaesteerError("the KL fine-tune trains Top-k SAEs; this SAE is " + type(sae).__name__)
    adapter = ArchAdapter(model)
    dev = next(model.parameters()).device
    tuned = copy.deepcopy(sae).to(dev).float().train().requires_grad_(True)
    opt_ = torch.optim.Adam(tuned.parameters(), lr=cfg.lr)
    step, log, seconds = _resume(cfg, tuned, opt_)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    batches = _batches(windows, cfg, step)
    bar = tqdm(total=cfg.steps, initial=step, desc="kl-finetune", unit="step", disable=not cfg.progress)
    t0 = time.perf_counter()
    try:
        for chunk in batches:
            ids, mask = right_pad([list(w) for w in chunk], pad_id)
            loss = _kl_loss(model, adapter, tuned, ids.to(dev), mask.to(dev), cfg.outlier_factor)
            if not math.isfinite(loss.item()):
                raise SaesteerError(f"the KL fine-tune loss became non-finite at step {step}; lower --lr")
            opt_.zero_grad(set_to_none=True)
            loss.backward()
            _unit_sphere_step(tuned, opt_, _lr(cfg, step))
            step += 1
            log.append({"step": step, "kl": loss.item(), "lr": _lr(cfg, step - 1)})
            bar.update(1)
            bar.set_postfix(kl=f"{loss.item():.4f}", refresh=False)
            if on_step is not None:
                on_step(step, loss.item())
            if cfg.out_dir and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _save(cfg, tuned, opt_, step, log, seconds + time.perf_counter() - t0)
    finally:
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
    seconds += time.perf_counter() - t0
    tokens = step * cfg.batch_windows * cfg.context_len
    if step < cfg.steps:
        raise SaesteerError(f"the fine-tune windows ran out after {step} of {cfg.steps} steps; give more data")
    tuned.eval().requires_grad_(False)
    tuned.cfg.metadata = {**tuned.cfg.metadata, "kl_finetune": {**asdict(cfg), "seconds": seconds}}
    return FinetuneResult(tuned.cpu(), step, tokens, seconds, tokens / seconds if seconds > 0 else 0.0, log)


def _batches(windows: Iterable[Sequence[int]], cfg: FinetuneConfig, start: int) -> Iterable[list[Sequence[int]]]:
    """Steps ``start``.. of the window stream, ``batch_windows`` windows each (windows cut to ``context_len``)."""
    cut = (w[: cfg.context_len] for w in windows if len(w) >= 2)
    it = itertools.islice(cut, start * cfg.batch_windows, None)
    for _ in range(start, cfg.steps):
        chunk = list(itertools.islice(it, cfg.batch_windows))
        if len(chunk) < cfg.batch_windows:
            return
        yield chunk


@torch.no_grad()
def _unit_sphere_step(sae: TopKSAE, opt_: torch.optim.Optimizer, lr: float) -> None:
    g = sae.W_dec.grad
    if g is not None:  # move along the sphere: drop each row's radial gradient
        g -= sae.W_dec * (g * sae.W_dec).sum(dim=1, keepdim=True)
    for group in opt_.param_groups:
        group["lr"] = lr
    opt_.step()
    sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))


def _save(cfg: FinetuneConfig, sae: TopKSAE, opt_: torch.optim.Optimizer, step: int, log: list, seconds: float) -> None:
    assert cfg.out_dir is not None
    tensors = {f"sae.{k}": v for k, v in sae.state_dict().items()}
    for i, p in enumerate(sae.parameters()):
        for key, value in opt_.state.get(p, {}).items():
            tensors[f"opt.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {"config": asdict(cfg) | {"progress": None, "out_dir": None}, "log": log, "seconds": seconds}
    save_checkpoint(cfg.out_dir, step, tensors, meta, keep=1)


def _resume(cfg: FinetuneConfig, sae: TopKSAE, opt_: torch.optim.Optimizer) -> tuple[int, list, float]:
    """(step, log, seconds) of the newest checkpoint in ``cfg.out_dir`` loaded into ``sae`` / ``opt_``; else zeros."""
    found = load_latest(cfg.out_dir) if cfg.out_dir else None
    if found is None:
        return 0, [], 0.0
    tensors, meta = found
    if meta.get("config") != asdict(cfg) | {"progress": None, "out_dir": None}:
        raise SaesteerError(f"checkpoints in {cfg.out_dir} come from another fine-tune config; use another out_dir")
    with torch.no_grad():
        sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = value
    sd = opt_.state_dict()
    sd["state"] = state
    opt_.load_state_dict(sd)
    return int(meta["step"]), list(meta.get("log", [])), float(meta.get("seconds", 0.0))


def finetune_and_measure(
    model: nn.Module,
    tokenizer: Any,
    sae: TopKSAE,
    windows: Iterable[Sequence[int]],
    cfg: FinetuneConfig,
    eval_cfg: SaeEvalConfig,
    *,
    corpus: str | None = None,
    conversations: list[list[dict[str, str]]] | None = None,
) -> dict[str, Any]:
    """Fine-tune, and measure web / chat fidelity before and after: ``{"result", "before", "after", "cost"}``."""
    before = evaluate_sae(model, tokenizer, sae, eval_cfg, corpus=corpus, conversations=conversations)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = finetune_kl(model, sae, windows, cfg, pad_id=pad)
    after = evaluate_sae(model, tokenizer, result.sae, eval_cfg, corpus=corpus, conversations=conversations)
    cost = {
        "tokens": result.tokens,
        "seconds": result.seconds,
        "tokens_per_s": result.tokens_per_s,
        "steps": result.steps,
    }
    return {"result": result, "before": before, "after": after, "cost": cost}
