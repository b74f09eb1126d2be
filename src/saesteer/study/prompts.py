"""Every prompt the study uses, drawn once by purpose from the split registry.

The plan (:func:`saesteer.evaluation.selection.study_takes`) names a dataset and a size for each purpose:
SAE chat data, the refusal direction, the feature rankers, the causal screen, the clamp and gate choice,
the gate's probe and calibration, and test scoring. Dev purposes draw from each dataset's dev part, test
scoring from its test part, and the registry refuses any text that would serve both; ``splits.json``
records the sha256 of every text per purpose so the disjointness can be checked from the file alone.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from saesteer.evaluation.records import Prompt
from saesteer.evaluation.selection import StudySizes, select, study_takes
from saesteer.evaluation.splits import SplitRegistry, text_hash
from saesteer.study.config import StudyConfig


@dataclass
class StudyPrompts:
    """The drawn prompts, ``{(purpose, dataset): prompts}``, and the registry that recorded them."""

    registry: SplitRegistry
    drawn: dict[tuple[str, str], list[Prompt]]

    def prompts(self, purpose: str, harmful: bool | None = None) -> list[Prompt]:
        """Every prompt drawn for ``purpose`` (in plan order), optionally one side only."""
        out = [p for (pur, _), ps in self.drawn.items() if pur == purpose for p in ps]
        return out if harmful is None else [p for p in out if p.should_refuse == harmful]

    def texts(self, purpose: str, harmful: bool | None = None) -> list[str]:
        return [p.text for p in self.prompts(purpose, harmful)]

    def datasets(self, purpose: str) -> list[str]:
        return [ds for (pur, ds) in self.drawn if pur == purpose]

    def test_sets(self) -> dict[str, list[Prompt]]:
        """The scored safety sets, ``{dataset: prompts}``."""
        return {ds: ps for (pur, ds), ps in self.drawn.items() if pur == "test"}

    def write(self, path: str | os.PathLike[str]) -> Path:
        return self.registry.write(path)


def draw_prompts(cfg: StudyConfig, real_data: bool) -> StudyPrompts:
    """Draw the study's prompts under ``cfg.seed`` at the sizes of its stage configs."""
    sizes = StudySizes(
        chat_n=cfg.chat.n,
        direction_n=cfg.dev.direction_n,
        rank_n=cfg.features.n_rank,
        screen_n=cfg.features.n_harmful,
        clamp_n=cfg.dev.choice_n,
        gate_n=cfg.dev.probe_n,
        safety_n=cfg.safety.n or None,
        alpaca_n=cfg.safety.alpaca_n,
        unseen=cfg.safety.unseen,
    )
    registry = SplitRegistry(cfg.data_dir)
    return StudyPrompts(registry, select(registry, study_takes(real_data, sizes), cfg.seed))


def digest(texts: Sequence[str]) -> str:
    """One short hash of a list of prompts (a stage input: another sample means another stage key)."""
    return hashlib.sha256("\n".join(text_hash(t) for t in texts).encode()).hexdigest()[:16]
