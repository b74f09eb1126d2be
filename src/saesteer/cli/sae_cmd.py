"""``saesteer train-sae`` and ``saesteer sae-eval`` (see ``--help``).

``train-sae`` trains a Top-k SAE on a harvested activation cache (``saesteer harvest``); rerunning it
resumes from the newest checkpoint. Under ``torchrun --nproc-per-node N`` it trains data-parallel
(gloo on CPU, nccl on GPU), each process reading its share of every global batch.

``sae-eval`` measures an SAE folder: FVU / L0 / dead / dense on held-out cache tokens (``--acts``) and,
with a model, CE / KL / delta-CE with the SAE spliced in, on corpus texts and on chat conversations.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from saesteer.cli.common import FLAT, Command, write_resolved_config
from saesteer.config import atomic_write_json, opt
from saesteer.errors import SaesteerError
from saesteer.model.loading import ModelConfig
from saesteer.sae.metrics import SaeEvalConfig
from saesteer.sae.train import TrainConfig

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


def run_train(command: TrainSaeCommand) -> int:
    from saesteer.activations.store import ActivationStore
    from saesteer.sae.train import train_from_cache

    if not command.acts:
        raise SaesteerError("no activation cache given; pass --acts DIR (a folder from `saesteer harvest`)")
    # check the cache before anything is written (train_from_cache checks it again)
    store = ActivationStore(command.acts, source=command.tokens_from)
    store.check_matches(model=command.expect_model, hook_name=command.expect_hook)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        write_resolved_config(command.train_sae.out_dir, command)
    result = train_from_cache(
        command.train_sae,
        command.acts,
        tokens_from=command.tokens_from,
        expect_model=command.expect_model,
        expect_hook=command.expect_hook,
    )
    if rank0:
        last = result.log[-1] if result.log else {}
        print(
            f"SAE in {result.sae_dir}: {result.steps} steps, {result.tokens:,} tokens, "
            f"{result.tokens_per_s:,.0f} tokens/s; last fvu {last.get('fvu', float('nan')):.4f}, "
            f"dead {last.get('dead_frac', float('nan')):.1%}"
        )
    return 0


@dataclass
class SaeEvalCommand:
    """Evaluate an SAE folder (SAELens layout): reconstruction metrics on held-out cache tokens and CE / KL with
    the SAE spliced into the model on corpus texts and chat conversations."""

    sae: str | None = opt(None, "SAE folder (cfg.json + sae_weights.safetensors)")
    acts: str | None = opt(None, "activation cache whose held-out shard gives FVU / L0 / dead / dense")
    spliced: bool = opt(True, "also splice the SAE into the model (--model) and measure CE / KL")
    corpus: str | None = opt(None, f"texts for the spliced metrics (default: DATA_DIR/{CORPUS_REL})")
    chat_file: str | None = opt(None, "chat conversations (.jsonl of {'messages': [...]}) for the spliced chat metrics")
    text_key: str = opt("text", "text field of jsonl / parquet corpora")
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data)")
    out_dir: str | None = opt(None, "where sae_eval.json goes (default: <sae>/../eval)")
    sae_eval: Annotated[SaeEvalConfig, FLAT] = field(default_factory=SaeEvalConfig)
    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)


def run_eval(c: SaeEvalCommand) -> int:
    from saesteer.activations.chat import read_chat_file
    from saesteer.activations.store import ActivationStore
    from saesteer.evaluation.datafiles import require_file
    from saesteer.model.adapter import ArchAdapter
    from saesteer.model.loading import load
    from saesteer.sae.io import load_sae
    from saesteer.sae.metrics import evaluate_sae

    if not c.sae:
        raise SaesteerError("no SAE given; pass --sae DIR (a folder with cfg.json and sae_weights.safetensors)")
    if not c.acts and not c.spliced:
        raise SaesteerError("nothing to measure; pass --acts DIR and/or keep --spliced with a --model")
    sae = load_sae(c.sae, dtype="float32")
    store = ActivationStore(c.acts) if c.acts else None
    if store is not None:
        store.check_matches(model=sae.cfg.model_name or None, hook_name=sae.cfg.hook_name or None, d_model=sae.d_in)
    model = tokenizer = corpus = conversations = None
    if c.spliced:
        corpus = c.corpus or str(require_file("corpus", CORPUS_REL, c.data_dir))
        conversations = read_chat_file(c.chat_file) if c.chat_file else None
        lm = load(c.model)
        ArchAdapter(lm.model).check_sae(sae)
        if sae.cfg.model_name and sae.cfg.model_name not in (c.model.model, lm.spec):
            print(
                f"saesteer: warning: the SAE was trained on {sae.cfg.model_name!r}, evaluating on {c.model.model!r}",
                file=sys.stderr,
            )
        model, tokenizer, sae = lm.model, lm.tokenizer, sae.to(lm.device)
    results = {"sae": str(Path(c.sae).resolve()), "hook_name": sae.cfg.hook_name, "model_name": sae.cfg.model_name}
    results |= evaluate_sae(
        model, tokenizer, sae, c.sae_eval, store=store, corpus=corpus, conversations=conversations, text_key=c.text_key
    )
    out = Path(c.out_dir) if c.out_dir else Path(c.sae).resolve().parent / "eval"
    atomic_write_json(out / "sae_eval.json", results)
    write_resolved_config(out, c)
    print(json.dumps(results, indent=2))
    return 0


COMMANDS = [
    Command("train-sae", "train a Top-k SAE on an activation cache", TrainSaeCommand, run_train),
    Command("sae-eval", "measure an SAE: FVU, L0, dead/dense, spliced CE and KL", SaeEvalCommand, run_eval),
]
