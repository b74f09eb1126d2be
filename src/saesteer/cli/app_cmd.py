"""``saesteer app``: a local feature browser, steering playground and results viewer (see ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from saesteer.app.config import AppConfig
from saesteer.cli.common import FLAT, Command
from saesteer.model.loading import ModelConfig


@dataclass
class AppCommand:
    """Serve the app on 127.0.0.1 (another address only with --host, with a warning)."""

    app: Annotated[AppConfig, FLAT] = field(default_factory=AppConfig)
    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)


def run(cfg: AppCommand) -> int:
    from saesteer.app.server import serve
    from saesteer.app.state import AppState
    from saesteer.model.loading import load
    from saesteer.sae.io import load_sae

    cfg.app.validate()
    sae = load_sae(cfg.app.sae, dtype="float32")  # fails fast on a bad folder, before the model loads
    lm = load(cfg.model)
    state = AppState.build(lm.model, lm.tokenizer, lm.spec, sae.to(lm.device), cfg.app)
    serve(state, cfg.app.host, cfg.app.port)
    return 0


COMMANDS = [
    Command(
        "app",
        "browse SAE features, steer live and view study results in a local web app",
        AppCommand,
        run,
        description="A local web app (127.0.0.1 by default): a feature browser (top contexts, density, logit lens, "
        "nearest features, screen results), a steering playground (baseline, steered and gated outputs streamed "
        "side by side, with the gate's decision and the equivalent `saesteer generate` command) and the study's "
        "results. Example: saesteer app --sae runs/sae --features runs/features/features.json",
    )
]
