"""Dataclass configs that double as command-line options.

Each stage has one dataclass config. Fields carry their help text in ``metadata["help"]`` (use
:func:`opt`), so the same text documents the Python API and the ``--help`` of the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from saesteer.errors import SaesteerError

T = TypeVar("T")


def opt(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a default and a help text (shown by ``--help``)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, is_list) for ``X``, ``X | None``, ``list[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def _pct(value: Any) -> str:
    return str(value).replace("%", "%%")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        name = "--" + prefix + f.name.replace("_", "-")
        help_text = str(f.metadata.get("help", "")).replace("%", "%%")  # argparse formats help with %
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        if tp is bool:
            parser.add_argument(
                name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: {_pct(default)})",
            )
            continue
        conv = tp if tp in (int, float, str) else str
        parser.add_argument(
            name,
            type=conv,
            nargs="+" if is_list else None,
            default=None,
            metavar=f.name.upper(),
            help=f"{help_text} (default: {_pct(default)})",
        )


def _coerce(cls: type, name: str, value: Any) -> Any:
    hints = typing.get_type_hints(cls)
    tp, is_list = _base_type(hints[name])
    if value is None:
        return None
    try:
        if is_list:
            return [tp(v) if tp in (int, float, str) else v for v in value]
        if tp in (int, float, str) and not isinstance(value, bool):
            return tp(value)
        if tp is bool and not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {value!r}")
    except (TypeError, ValueError) as exc:
        raise SaesteerError(f"config field {name!r}: {exc}; give a value of type {tp.__name__}") from None
    return value


def build_config(
    cls: type[T], file_values: dict[str, Any] | None = None, ns: argparse.Namespace | None = None, prefix: str = ""
) -> T:
    """Build ``cls`` from defaults, then a config file's values, then command-line flags (highest)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        key = key.replace("-", "_")
        if key not in names:
            raise SaesteerError(
                f"unknown config key {key!r} for {cls.__name__}; valid keys: {', '.join(sorted(names))}"
            )
        values[key] = _coerce(cls, key, value)
    if ns is not None:
        for name in names:
            v = getattr(ns, prefix.replace("-", "_") + name, None)
            if v is not None:
                values[name] = _coerce(cls, name, v)
    return cls(**values)


def read_config_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a dict."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise SaesteerError(f"config file {p} not found; pass an existing .toml, .yaml or .json file")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            return tomllib.loads(text)
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise SaesteerError(f"config file {p}: unknown format; use .toml, .yaml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise SaesteerError(f"config file {p} is malformed ({exc}); fix its syntax") from None
    if not isinstance(data, dict):
        raise SaesteerError(f"config file {p} must hold a mapping of keys to values")
    return data


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a dataclass config."""
    out = dataclasses.asdict(cfg)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; written files are ordinary readable outputs
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically, indented, keys in insertion order."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
