"""One feature's card (``saesteer feature show``): top-activating contexts, activation histogram, logit lens.

The contexts come from a discovery run's ``contexts.safetensors`` (reused when it was built with the same
SAE, by fingerprint) or from corpus windows encoded on the spot (:func:`corpus_texts`); the card itself is
:func:`saesteer.features.interpret.describe_feature`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.features.contexts import FILE, ContextStore, build_store, corpus_rows, sae_fingerprint
from saesteer.features.interpret import FeatureCard, describe_feature
from saesteer.features.reference import corpus_texts
from saesteer.sae.base import SAE


@dataclass
class FeatureShowConfig:
    """What ``saesteer feature show`` reads and prints."""

    sae: str = opt("", "SAE folder (SAELens layout)")
    run: str | None = opt(None, "a find-features output folder: reuse its contexts.safetensors")
    corpus: str | None = opt(None, "corpus file (.txt/.jsonl(.gz)) to encode; default: the data directory's corpus")
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data)")
    n_windows: int = opt(48, "corpus windows to encode when no --run is given")
    context_len: int = opt(128, "tokens per corpus window")
    batch_size: int = opt(16, "windows per forward pass")
    n_contexts: int = opt(10, "top-activating contexts to show")
    lens_k: int = opt(15, "tokens listed per side of the logit lens")
    html: str | None = opt(None, "also write the feature card as a standalone HTML file here")
    markdown: str | None = opt(None, "also write the feature card as Markdown here")
    seed: int = opt(0, "seed of the corpus sample")


def check_feature(sae: SAE, feature: int | None) -> int:
    """``feature`` if it is one of the SAE's latents, else a one-line error."""
    if feature is None:
        raise SaesteerError("no feature given; pass its index, e.g. saesteer feature show 1234 --sae DIR")
    if not 0 <= feature < sae.d_sae:
        raise SaesteerError(f"feature {feature} out of range; this SAE has features 0..{sae.d_sae - 1}")
    return feature


def run_contexts(run: str | Path, sae: SAE) -> ContextStore:
    """A discovery run's context store, refused when it was built with another SAE."""
    path = Path(run) / FILE
    store = ContextStore.load(path)
    if store.fingerprint and store.fingerprint != sae_fingerprint(sae):
        raise SaesteerError(f"{path} was built with another SAE; pass the run's SAE or drop --run")
    return store


def show_texts(cfg: FeatureShowConfig) -> list[str]:
    """The corpus texts to encode when no run is given (read before a model loads, so a bad corpus fails fast)."""
    texts = corpus_texts(cfg.corpus, cfg.data_dir, cfg.n_windows, cfg.seed)
    if texts is None:
        raise SaesteerError(
            "no contexts to show: pass --run DIR (a find-features output), --corpus FILE, "
            "or --data-dir (with corpus/english_mix_corpus.jsonl.gz)"
        )
    if not any(t.strip() for t in texts):
        raise SaesteerError("the corpus gave no token windows (no text in it); give a corpus with text")
    return texts


def show_feature(
    model: Any,
    tokenizer: Any,
    sae: SAE,
    feature: int,
    cfg: FeatureShowConfig,
    store: ContextStore | None = None,
    texts: list[str] | None = None,
    progress: bool = False,
) -> FeatureCard:
    """The feature's card over ``store``, else over the windows of ``texts`` (encoded here)."""
    if store is None:
        rows = corpus_rows(tokenizer, texts or [], cfg.context_len, cfg.n_windows)
        if not rows:
            raise SaesteerError("the corpus gave no token windows; give a corpus with text in it")
        store = build_store(model, sae, rows, ["corpus"] * len(rows), batch_size=cfg.batch_size, progress=progress)
    return describe_feature(model, tokenizer, sae, store, feature, cfg.n_contexts, lens_k=cfg.lens_k)
