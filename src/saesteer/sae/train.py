"""Train a Top-k SAE on a stream of activation batches, with checkpoints and exact resume.

The recipe (Gao et al. 2024; O'Brien et al. 2024): Top-k activation, AuxK loss on dead latents,
unit-norm decoder rows with the radial gradient removed, ``b_dec`` initialised from the data (mean or
geometric median), encoder initialised as the decoder transpose, inputs scaled so E||x|| = sqrt(d_in)
(folded into the weights at save time), Adam with linear warmup and a linear decay to zero, the encoder
matmul in bf16, and sparse decode / sparse encoder backward (see :mod:`saesteer.sae.kernels`).

Batches come from ``batches(start_step)``: a callable returning an iterator of [N, d_in] tensors that
starts at batch ``start_step`` (so a resumed run sees exactly the batches it had not seen yet), e.g.
``lambda s: store.batches(cfg.batch_size, shuffle=True, seed=cfg.seed, start_step=s)``.

Data-parallel (:func:`train_from_cache` under ``torchrun``): ``batch_size`` is the global batch; rank r
reads the r-th of ``world`` consecutive slices of it, gradients are averaged with ``all_reduce``, so one
step is one global batch and the throughput is ``tokens / seconds`` over all processes. Only rank 0
writes or deletes files.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saesteer.activations.distributed import barrier, distributed, local_device
from saesteer.activations.store import ActivationStore
from saesteer.config import atomic_write_json, atomic_write_text, config_to_dict, opt
from saesteer.errors import SaesteerError
from saesteer.sae.base import TopKSAE
from saesteer.sae.checkpoint import list_checkpoints, load_latest, save_checkpoint
from saesteer.sae.io import save_sae
from saesteer.sae.trainer import TopKTrainer

BatchSource = Callable[[int], Iterable[torch.Tensor]]
# config fields that must match for a checkpoint to be resumed
_RESUME_KEYS = (
    "k",
    "d_sae",
    "lr",
    "warmup_steps",
    "decay_frac",
    "batch_size",
    "total_tokens",
    "auxk_alpha",
    "k_aux",
    "dead_tokens",
    "seed",
    "b_dec_init",
    "compute_dtype",
    "adam_beta1",
    "adam_beta2",
    "adam_eps",
)
_COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class TrainConfig:
    """Top-k SAE training (``saesteer train-sae``)."""

    k: int = opt(32, "active latents per token (Top-k)")
    d_sae: int = opt(16384, "number of latents (dictionary width)")
    lr: float = opt(
        2e-3,
        "peak Adam learning rate (short ~2M-token runs learn fastest near 1e-3..4e-3; runs of 100M+ tokens want ~2e-4)",
    )
    warmup_steps: int = opt(50, "steps of linear learning-rate warmup")
    decay_frac: float = opt(0.2, "final fraction of the steps over which the learning rate decays linearly to 0")
    batch_size: int = opt(4096, "tokens per optimisation step")
    total_tokens: int = opt(2_048_000, "training tokens (steps = total_tokens // batch_size)")
    auxk_alpha: float = opt(1 / 32, "weight of the AuxK loss that revives dead latents")
    k_aux: int | None = opt(None, "latents in the AuxK reconstruction (default d_in // 2)")
    dead_tokens: int = opt(500_000, "AuxK revives latents that fired zero times in this many tokens")
    dead_window: int = opt(
        65_536, "report a latent as dead if it fired zero times in this many tokens (sae-eval uses the same window)"
    )
    checkpoint_every: int = opt(100, "steps between checkpoints (a killed run loses at most this many)")
    keep_checkpoints: int = opt(2, "how many checkpoints to keep (older ones are deleted)")
    seed: int = opt(0, "seed of the weight initialisation and of the batch order")
    b_dec_init: str = opt("geometric_median", "decoder bias init from the first batch: geometric_median, mean, zeros")
    compute_dtype: str = opt("bf16", "dtype of the encoder matmul (autocast): bf16, fp16 or fp32")
    adam_beta1: float = opt(0.9, "Adam beta1")
    adam_beta2: float = opt(0.999, "Adam beta2")
    adam_eps: float = opt(1e-8, "Adam epsilon")
    device: str = opt("auto", "training device: auto (cuda if available), cpu, cuda, cuda:N")
    out_dir: str = opt("runs/sae", "output folder: sae/ (SAELens layout), checkpoints/, train_log.jsonl")
    resume: bool = opt(True, "resume from the newest checkpoint in out_dir (false: delete old checkpoints, start over)")
    log_every: int = opt(10, "steps between log lines (and progress-bar updates)")
    progress: bool = opt(True, "show a progress bar with live FVU, L0 and dead %")

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    def validate(self) -> None:
        if self.batch_size < 1 or self.total_steps < 1:
            raise SaesteerError(
                f"total_tokens ({self.total_tokens}) must be at least one batch ({self.batch_size}); raise total_tokens"
            )
        if not 1 <= self.k <= self.d_sae:
            raise SaesteerError(f"need 1 <= k <= d_sae (got k={self.k}, d_sae={self.d_sae})")
        if self.compute_dtype not in _COMPUTE_DTYPES:
            raise SaesteerError(f"unknown compute_dtype {self.compute_dtype!r}; use bf16, fp16 or fp32")
        if self.lr <= 0 or not 0 <= self.decay_frac <= 1 or self.checkpoint_every < 1:
            raise SaesteerError("need lr > 0, 0 <= decay_frac <= 1 and checkpoint_every >= 1")


@dataclass
class TrainResult:
    """What :func:`train_sae` produced."""

    sae: TopKSAE
    sae_dir: Path
    steps: int
    tokens: int
    tokens_per_s: float
    log: list[dict[str, Any]] = field(default_factory=list)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SaesteerError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return dev


def make_trainer(cfg: TrainConfig, d_in: int) -> TopKTrainer:
    """A fresh :class:`TopKTrainer` for ``cfg`` and activations of width ``d_in``."""
    cfg.validate()
    return TopKTrainer(
        d_in, cfg.d_sae, cfg.k, lr=cfg.lr, warmup_steps=cfg.warmup_steps, decay_frac=cfg.decay_frac,
        total_steps=cfg.total_steps, auxk_alpha=cfg.auxk_alpha, k_aux=cfg.k_aux, dead_tokens=cfg.dead_tokens,
        compute_dtype=_COMPUTE_DTYPES[cfg.compute_dtype], device=_device(cfg.device), seed=cfg.seed,
        betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, dead_window=cfg.dead_window,
    )  # fmt: skip


def _resume_key(cfg: TrainConfig, d_in: int) -> dict[str, Any]:
    d = config_to_dict(cfg)
    return {"d_in": d_in, **{k: d[k] for k in _RESUME_KEYS}}


def _try_resume(trainer: TopKTrainer, cfg: TrainConfig, d_in: int, ckpt_dir: Path) -> list[dict[str, Any]] | None:
    """Load the newest checkpoint into ``trainer``; returns its log, or None if there is none."""
    if not cfg.resume:
        old = list_checkpoints(ckpt_dir) if trainer.rank == 0 else []
        if old:
            print(f"saesteer: --no-resume: deleting old checkpoints in {ckpt_dir}", file=sys.stderr)
            for path in old:
                shutil.rmtree(path)
        barrier()  # the others must not look at checkpoints while rank 0 deletes them
        return None
    found = load_latest(ckpt_dir)
    if found is None:
        return None
    tensors, meta = found
    want = _resume_key(cfg, d_in)
    diff = {k: (meta.get("config", {}).get(k), v) for k, v in want.items() if meta.get("config", {}).get(k) != v}
    if diff:
        first = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in list(diff.items())[:3])
        raise SaesteerError(
            f"checkpoints in {ckpt_dir} come from a different run ({first}); use another out_dir or --no-resume"
        )
    trainer.load_state(tensors, meta)
    return list(meta.get("log", []))


def _checkpoint(
    trainer: TopKTrainer, cfg: TrainConfig, d_in: int, ckpt_dir: Path, log: list[dict[str, Any]], out: Path
) -> None:
    if trainer.rank != 0:
        return
    meta = {**trainer.state_meta(), "config": _resume_key(cfg, d_in), "log": log}
    save_checkpoint(ckpt_dir, trainer.step, trainer.state_tensors(), meta, keep=cfg.keep_checkpoints)
    atomic_write_text(out / "train_log.jsonl", "".join(json.dumps(e) + "\n" for e in log))


def train_sae(
    cfg: TrainConfig,
    batches: BatchSource,
    d_in: int,
    *,
    hook_name: str = "",
    model_name: str = "",
    metadata: dict[str, Any] | None = None,
    on_step: Callable[[TopKTrainer, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train (or resume training) a Top-k SAE and save it to ``cfg.out_dir/sae`` in SAELens layout.

    ``batches(start_step)`` yields raw activation batches [batch_size, d_in] from batch ``start_step`` on.
    NaN/inf in a batch or the loss stops training with a :class:`SaesteerError`; the last checkpoint stays.
    ``on_step(trainer, entry)`` (optional) is called after every step (tests use it to simulate a kill).
    """
    cfg.validate()
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    trainer = make_trainer(cfg, d_in)
    log = _try_resume(trainer, cfg, d_in, ckpt_dir)
    if log is None:
        first = next(iter(batches(0)), None)
        if first is None:
            raise SaesteerError("the activation source yielded no batches; harvest activations first")
        if first.shape[-1] != d_in:
            raise SaesteerError(f"activations have width {first.shape[-1]} but d_in is {d_in}; check the cache")
        trainer.init_from_data(first, cfg.b_dec_init)
        log = []
    total = cfg.total_steps
    stream: Iterator[torch.Tensor] = iter(batches(trainer.step))
    bar = tqdm(
        total=total * cfg.batch_size,
        initial=trainer.step * cfg.batch_size,
        unit="tok",
        unit_scale=True,
        desc="train-sae",
        disable=not cfg.progress or trainer.rank != 0,
        dynamic_ncols=True,
    )
    t0, steps0, tokens0 = time.perf_counter(), trainer.step, trainer.tokens
    try:
        for batch in itertools.islice(stream, total - trainer.step):
            stats = trainer.train_step(batch)
            entry = {"step": trainer.step, "tokens": trainer.tokens, **vars(stats)}
            if trainer.step % cfg.log_every == 0 or trainer.step == total:
                log.append(entry)
                bar.set_postfix(
                    fvu=f"{stats.fvu:.3f}", l0=f"{stats.l0:.1f}", dead=f"{stats.dead_frac:.1%}", refresh=False
                )
            bar.update(batch.shape[0] * trainer.world)
            if trainer.step % cfg.checkpoint_every == 0 and trainer.step < total:
                _checkpoint(trainer, cfg, d_in, ckpt_dir, log, out)
            if on_step is not None:
                on_step(trainer, entry)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    if trainer.step < total:
        print(
            f"saesteer: warning: the activation source ran out after {trainer.step} of {total} steps", file=sys.stderr
        )
    ran = trainer.step - steps0
    # trainer.tokens counts every process's tokens already
    tok_s = (trainer.tokens - tokens0) / elapsed if ran and elapsed > 0 else 0.0
    summary_path = out / "train_summary.json"
    if ran == 0 and summary_path.is_file():  # a finished run called again: keep its measured speed
        old = json.loads(summary_path.read_text())
        tok_s, elapsed = float(old.get("tokens_per_s", 0.0)), float(old.get("seconds", 0.0))
    elif ran:
        _checkpoint(trainer, cfg, d_in, ckpt_dir, log, out)
    meta = {"train_config": config_to_dict(cfg), **(metadata or {})}
    sae = trainer.to_sae(hook_name, model_name, meta)
    sae_dir = out / "sae"
    if trainer.rank == 0:
        save_sae(sae, sae_dir)
        atomic_write_json(summary_path, {
            "steps": trainer.step, "tokens": trainer.tokens, "tokens_per_s": tok_s, "seconds": elapsed,
            "processes": trainer.world, "dead_window": cfg.dead_window, "final": log[-1] if log else None,
            "sae_dir": str(sae_dir),
        })  # fmt: skip
    return TrainResult(sae=sae, sae_dir=sae_dir, steps=trainer.step, tokens=trainer.tokens, tokens_per_s=tok_s, log=log)


def rank_batches(store: ActivationStore, cfg: TrainConfig, rank: int, world: int, start: int) -> Iterator[torch.Tensor]:
    """Batches of ``batch_size // world`` tokens for ``rank``: its slice of every global batch from ``start`` on."""
    per = cfg.batch_size // world
    stream = store.batches(per, shuffle=True, seed=cfg.seed, start_step=start * world)
    return itertools.islice(stream, rank, None, world)


def train_from_cache(
    cfg: TrainConfig,
    acts: str | Path,
    *,
    tokens_from: str = "all",
    expect_model: str | None = None,
    expect_hook: str | None = None,
) -> TrainResult:
    """Train on a harvested activation cache; data-parallel when started by ``torchrun``.

    Opens (and closes) the process group, gives each rank its slice of every global batch, and records the
    cache in the SAE's metadata. ``tokens_from`` picks ``all``, ``corpus`` or ``chat`` tokens.
    """
    store = ActivationStore(acts, source=tokens_from)
    store.check_matches(model=expect_model, hook_name=expect_hook)
    with distributed(cfg.device) as (rank, world):
        if cfg.batch_size % world:
            raise SaesteerError(f"batch_size {cfg.batch_size} must divide evenly over {world} processes")
        if world > 1:
            cfg = replace(cfg, device=local_device(cfg.device))
        epochs = cfg.total_tokens / max(store.n_tokens, 1)
        if rank == 0 and epochs > 1:
            print(
                f"saesteer: note: {cfg.total_tokens:,} training tokens from a cache of {store.n_tokens:,} "
                f"(~{epochs:.1f} epochs; harvest more for fewer repeats)"
            )
        metadata = {
            "activation_cache": str(Path(acts).resolve()),
            "harvest_sources": store.manifest.get("sources"),
            "tokens_from": tokens_from,
        }
        return train_sae(
            cfg, lambda s: rank_batches(store, cfg, rank, world, s), store.d_model,
            hook_name=store.hook_name, model_name=str(store.manifest.get("model") or ""), metadata=metadata,
        )  # fmt: skip
