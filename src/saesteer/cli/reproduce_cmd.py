"""``saesteer reproduce``: the paper's study end to end on a model (default: the embedded one)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated

from saesteer.activations.distributed import distributed, local_device
from saesteer.cli.common import FLAT, Command, write_resolved_config
from saesteer.model.loading import ModelConfig, load
from saesteer.study.config import STUDY_OWNED, StudyConfig


@dataclass
class ReproduceCommand:
    """Run the study end to end (harvest -> train SAE -> find features -> sweep -> evaluate -> report). Every
    stage is cached by its inputs under --out-dir; rerunning resumes. --profile picks the defaults of every size."""

    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)
    study: Annotated[StudyConfig, FLAT] = field(default_factory=StudyConfig)


def from_profile(profile: str | None) -> ReproduceCommand:
    """The command's defaults under a profile (``cpu`` when none is named)."""
    return ReproduceCommand(study=StudyConfig.from_profile(profile or "cpu"))


def run(cfg: ReproduceCommand) -> int:
    from saesteer.study.run import run_study

    cfg.study.validate()  # before the model loads
    with distributed(cfg.model.device) as (rank, _world):  # torchrun: harvest, training and sweep split over ranks
        lm = load(replace(cfg.model, device=local_device(cfg.model.device)))
        if rank == 0:
            write_resolved_config(cfg.study.out_dir, cfg)  # the whole tree, the model options included
        run_study(lm, cfg.study)
    return 0


COMMANDS = [
    Command(
        "reproduce",
        "the whole study: harvest, SAE, features, sweep, evaluation, report",
        ReproduceCommand,
        run,
        profile=from_profile,
        profile_key=("study", "profile"),
        hidden=tuple(
            (f"study.{path}", f"{path} is set by the study; set {top} instead") for path, top in STUDY_OWNED.items()
        ),
    )
]
