"""The ``saesteer`` command line.

Each subcommand lives in its own module of this package with a ``register(subparsers)`` function
that adds its parser and sets ``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from saesteer.errors import SaesteerError

# module names under saesteer.cli that provide subcommands, in --help order
COMMAND_MODULES = [
    "model_cmd",
    "generate_cmd",
    "harvest_cmd",
    "sae_cmd",
    "features_cmd",
    "eval_cmd",
    "reproduce_cmd",
    "app_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="saesteer",
        description="Steer a chat model's refusals with SAE features, and measure what it costs.",
    )
    from saesteer import __version__

    parser.add_argument("--version", action="version", version=f"saesteer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"saesteer.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"saesteer.cli.{name}":
                continue  # that stage is not part of this build
            raise
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line and exit 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SaesteerError as exc:
        print(f"saesteer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("saesteer: interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
