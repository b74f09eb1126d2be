"""Shared CLI helpers: model options, config-file loading, resolved-config writing."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from saesteer.config import add_dataclass_args, atomic_write_json, build_config, config_to_dict, read_config_file
from saesteer.model.loading import LoadedModel, ModelConfig, load

T = TypeVar("T")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --dtype, --device, --cache-dir, --trust-remote-code."""
    add_dataclass_args(parser, ModelConfig)


def add_config_file_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="config file (.toml, .yaml or .json); flags override it")


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    """Load the model named by the parsed model options."""
    return load(build_config(ModelConfig, None, args))


def config_from_args(cls: type[T], args: argparse.Namespace, section: str | None = None) -> T:
    """Build a stage config from defaults, ``--config`` (optionally one section of it) and flags."""
    file_values: dict[str, Any] = read_config_file(getattr(args, "config", None))
    if section is not None:
        file_values = file_values.get(section, {})
    names = {f for f in cls.__dataclass_fields__}  # type: ignore[attr-defined]
    file_values = {k: v for k, v in file_values.items() if k.replace("-", "_") in names}
    return build_config(cls, file_values, args)


def write_resolved_config(out_dir: str | Path, **configs: Any) -> None:
    """Write ``resolved_config.json`` with every stage config next to a run's outputs."""
    atomic_write_json(Path(out_dir) / "resolved_config.json", {k: config_to_dict(v) for k, v in configs.items()})
