"""The study's SAE stages: corpus, harvest (corpus + the model's own chat conversations), training, metrics.

The SAE is a Top-k autoencoder trained on residual-stream activations ``x`` at the study's hook; its
metrics are the held-out fraction of variance unexplained ``FVU = |x - x_hat|^2 / |x - mean(x)|^2`` and,
spliced into the model, the increase in next-token cross-entropy and the KL divergence to the unspliced
model on corpus texts the harvest did not read.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from pathlib import Path
from typing import Any

import torch

from saesteer.activations.chat import build_chat_data
from saesteer.activations.harvest import harvest, right_pad
from saesteer.activations.sources import iter_texts
from saesteer.activations.store import ActivationStore
from saesteer.config import atomic_write_json, atomic_write_text, config_to_dict
from saesteer.errors import SaesteerError
from saesteer.evaluation.datasets import DATA_FILES, data_dir
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import GenerationConfig
from saesteer.model.loading import LoadedModel
from saesteer.sae.base import SAE
from saesteer.sae.io import load_sae
from saesteer.sae.metrics import activation_metrics, combine_spliced, spliced_metrics
from saesteer.sae.train import train_sae
from saesteer.stages import StageRunner
from saesteer.study.config import StudyConfig
from saesteer.study.corpus import stdlib_docstrings
from saesteer.study.prompts import StudyPrompts, digest

#: what the stdlib-docstring corpus holds, with a margin
BUILTIN_MAX_TOKENS = 100_000


@dataclasses.dataclass(frozen=True)
class Corpus:
    path: str
    real: bool  # the data directory's corpus (else the built-in stdlib docstrings)


@dataclasses.dataclass(frozen=True)
class TrainedSAE:
    sae: SAE
    folder: Path
    acts: str | None  # the activation cache it was trained on (None for a given SAE)
    seed: int


def stage_corpus(cfg: StudyConfig, root: Path) -> Corpus:
    """The data directory's corpus, else the built-in stdlib-docstring corpus written under ``root``."""
    dd = data_dir(cfg.data_dir)
    if dd is not None and (dd / DATA_FILES["corpus"]).is_file():
        return Corpus(str(dd / DATA_FILES["corpus"]), True)
    path = root / "builtin_corpus.jsonl"
    if not path.is_file():
        atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in stdlib_docstrings()))
    return Corpus(str(path), False)


def harvest_tokens(cfg: StudyConfig, corpus: Corpus) -> int:
    n = cfg.harvest.n_tokens
    if not corpus.real and n > BUILTIN_MAX_TOKENS:
        print(
            f"saesteer: note: no data directory; the built-in corpus (stdlib docstrings + chat) gives "
            f"{BUILTIN_MAX_TOKENS:,} tokens, not {n:,}: expect a weaker SAE (pass --data-dir for more)"
        )
        return BUILTIN_MAX_TOKENS
    return n


def stage_harvest(runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, corpus: Corpus, prompts: StudyPrompts) -> str:
    """Activations at the hook on corpus windows plus the model's own chat conversations (SAE-chat prompts)."""
    if cfg.acts:
        return cfg.acts
    chat_prompts = prompts.texts("sae_chat")
    hcfg = dataclasses.replace(
        cfg.harvest, hook=cfg.hook, corpus=[corpus.path], n_tokens=harvest_tokens(cfg, corpus), seed=cfg.seed
    )
    inputs = {
        "model": lm.spec,
        "harvest": {k: v for k, v in config_to_dict(hcfg).items() if k != "out_dir"},
        "corpus": Path(corpus.path).name,
        "chat": config_to_dict(cfg.chat),
        "chat_prompts": digest(chat_prompts),
    }

    def run(folder: Path) -> str:
        gen = GenerationConfig(max_new_tokens=cfg.chat.max_new_tokens, batch_size=cfg.generation.batch_size)
        chat = build_chat_data(lm.model, lm.tokenizer, chat_prompts, folder / "chat.jsonl", gen)
        return str(harvest(lm.model, lm.tokenizer, dataclasses.replace(hcfg, out_dir=str(folder)), lm.spec, chat=chat))

    return runner.run("harvest", inputs, run, str, code=("activations",))


def stage_train(runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, acts: str, seed: int) -> TrainedSAE:
    """A Top-k SAE trained once over every harvested token (``seed``: initialisation and batch order)."""
    if cfg.sae:
        return TrainedSAE(load_sae(cfg.sae, dtype="float32"), Path(cfg.sae), cfg.acts, seed)
    store = ActivationStore(acts)
    tcfg = dataclasses.replace(cfg.train, total_tokens=max(store.n_tokens, 4096), seed=seed)
    inputs = {
        "acts": store.manifest["shards"][-1]["sha256"],
        "tokens": store.n_tokens,
        "train": {k: v for k, v in config_to_dict(tcfg).items() if k not in ("out_dir", "progress", "log_every")},
    }

    def run(folder: Path) -> Path:
        t = dataclasses.replace(tcfg, out_dir=str(folder))
        result = train_sae(
            t,
            lambda s: store.batches(t.batch_size, seed=seed, start_step=s),
            store.d_model,
            hook_name=store.hook_name,
            model_name=lm.spec,
            metadata={"activation_cache": str(acts)},
        )
        return Path(result.sae_dir)

    name = "train_sae" if seed == cfg.seed else f"train_sae_seed{seed}"
    sae_dir = runner.run(name, inputs, run, lambda f: f / "sae", code=("sae",))
    sae = load_sae(sae_dir, dtype="float32")
    d_model = ArchAdapter(lm.model).d_model
    if sae.d_in != d_model:
        raise SaesteerError(f"SAE d_in {sae.d_in} != model d_model {d_model}; use an SAE for this model")
    return TrainedSAE(sae, Path(sae_dir), acts, seed)


def corpus_windows(
    corpus: str, tokenizer: Any, n_texts: int, context_len: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus's last ``n_texts`` texts (the ones a harvest reads last, if at all), tokenised and right-padded."""
    texts = list(deque(iter_texts(corpus, "text"), maxlen=n_texts))
    rows = [ids for t in texts if len(ids := tokenizer(t, add_special_tokens=False)["input_ids"][:context_len]) >= 2]
    if not rows:
        raise SaesteerError(f"corpus {corpus}: no text has 2 or more tokens")
    return right_pad(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def stage_sae_metrics(
    runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, trained: TrainedSAE, corpus: Corpus
) -> dict[str, Any]:
    """Held-out FVU / L0 / dead latents, and the spliced CE / KL increase on corpus texts."""
    outlier = cfg.harvest.outlier_factor

    def run(folder: Path) -> dict[str, Any]:
        sae = trained.sae
        out: dict[str, Any] = {"sae": str(trained.folder)}
        if trained.acts:
            out["activations"] = activation_metrics(sae, [ActivationStore(trained.acts).held_out(65_536)])
        ids, mask = corpus_windows(corpus.path, lm.tokenizer, cfg.dev.sae_eval_texts, cfg.harvest.context_len)
        adapter = ArchAdapter(lm.model)
        # as harvested (positions with norm > outlier x median never reach training stay clean), then everywhere
        for key, factor in (("spliced", outlier), ("spliced_all_positions", 0.0)):
            parts = [
                spliced_metrics(lm.model, adapter, sae, ids[i : i + 8], mask[i : i + 8], outlier_factor=factor)
                for i in range(0, len(ids), 8)
            ]
            out[key] = combine_spliced(parts)
        atomic_write_json(folder / "sae_metrics.json", out)
        return out

    inputs = {"sae": str(trained.folder), "texts": cfg.dev.sae_eval_texts, "corpus": Path(corpus.path).name}
    return runner.run(
        "sae_metrics", inputs, run, lambda f: json.loads((f / "sae_metrics.json").read_text()), code=("sae",)
    )
