"""``saesteer train-sae`` and ``saesteer sae-eval`` (see ``--help``).

``train-sae`` trains a Top-k SAE on a harvested activation cache (``saesteer harvest``); rerunning it
resumes from the newest checkpoint. Under ``torchrun --nproc-per-node N`` it trains data-parallel
(gloo on CPU, nccl on GPU), each process reading its share of every global batch.

``sae-eval`` measures an SAE folder: FVU / L0 / dead / dense on held-out cache tokens (``--acts``) and,
with ``--model``, CE / KL with the SAE spliced into the model on corpus texts.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from saesteer.cli.common import FLAT, Command, write_resolved_config
from saesteer.config import atomic_write_json, opt
from saesteer.errors import SaesteerError
from saesteer.model.loading import ModelConfig
from saesteer.sae.train import TrainConfig, train_sae

CORPUS_REL = "corpus/english_mix_corpus.jsonl.gz"


@dataclass
class TrainSaeCommand:
    """Train a Top-k SAE (AuxK, unit-norm decoder, sparse kernels) on a harvested activation cache; checkpoints
    every N steps and resumes when rerun. Under torchrun it trains data-parallel."""

    acts: str | None = opt(None, "activation cache folder from `saesteer harvest` (required)")
    tokens_from: Literal["all", "corpus", "chat"] = opt(
        "all", "train on all cached tokens, or only those harvested from corpus or from chat windows"
    )
    expect_model: str | None = opt(None, "fail unless the cache was harvested from this model")
    expect_hook: str | None = opt(None, "fail unless the cache is at this hook point")
    train_sae: Annotated[TrainConfig, FLAT] = field(default_factory=TrainConfig)


# ------------------------------------------------------------------------------------------------ train-sae


def _rank_batches(store: Any, cfg: TrainConfig, rank: int, world: int, start: int) -> Iterator[torch.Tensor]:
    """Batches of size batch_size // world for this rank: its slice of every global batch."""
    per = cfg.batch_size // world
    stream = store.batches(per, shuffle=True, seed=cfg.seed, start_step=start * world)
    return itertools.islice(stream, rank, None, world)


def _init_distributed(device: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def run_train(command: TrainSaeCommand) -> int:
    from saesteer.activations.store import ActivationStore

    if not command.acts:
        raise SaesteerError("no activation cache given; pass --acts DIR (a folder from `saesteer harvest`)")
    cfg = command.train_sae
    store = ActivationStore(command.acts, source=command.tokens_from)
    store.check_matches(model=command.expect_model, hook_name=command.expect_hook)
    model_name = str(store.manifest.get("model") or "")
    rank, world = _init_distributed(cfg.device)
    if cfg.batch_size % world:
        raise SaesteerError(f"batch_size {cfg.batch_size} must divide evenly over {world} processes")
    if cfg.device == "auto" and world > 1 and torch.cuda.is_available():
        cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    epochs = cfg.total_tokens / max(store.n_tokens, 1)
    if rank == 0 and epochs > 1:
        print(
            f"saesteer: note: {cfg.total_tokens:,} training tokens from a cache of {store.n_tokens:,} "
            f"(~{epochs:.1f} epochs; harvest more for fewer repeats)"
        )
    out = Path(cfg.out_dir)
    if rank == 0:
        write_resolved_config(out, command)
    metadata = {
        "activation_cache": str(Path(command.acts).resolve()),
        "harvest_sources": store.manifest.get("sources"),
        "tokens_from": command.tokens_from,
    }
    result = train_sae(
        cfg, lambda s: _rank_batches(store, cfg, rank, world, s), store.d_model,
        hook_name=store.hook_name, model_name=model_name, metadata=metadata,
    )  # fmt: skip
    if rank == 0:
        last = result.log[-1] if result.log else {}
        print(
            f"SAE in {result.sae_dir}: {result.steps} steps, {result.tokens:,} tokens, "
            f"{result.tokens_per_s:,.0f} tokens/s; last fvu {last.get('fvu', float('nan')):.4f}, "
            f"dead {last.get('dead_frac', float('nan')):.1%}"
        )
    return 0


# ------------------------------------------------------------------------------------------------ sae-eval


@dataclass
class EvalConfig:
    """What ``saesteer sae-eval`` measures."""

    sae: str | None = opt(None, "SAE folder (cfg.json + sae_weights.safetensors)")
    acts: str | None = opt(None, "activation cache whose held-out shard gives FVU / L0 / dead / dense")
    held_out_tokens: int = opt(65_536, "held-out tokens to measure")
    spliced: bool = opt(True, "also splice the SAE into the model (--model) and measure CE / KL on corpus texts")
    corpus: str | None = opt(None, f"texts for the spliced metrics (default: DATA_DIR/{CORPUS_REL})")
    text_key: str = opt("text", "text field of jsonl / parquet corpora")
    n_texts: int = opt(64, "number of texts (the corpus's last ones, least likely harvested) for spliced metrics")
    context_len: int = opt(128, "tokens per text window")
    batch_size: int = opt(8, "windows per forward pass")
    outlier_factor: float = opt(
        8.0,
        "leave tokens unspliced whose norm exceeds this many times the median "
        "(as harvest drops them from training; 0: splice all)",
    )
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data)")
    out_dir: str | None = opt(None, "where sae_eval.json goes (default: <sae>/../eval)")


def _corpus_windows(cfg: EvalConfig, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from saesteer.activations.sources import iter_texts
    from saesteer.evaluation.datafiles import require_file

    path = cfg.corpus or str(require_file("corpus", CORPUS_REL, cfg.data_dir))
    texts = list(deque(iter_texts(path, cfg.text_key), maxlen=cfg.n_texts))
    if not texts:
        raise SaesteerError(f"corpus {path} holds no texts")
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: cfg.context_len]
        if len(ids) >= 2:
            rows.append(ids)
    if not rows:
        raise SaesteerError(f"corpus {path}: no text has 2 or more tokens")
    from saesteer.activations.harvest import right_pad

    return right_pad(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def check_sae_model(sae: Any, d_model: int, model_spec: str, n_layers: int) -> None:
    """Raise if ``sae`` cannot be spliced into a model of width ``d_model``."""
    if sae.d_in != d_model:
        raise SaesteerError(
            f"SAE d_in {sae.d_in} != model d_model {d_model} ({model_spec}); use an SAE trained on this model"
        )
    layer = sae.cfg.hook_layer
    if layer >= n_layers:
        raise SaesteerError(f"SAE hook {sae.cfg.hook_name} is past this model's {n_layers} layers; wrong model")


@dataclass
class SaeEvalCommand:
    """Evaluate an SAE folder (SAELens layout): reconstruction metrics on held-out cache tokens and CE/KL with
    the SAE spliced into the model on corpus texts."""

    sae_eval: Annotated[EvalConfig, FLAT] = field(default_factory=EvalConfig)
    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)


def run_eval(command: SaeEvalCommand) -> int:
    from saesteer.model.adapter import ArchAdapter
    from saesteer.sae.io import load_sae
    from saesteer.sae.metrics import activation_metrics, combine_spliced, spliced_metrics

    cfg, model_cfg = command.sae_eval, command.model
    if not cfg.sae:
        raise SaesteerError("no SAE given; pass --sae DIR (a folder with cfg.json and sae_weights.safetensors)")
    sae = load_sae(cfg.sae, dtype="float32")
    results: dict[str, Any] = {
        "sae": str(Path(cfg.sae).resolve()),
        "hook_name": sae.cfg.hook_name,
        "model_name": sae.cfg.model_name,
    }
    if cfg.acts:
        from saesteer.activations.store import ActivationStore

        store = ActivationStore(cfg.acts)
        store.check_matches(model=sae.cfg.model_name or None, hook_name=sae.cfg.hook_name or None, d_model=sae.d_in)
        results["activations"] = activation_metrics(sae, [store.held_out(cfg.held_out_tokens)])
    if cfg.spliced:
        from saesteer.model.loading import load

        lm = load(model_cfg)
        adapter = ArchAdapter(lm.model)
        check_sae_model(sae, adapter.d_model, model_cfg.model, adapter.n_layers)
        if sae.cfg.model_name and sae.cfg.model_name not in (model_cfg.model, lm.spec):
            print(
                f"saesteer: warning: the SAE was trained on {sae.cfg.model_name!r}, evaluating on {model_cfg.model!r}",
                file=sys.stderr,
            )
        ids, mask = _corpus_windows(cfg, lm.tokenizer)
        device = lm.device
        sae = sae.to(device)
        parts = [
            spliced_metrics(lm.model, adapter, sae, ids[i:i + cfg.batch_size].to(device),
                            mask[i:i + cfg.batch_size].to(device), outlier_factor=cfg.outlier_factor)
            for i in range(0, ids.shape[0], cfg.batch_size)
        ]  # fmt: skip
        results["spliced"] = {**combine_spliced(parts), "model": model_cfg.model, "n_texts": int(ids.shape[0])}
    if "activations" not in results and "spliced" not in results:
        raise SaesteerError("nothing to measure; pass --acts DIR and/or keep --spliced with a --model")
    out = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.sae).resolve().parent / "eval"
    atomic_write_json(out / "sae_eval.json", results)
    write_resolved_config(out, command)
    print(json.dumps(results, indent=2))
    return 0


COMMANDS = [
    Command("train-sae", "train a Top-k SAE on an activation cache", TrainSaeCommand, run_train),
    Command("sae-eval", "measure an SAE: FVU, L0, dead/dense, spliced CE and KL", SaeEvalCommand, run_eval),
]
