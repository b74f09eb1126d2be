"""Dataclass configs: one per stage, nested into one tree per command, read from files strictly.

Each stage has one dataclass config. Fields carry their help text in ``metadata["help"]`` (use
:func:`opt`), so the same text documents the Python API and the ``--help`` of the CLI (which reads it
through tyro). A config file is a nested mapping with the same shape as the config tree; values are
type-checked with typeguard, and a key the tree does not have is an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import typeguard
import yaml

from saesteer.errors import SaesteerError

T = TypeVar("T")


def opt(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a default and a help text (shown by ``--help``)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _checked(value: Any, tp: Any, where: str, source: str) -> Any:
    """``value`` if it is of type ``tp`` (ints widen to float, tuples to lists), else a one-line error."""
    if isinstance(value, (list, tuple)):
        value = tuple(value) if typing.get_origin(tp) is tuple else list(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        if isinstance(value, bool) and bool not in (tp, *typing.get_args(tp)):
            raise typeguard.TypeCheckError("a bool is not a number here")
        typeguard.check_type(value, tp, collection_check_strategy=typeguard.CollectionCheckStrategy.ALL_ITEMS)
    except typeguard.TypeCheckError:
        name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        raise SaesteerError(f"{where} in {source} is {value!r}; give a value of type {name}") from None
    return value


def merge_config(base: T, values: Mapping[str, Any], source: str = "config", _path: str = "") -> T:
    """A copy of dataclass config ``base`` with ``values`` (a nested mapping) set on it.

    Keys may use ``-`` for ``_``. A key the config does not have, or a value of the wrong type, is a
    one-line :class:`SaesteerError` naming ``source`` (e.g. the config file) and the known keys.
    """
    cls = type(base)
    types_ = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for raw, value in values.items():
        key = str(raw).replace("-", "_")
        where = f"{_path}{key}"
        if key not in names:
            raise SaesteerError(
                f"unknown key {where!r} in {source} (known{' under ' + repr(_path[:-1]) if _path else ''}: "
                f"{', '.join(names)})"
            )
        tp = types_[key]
        if _is_config(tp):
            if not isinstance(value, Mapping):
                raise SaesteerError(f"{where!r} in {source} must be a section (a mapping of its keys to values)")
            changes[key] = merge_config(getattr(base, key), value, source, f"{where}.")
        else:
            changes[key] = _checked(value, tp, repr(where), source)
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def config_from_dict(cls: type[T], values: Mapping[str, Any], source: str = "config") -> T:
    """Build dataclass config ``cls`` from its defaults and a nested mapping (strict, see :func:`merge_config`)."""
    return merge_config(cls(), values, source)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML, YAML or JSON config file into a dict (one-line errors for every bad file)."""
    p = Path(path)
    if p.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise SaesteerError(f"config file {p}: unknown format {p.suffix or '(none)'!r}; use .toml, .yaml or .json")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SaesteerError(
            f"cannot read config file {p} ({reason}); pass a readable .toml, .yaml or .json file"
        ) from None
    try:
        if p.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SaesteerError(f"config file {p} is malformed ({first}); fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SaesteerError(f"config file {p} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly nested dict of a dataclass config (every field, paths as strings)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


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
