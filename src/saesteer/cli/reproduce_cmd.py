"""``saesteer reproduce``: the paper's study end to end on a model (default: the embedded one)."""

from __future__ import annotations

import argparse

from saesteer.cli.common import add_model_args, config_from_args, model_from_args
from saesteer.config import add_dataclass_args
from saesteer.study.config import StudyConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the whole study: harvest, SAE, features, sweep, evaluation, report",
        description="Run the study end to end (harvest -> train SAE -> find features -> sweep -> evaluate -> "
        "report). Every stage is cached by its inputs under --out-dir; rerunning resumes.",
    )
    p.add_argument("--config", metavar="FILE", help="config file (.toml, .yaml or .json); flags override it")
    add_model_args(p)
    add_dataclass_args(p, StudyConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saesteer.study.run import run_study

    cfg = config_from_args(StudyConfig, args)
    cfg.resolved()  # validate the profile before loading the model
    lm = model_from_args(args)
    run_study(lm, cfg)
    return 0
