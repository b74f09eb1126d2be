"""Stages cached by their inputs and by the code that computes them: the one resume mechanism.

A stage's folder is named ``{name}-{key}`` with ``key = sha256(json(inputs) + code_version(packages))[:12]``:
everything that determines its output (its config, the identity of upstream stages) and the source of the
subpackages that compute it. Change either and the stage gets a new folder; a stale result is never reused.
A stage is finished when its folder holds ``stage.json``; unfinished folders are passed back to the stage,
which resumes its own partial work (harvest shards, training checkpoints, finished sweep cells).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from saesteer.config import atomic_write_json

T = TypeVar("T")
DONE = "stage.json"
PACKAGE_ROOT = Path(__file__).resolve().parent


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hash of a JSON-able object, stable across runs and machines (keys sorted, ``str`` fallback)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def input_hash(inputs: dict[str, Any]) -> str:
    """A 12-character stable hash of a JSON-able dict of inputs."""
    return stable_hash(inputs, 12)


@functools.cache
def code_version(packages: tuple[str, ...] = ("",)) -> str:
    """Hash of the Python sources of saesteer subpackages (``"activations"``, ``"sae"``; ``""``: all of it)."""
    digest = hashlib.sha256()
    for pkg in sorted(packages):
        base = PACKAGE_ROOT / pkg if pkg else PACKAGE_ROOT
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
        for path in files:
            digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@dataclass
class StageRunner:
    """Runs named stages under ``root``, each cached by its inputs and code, and records their wall times."""

    root: Path
    times: dict[str, float] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def folder(self, name: str, inputs: dict[str, Any], code: Sequence[str] = ("",)) -> Path:
        return self.root / f"{name}-{input_hash({'inputs': inputs, 'code': code_version(tuple(code))})}"

    def run(
        self,
        name: str,
        inputs: dict[str, Any],
        fn: Callable[[Path], T],
        load: Callable[[Path], T],
        code: Sequence[str] = ("",),
    ) -> T:
        """Return ``load(folder)`` if the stage is finished, else ``fn(folder)`` (which may resume).

        ``code`` names the subpackages whose source the result depends on (default: all of saesteer).
        """
        folder = self.folder(name, inputs, code)
        self.folders[name] = folder
        marker = folder / DONE
        if marker.is_file():
            info = json.loads(marker.read_text())
            self.times[name] = float(info.get("seconds", 0.0))
            self.log(f"[{name}] cached in {folder} ({self.times[name]:.0f} s when computed)")
            return load(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "inputs.json", {"inputs": inputs, "code": code_version(tuple(code))})
        self.log(f"[{name}] running in {folder}")
        t0 = time.time()
        result = fn(folder)
        seconds = time.time() - t0
        self.times[name] = seconds
        atomic_write_json(marker, {"name": name, "seconds": self.times[name], "finished": time.time()})
        self.log(f"[{name}] done in {seconds:.0f} s")
        return result
