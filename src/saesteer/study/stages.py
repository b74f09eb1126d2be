"""Stages cached by their inputs.

A stage's folder is named by the hash of everything that determines its output (its config and the
identity of upstream stages). A stage is finished when its folder holds ``stage.json``; unfinished
folders are passed back to the stage, which resumes its own partial work (harvest shards, training
checkpoints, finished sweep cells).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from saesteer.config import atomic_write_json

T = TypeVar("T")
DONE = "stage.json"


def input_hash(inputs: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able dict of inputs."""
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclass
class StageRunner:
    """Runs named stages under ``root``, each cached by its inputs, and records their wall times."""

    root: Path
    times: dict[str, float] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def folder(self, name: str, inputs: dict[str, Any]) -> Path:
        return self.root / f"{name}-{input_hash(inputs)}"

    def run(self, name: str, inputs: dict[str, Any], fn: Callable[[Path], T], load: Callable[[Path], T]) -> T:
        """Return ``load(folder)`` if the stage is finished, else ``fn(folder)`` (which may resume)."""
        folder = self.folder(name, inputs)
        self.folders[name] = folder
        marker = folder / DONE
        if marker.is_file():
            info = json.loads(marker.read_text())
            self.times[name] = float(info.get("seconds", 0.0))
            self.log(f"[{name}] cached in {folder} ({self.times[name]:.0f} s when computed)")
            return load(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "inputs.json", inputs)
        self.log(f"[{name}] running in {folder}")
        t0 = time.time()
        result = fn(folder)
        seconds = time.time() - t0
        self.times[name] = seconds
        atomic_write_json(marker, {"name": name, "seconds": self.times[name], "finished": time.time()})
        self.log(f"[{name}] done in {seconds:.0f} s")
        return result
