"""``saesteer model info``: architecture, layers, d_model, hook points."""

from __future__ import annotations

import argparse
import json

from saesteer.cli.common import add_model_args, model_from_args
from saesteer.model.adapter import ArchAdapter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect a model", description="Inspect a model.")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    info = msub.add_parser(
        "info",
        help="architecture, layers, d_model and hook points",
        description="Print architecture, number of layers, d_model and hook points.",
    )
    add_model_args(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    lm = model_from_args(args)
    info = ArchAdapter(lm.model).info()
    info.update(model=lm.spec, source=lm.source, dtype=str(lm.dtype).removeprefix("torch."), device=str(lm.device))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:12s} {', '.join(v) if isinstance(v, list) else v}")
    return 0
