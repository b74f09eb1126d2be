"""The reference tokens of a discovery run: corpus windows and chat rows, encoded into a context store.

Rows: corpus windows (``cfg.corpus``, else the data directory's corpus if present), the harmful and
harmless dev prompts, the topic prompts and the archetype conversations (prompt + the model's
response). Their statistics set the clamp values and the control's similarity; their contexts are
the feature cards' top-activating contexts.
"""

from __future__ import annotations

import itertools
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.features.config import FindFeaturesConfig
from saesteer.features.contexts import ContextStore, build_store, corpus_rows
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import encode_chats
from saesteer.sae.base import SAE


def corpus_texts(cfg: FindFeaturesConfig) -> list[str]:
    """Corpus texts for the run's windows: ``cfg.corpus``, else the data directory's corpus, else none."""
    if cfg.corpus is not None and cfg.corpus.lower() == "none":
        return []
    if cfg.corpus:
        from saesteer.activations.sources import iter_texts

        return list(itertools.islice(iter_texts(cfg.corpus), cfg.corpus_windows * 4))
    from saesteer.evaluation.datafiles import data_dir

    if data_dir(cfg.data_dir) is None:
        return []
    from saesteer.evaluation.datasets import load_corpus_texts

    try:
        return load_corpus_texts(n=cfg.corpus_windows * 2, seed=cfg.seed, data_dir=cfg.data_dir, min_chars=200)
    except SaesteerError:
        return []


def reference_store(
    adapter: ArchAdapter,
    tokenizer: Any,
    sae: SAE,
    cfg: FindFeaturesConfig,
    harm: list[str],
    safe: list[str],
    responses: list[dict[str, Any]],
    progress: bool,
) -> ContextStore:
    """Encode the run's reference rows (corpus windows, dev and topic prompts, used archetype conversations)."""
    rows: list[list[int]] = []
    sources: list[str] = []
    texts = corpus_texts(cfg)
    for w in corpus_rows(tokenizer, texts, cfg.context_len, cfg.corpus_windows) if texts else []:
        rows.append(w)
        sources.append("corpus")

    def add_chats(prompts: list[Any], source: str) -> None:
        for p in prompts:
            rows.append(encode_chats(tokenizer, [p], cfg.system_prompt)["input_ids"][0].tolist())
            sources.append(source)

    add_chats(harm, "harmful")
    add_chats(safe, "harmless")
    add_chats(list(cfg.topic_prompts), "topic")
    for r in responses:
        if r["used"]:
            conv = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
            text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)
            rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            sources.append("refusal")
    return build_store(adapter, sae, rows, sources, batch_size=cfg.batch_size, progress=progress)
