"""``saesteer find-features`` and ``saesteer feature show`` (see ``--help``).

``find-features`` runs the refusal-feature discovery (:mod:`saesteer.features.pipeline`) and writes
``features.json``, ``features.md`` and ``features.html`` to ``--out``; rerunning it resumes from
``OUT/stages/``. ``feature show ID`` prints one feature's top contexts, activation histogram
and logit lens, from a discovery run's contexts (``--run``) or freshly encoded corpus windows.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from saesteer.cli.common import FLAT, Command, write_resolved_config
from saesteer.config import atomic_write_text, opt
from saesteer.errors import SaesteerError
from saesteer.features.config import FindFeaturesConfig
from saesteer.model.loading import ModelConfig, load
from saesteer.sae.base import SAE


@dataclass
class FindFeaturesCommand:
    """Find refusal features: candidates from the model's own refusals, contrastive / direction / attribution
    rankers, a causal screen by clamping (cheap one-pass refusal score, then generation + judge for the best few),
    a control feature and feature cards. Resumable."""

    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)
    find_features: Annotated[FindFeaturesConfig, FLAT] = field(default_factory=FindFeaturesConfig)


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


@dataclass
class FeatureShowCommand:
    """Show a feature's top-activating contexts (profanity masked), activation density histogram and logit lens."""

    feature_id: tyro.conf.Positional[int | None] = opt(None, "feature index")
    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)
    show: Annotated[FeatureShowConfig, FLAT] = field(default_factory=FeatureShowConfig)


def _load_sae(path: str) -> SAE:
    from saesteer.sae.io import load_sae

    if not path:
        raise SaesteerError("no SAE given; pass --sae DIR (a folder with cfg.json + sae_weights.safetensors)")
    return load_sae(path)


def run_find(command: FindFeaturesCommand) -> int:
    from saesteer.features.pipeline import find_features

    cfg = command.find_features
    cfg.validate()
    sae = _load_sae(cfg.sae)
    lm = load(command.model)
    write_resolved_config(cfg.out, command)
    report = find_features(lm.model, lm.tokenizer, sae, cfg, model_name=lm.spec)
    ch = report.chosen
    if ch is None:
        raise SaesteerError(f"no feature chosen (status {report.status}); see {Path(cfg.out) / 'features.md'}")
    d, lo, hi = ch.gain
    print(
        f"chosen feature {ch.feature} (clamp {ch.value:.3f}): harmful refusal {ch.harmful.rate:.1%} "
        f"(gain {d:+.1%} [{lo:+.1%}, {hi:+.1%}]), harmless {ch.harmless.rate:.1%}; "
        f"control feature {report.control_feature}"
    )
    return 0


def _corpus_texts(cfg: FeatureShowConfig) -> list[str]:
    """Texts to encode when no --run is given (read before the model loads, so a bad corpus fails fast)."""
    if cfg.corpus:
        from saesteer.activations.sources import iter_texts

        texts = list(itertools.islice(iter_texts(cfg.corpus), cfg.n_windows * 4))
    else:
        from saesteer.evaluation.datafiles import data_dir

        if data_dir(cfg.data_dir) is None:
            raise SaesteerError(
                "no contexts to show: pass --run DIR (a find-features output), --corpus FILE, "
                "or --data-dir (with corpus/english_mix_corpus.jsonl.gz)"
            )
        from saesteer.evaluation.datasets import load_corpus_texts

        texts = load_corpus_texts(n=cfg.n_windows * 2, seed=cfg.seed, data_dir=cfg.data_dir, min_chars=200)
    if not any(t.strip() for t in texts):
        raise SaesteerError("the corpus gave no token windows (no text in it); give a corpus with text")
    return texts


def run_show(command: FeatureShowCommand) -> int:
    from saesteer.features.contexts import FILE, ContextStore, build_store, corpus_rows, sae_fingerprint
    from saesteer.features.interpret import cards_html, describe_feature

    cfg = command.show
    if command.feature_id is None:
        raise SaesteerError("no feature given; pass its index, e.g. saesteer feature show 1234 --sae DIR")
    sae = _load_sae(cfg.sae)
    fid = command.feature_id
    d_sae = sae.d_sae
    if not 0 <= fid < d_sae:
        raise SaesteerError(f"feature {fid} out of range; this SAE has features 0..{d_sae - 1}")
    store = None
    if cfg.run:
        path = Path(cfg.run) / FILE
        store = ContextStore.load(path)
        if store.fingerprint and store.fingerprint != sae_fingerprint(sae):
            raise SaesteerError(f"{path} was built with another SAE; pass the run's SAE or drop --run")
    texts = _corpus_texts(cfg) if store is None else []
    lm = load(command.model)
    sae = sae.to(lm.device)
    if store is None:
        rows = corpus_rows(lm.tokenizer, texts, cfg.context_len, cfg.n_windows)
        if not rows:
            raise SaesteerError("the corpus gave no token windows; give a corpus with text in it")
        store = build_store(lm.model, sae, rows, ["corpus"] * len(rows), batch_size=cfg.batch_size, progress=True)
    card = describe_feature(lm.model, lm.tokenizer, sae, store, fid, cfg.n_contexts, lens_k=cfg.lens_k)
    print(card.to_text())
    if cfg.html:
        atomic_write_text(cfg.html, cards_html([card], f"feature {fid}"))
    if cfg.markdown:
        atomic_write_text(cfg.markdown, card.to_markdown())
    return 0


COMMANDS = [
    Command(
        "find-features",
        "find SAE features that steer refusal (paper's search + rankers + causal screen)",
        FindFeaturesCommand,
        run_find,
    ),
    Command(
        "feature show", "top contexts, activation histogram and logit lens of a feature", FeatureShowCommand, run_show
    ),
]
