"""``saesteer model info``: architecture, layers, d_model, hook points."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated

from saesteer.cli.common import FLAT, Command
from saesteer.config import opt
from saesteer.model.adapter import ArchAdapter
from saesteer.model.loading import ModelConfig, load


@dataclass
class ModelInfoCommand:
    """Print a model's architecture, number of layers, d_model and hook points."""

    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)
    json: bool = opt(False, "print JSON instead of text")


def run_info(cfg: ModelInfoCommand) -> int:
    lm = load(cfg.model)
    info = ArchAdapter(lm.model).info()
    info.update(model=lm.spec, source=lm.source, dtype=str(lm.dtype).removeprefix("torch."), device=str(lm.device))
    if cfg.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:12s} {', '.join(v) if isinstance(v, list) else v}")
    return 0


COMMANDS = [Command("model info", "architecture, layers, d_model and hook points", ModelInfoCommand, run_info)]
