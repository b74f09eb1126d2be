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


def corpus_texts(corpus: str | None, data_dir: str | None, n_windows: int, seed: int) -> list[str] | None:
    """Texts for ``n_windows`` corpus windows: the first ``4 n`` texts of ``corpus`` (a file or folder), else a
    seeded sample of ``2 n`` texts of 200+ characters from the data directory's corpus; None when there is
    neither. A data directory without its corpus file raises."""
    if corpus:
        from saesteer.activations.sources import iter_texts

        return list(itertools.islice(iter_texts(corpus), n_windows * 4))
    from saesteer.evaluation.datafiles import data_dir as find_data_dir

    if find_data_dir(data_dir) is None:
        return None
    from saesteer.evaluation.datasets import load_corpus_texts

    return load_corpus_texts(n=n_windows * 2, seed=seed, data_dir=data_dir, min_chars=200)


def run_corpus_texts(cfg: FindFeaturesConfig) -> list[str]:
    """A discovery run's corpus texts: ``cfg.corpus``, else the data directory's corpus, else none
    (``cfg.corpus = "none"``, or no data directory or no corpus file in it)."""
    if cfg.corpus is not None and cfg.corpus.lower() == "none":
        return []
    if cfg.corpus:
        return corpus_texts(cfg.corpus, None, cfg.corpus_windows, cfg.seed) or []
    try:
        return corpus_texts(None, cfg.data_dir, cfg.corpus_windows, cfg.seed) or []
    except SaesteerError:  # a data directory without the corpus: the run goes on without corpus windows
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
    texts = run_corpus_texts(cfg)
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
