"""The study's SAE stages: corpus, harvest (corpus + the model's own chat conversations), training, metrics.

The SAE is a Top-k autoencoder trained on residual-stream activations ``x`` at the study's hook; its
metrics are the held-out fraction of variance unexplained ``FVU = |x - x_hat|^2 / |x - mean(x)|^2`` and,
spliced into the model, the increase in next-token cross-entropy and the KL divergence to the unspliced
model. Web text is measured on the harvest's held-out corpus windows: the same shuffled, packed stream the
SAE trained on, in windows it never saw (the last texts of the corpus file are one source, Python's RST
docs, read from their first token: not a sample of what the SAE models). Without a harvest, on the
corpus file's last texts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import torch

from saesteer.activations.chat import build_chat_data, read_chat_file
from saesteer.activations.harvest import HarvestConfig, corpus_identity, harvest, right_pad, window_stream
from saesteer.activations.sources import CORPUS
from saesteer.activations.store import ActivationStore, read_manifest
from saesteer.config import atomic_write_json, atomic_write_text, config_to_dict
from saesteer.errors import SaesteerError
from saesteer.evaluation import paired
from saesteer.evaluation.datasets import DATA_FILES, data_dir
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import GenerationConfig
from saesteer.model.loading import LoadedModel
from saesteer.sae.base import SAE, TopKSAE
from saesteer.sae.finetune import finetune_kl, windows_after_harvest
from saesteer.sae.io import load_sae, save_sae
from saesteer.sae.metrics import (
    SaeEvalConfig,
    combine_spliced,
    conversation_windows,
    corpus_windows,
    evaluate_sae,
    spliced_over,
)
from saesteer.sae.train import rank_batches, train_sae
from saesteer.stages import StageRunner, is_writer, shard, stable_hash, sync
from saesteer.study.config import StudyConfig
from saesteer.study.corpus import stdlib_docstrings
from saesteer.study.prompts import StudyPrompts, digest

#: the fidelity stages' code: the SAE package and the samples chosen here
FIDELITY_CODE = ("sae", "model", "study/sae_stages")
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


def stage_harvest(
    runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, corpus: Corpus, prompts: StudyPrompts
) -> str | None:
    """Activations at the hook on corpus windows plus the model's own chat conversations (SAE-chat prompts)."""
    if cfg.acts or cfg.sae:  # a given cache, or a given SAE (trained elsewhere: nothing to harvest)
        return cfg.acts
    chat_prompts = prompts.texts("sae_chat")
    hcfg = dataclasses.replace(
        cfg.harvest, hook=cfg.hook, corpus=[corpus.path], n_tokens=harvest_tokens(cfg, corpus), seed=cfg.seed
    )
    inputs = {
        "model": lm.spec,
        "harvest": {k: v for k, v in config_to_dict(hcfg).items() if k != "out_dir"},
        "corpus": corpus_identity([corpus.path]),
        "chat": config_to_dict(cfg.chat),
        "chat_prompts": digest(chat_prompts),
    }

    def run(folder: Path) -> str:
        gen = GenerationConfig(max_new_tokens=cfg.chat.max_new_tokens, batch_size=cfg.generation.batch_size)
        writer = is_writer()
        chat = build_chat_data(lm.model, lm.tokenizer, chat_prompts, folder / "chat.jsonl", gen) if writer else []
        sync()  # rank 0 generated the conversations; the others read them from its finished file
        if not writer:
            chat = build_chat_data(lm.model, lm.tokenizer, chat_prompts, folder / "chat.jsonl", gen, progress=False)
        return str(harvest(lm.model, lm.tokenizer, dataclasses.replace(hcfg, out_dir=str(folder)), lm.spec, chat=chat))

    # collective: under torchrun every rank harvests its share of the windows (rank 0 writes the shards)
    return runner.run("harvest", inputs, run, str, code=("activations", "model"), collective=True)


def stage_train(runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, acts: str | None, seed: int) -> TrainedSAE:
    """A Top-k SAE trained once over every harvested token (``seed``: initialisation and batch order)."""
    if cfg.sae:
        return TrainedSAE(load_sae(cfg.sae, dtype="float32"), Path(cfg.sae), cfg.acts, seed)
    if acts is None:
        raise SaesteerError("no activation cache to train on; harvest first or pass acts")
    store = ActivationStore(acts)
    tcfg = dataclasses.replace(cfg.train, total_tokens=max(store.n_tokens, 4096), seed=seed)
    inputs = {
        "acts": store.manifest["shards"][-1]["sha256"],
        "tokens": store.n_tokens,
        "train": {k: v for k, v in config_to_dict(tcfg).items() if k not in ("out_dir", "progress", "log_every")},
    }

    def run(folder: Path) -> Path:
        t = dataclasses.replace(tcfg, out_dir=str(folder))
        rank, world = shard()
        result = train_sae(
            t,
            lambda s: (
                store.batches(t.batch_size, seed=seed, start_step=s)
                if world == 1
                else rank_batches(store, t, rank, world, s)
            ),
            store.d_model,
            hook_name=store.hook_name,
            model_name=lm.spec,
            metadata={"activation_cache": str(acts)},
        )
        return Path(result.sae_dir)

    name = "train_sae" if seed == cfg.seed else f"train_sae_seed{seed}"
    # collective: under torchrun data-parallel training, each rank on its slice of every batch
    sae_dir = runner.run(name, inputs, run, lambda f: f / "sae", code=("sae",), collective=True)
    sae = load_sae(sae_dir, dtype="float32")
    ArchAdapter(lm.model).check_sae(sae)
    return TrainedSAE(sae, Path(sae_dir), acts, seed)


def stage_sae_metrics(
    runner: StageRunner,
    lm: LoadedModel,
    cfg: StudyConfig,
    trained: TrainedSAE,
    corpus: Corpus,
    chats: list[list[dict[str, str]]],
) -> dict[str, Any]:
    """Held-out FVU / L0 / dead latents (by token kind), and the spliced CE / KL increase on corpus texts the
    harvest read last (as harvested: outlier positions unspliced; and at every position) and on chat
    conversations (the unsteered model's own responses to harmless dev prompts)."""
    ecfg = eval_config(cfg)

    def run(folder: Path) -> dict[str, Any]:
        out = {"sae": str(trained.folder), **fidelity(lm, trained.sae, trained.acts, ecfg, corpus, chats)}
        atomic_write_json(folder / "sae_metrics.json", out)
        return out

    inputs = {"sae": str(trained.folder), "eval": config_to_dict(ecfg), "corpus": corpus_identity([corpus.path]),
              "chats": stable_hash(chats)}  # fmt: skip
    return runner.run(
        "sae_metrics", inputs, run, lambda f: json.loads((f / "sae_metrics.json").read_text()), code=FIDELITY_CODE
    )


def eval_config(cfg: StudyConfig) -> SaeEvalConfig:
    return SaeEvalConfig(n_texts=cfg.dev.sae_eval_texts, context_len=cfg.harvest.context_len,
                         outlier_factor=cfg.harvest.outlier_factor)  # fmt: skip


def fidelity(
    lm: LoadedModel, sae: SAE, acts: str | None, ecfg: SaeEvalConfig, corpus: Corpus, chats: list[list[dict[str, str]]]
) -> dict[str, Any]:
    """Held-out FVU by token kind (with a harvest), spliced CE / KL on chat and on corpus text (as harvested, and
    at every position), each with a bootstrap interval over windows."""
    out: dict[str, Any] = {}
    if acts:  # held-out FVU / L0 / dead by token kind; web text from the same held-out split
        out.update(evaluate_sae(lm.model, lm.tokenizer, sae, ecfg, store=ActivationStore(acts)))
        ids, mask = held_out_corpus_windows(acts, lm.tokenizer, ecfg.n_texts)
    else:
        ids, mask = corpus_windows(corpus.path, lm.tokenizer, ecfg.n_texts, ecfg.context_len)
    for key, factor in (("web", ecfg.outlier_factor), ("web_all_positions", 0.0)):
        out[key] = spliced_by_window(lm, sae, ids, mask, factor)
    if chats:
        ids, mask = conversation_windows(chats[: ecfg.n_chats], lm.tokenizer, ecfg.context_len)
        out["chat"] = spliced_by_window(lm, sae, ids, mask, ecfg.outlier_factor)
    return out


def spliced_by_window(
    lm: LoadedModel, sae: SAE, ids: torch.Tensor, mask: torch.Tensor, outlier_factor: float
) -> dict[str, Any]:
    """:func:`spliced_over` one window at a time, combined, with 95% intervals (``{key}_ci``) of the CE increase
    and the KL: a percentile bootstrap over windows (tokens of one window are not independent) of the
    prediction-weighted mean."""
    parts = [spliced_over(lm.model, sae, ids[i : i + 1], mask[i : i + 1], 1, outlier_factor) for i in range(len(ids))]
    out = {**combine_spliced(parts), "n_windows": len(parts)}
    weights = [float(p["n_predictions"]) for p in parts]
    for key in ("ce_increase", "kl_spliced"):
        est = paired.paired_bootstrap_ci(
            lambda v, w: (v * w).sum(axis=-1) / w.sum(axis=-1), [[p[key] for p in parts], weights]
        )
        out[f"{key}_ci"] = [est.lo, est.hi]
    out["ci_method"] = "percentile bootstrap over windows, prediction-weighted (scipy.stats.bootstrap)"
    return out


def held_out_corpus_windows(acts: str, tokenizer: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of the first ``n`` all-corpus windows of a harvest's held-out split (never trained on)."""
    manifest = read_manifest(Path(acts))
    if manifest is None or "config" not in manifest:
        raise SaesteerError(f"{acts} is not a harvested activation cache; run `saesteer harvest` first")
    known = set(HarvestConfig.__dataclass_fields__)
    hcfg = HarvestConfig(**{k: v for k, v in manifest["config"].items() if k in known})
    chat_file = Path(acts) / "chat.jsonl"
    held = itertools.islice(
        window_stream(hcfg, tokenizer, read_chat_file(chat_file) if chat_file.is_file() else []),
        hcfg.held_out_windows(),
    )
    rows = [ids for ids, kinds in held if all(k == CORPUS for k in kinds)][:n]
    if not rows:
        raise SaesteerError(f"{acts}: its held-out split has no corpus window; harvest with --corpus")
    return right_pad(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def stage_finetune(
    runner: StageRunner,
    lm: LoadedModel,
    cfg: StudyConfig,
    trained: TrainedSAE,
    corpus: Corpus,
    chats: list[list[dict[str, str]]],
) -> dict[str, Any] | None:
    """KL fine-tune of the trained SAE on harvest-stream windows the SAE never saw, and its fidelity after (the
    ``sae_metrics`` stage has it before); the study steers with the MSE-trained SAE either way."""
    sae = trained.sae
    if cfg.finetune.tokens <= 0 or trained.acts is None or not isinstance(sae, TopKSAE):
        return None
    acts, ecfg = trained.acts, eval_config(cfg)
    fcfg = dataclasses.replace(cfg.finetune, context_len=cfg.harvest.context_len,
                               outlier_factor=cfg.harvest.outlier_factor)  # fmt: skip

    def run(folder: Path) -> dict[str, Any]:
        chat_file = Path(acts) / "chat.jsonl"
        windows = windows_after_harvest(acts, lm.tokenizer, read_chat_file(chat_file) if chat_file.is_file() else [])
        pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        res = finetune_kl(lm.model, sae, windows, dataclasses.replace(fcfg, out_dir=str(folder / "ckpt")), pad)
        save_sae(res.sae, folder / "sae")
        cost = {"tokens": res.tokens, "seconds": res.seconds, "tokens_per_s": res.tokens_per_s, "steps": res.steps}
        out = {"sae": str(folder / "sae"), "cost": cost, **fidelity(lm, res.sae, acts, ecfg, corpus, chats)}
        atomic_write_json(folder / "finetune.json", out)
        return out

    inputs = {"sae": str(trained.folder), "finetune": config_to_dict(fcfg), "eval": config_to_dict(ecfg),
              "chats": stable_hash(chats)}  # fmt: skip
    return runner.run(
        "sae_finetune", inputs, run, lambda f: json.loads((f / "finetune.json").read_text()), code=FIDELITY_CODE
    )
