"""``saesteer find-features`` and ``saesteer feature show`` (see ``--help``).

``find-features`` runs the refusal-feature discovery (:mod:`saesteer.features.pipeline`) and writes
``features.json``, ``features.md`` and ``features.html`` to ``--out``; rerunning it resumes from
``OUT/stages/``. ``feature show ID`` prints one feature's top contexts, activation histogram
and logit lens, from a discovery run's contexts (``--run``) or freshly encoded corpus windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro

from saesteer.cli.common import FLAT, Command, write_resolved_config
from saesteer.config import atomic_write_text, opt
from saesteer.errors import SaesteerError
from saesteer.features.config import FindFeaturesConfig
from saesteer.features.show import FeatureShowConfig
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


def run_show(command: FeatureShowCommand) -> int:
    from saesteer.features.interpret import cards_html
    from saesteer.features.show import check_feature, run_contexts, show_feature, show_texts

    cfg = command.show
    sae = _load_sae(cfg.sae)
    fid = check_feature(sae, command.feature_id)
    store = run_contexts(cfg.run, sae) if cfg.run else None
    texts = show_texts(cfg) if store is None else None
    lm = load(command.model)
    card = show_feature(lm.model, lm.tokenizer, sae.to(lm.device), fid, cfg, store, texts, progress=True)
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
