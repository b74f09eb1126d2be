"""Stages cached by their inputs and by the code that computes them: the one resume mechanism.

A stage's folder is named ``{name}-{key}`` with ``key = sha256(json(inputs) + code_version(packages))[:12]``:
everything that determines its output (its config, the identity of upstream stages) and the source of the
subpackages that compute it. Change either and the stage gets a new folder; a stale result is never reused.
A stage is finished when its folder holds ``stage.json``; unfinished folders are passed back to the stage,
which resumes its own partial work (harvest shards, training checkpoints, finished sweep cells).
A stage's recorded time counts the work an interrupted run left in its folder: ``attempts.json`` holds when the
current run started and the seconds kept from earlier runs, each earlier run counted from its start to the last
file it wrote (the time after that was lost with it).

Under ``torchrun`` (an initialised process group of ``world`` processes) a stage runs one of two ways:

- **rank 0 only** (the default): rank 0 computes and writes the folder; the others wait for its ``stage.json``
  and ``load`` the result. Inside such a stage every helper sees one process (:func:`shard` is ``(0, 1)``).
- **collective**: every rank calls ``fn`` on the same folder, in lockstep, so a resumed stage reads the same
  partial state everywhere; :func:`shard` gives ``(rank, world)`` so work can be split (generation rounds in
  ``saesteer.evaluation.safety.complete``), and only rank 0 writes (:func:`is_writer`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from saesteer.config import atomic_write_json

T = TypeVar("T")
B = TypeVar("B")
DONE = "stage.json"
ATTEMPTS = "attempts.json"
INPUTS = "inputs.json"
PACKAGE_ROOT = Path(__file__).resolve().parent


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hash of a JSON-able object, stable across runs and machines (keys sorted, ``str`` fallback)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def input_hash(inputs: dict[str, Any]) -> str:
    """A 12-character stable hash of a JSON-able dict of inputs."""
    return stable_hash(inputs, 12)


_MODE: ContextVar[str] = ContextVar("saesteer_stage_mode", default="")  # "", "solo" or "collective"


def _group() -> tuple[int, int]:
    """(rank, world) of the process group, or (0, 1) without one or inside a rank-0-only stage."""
    if _MODE.get() == "solo" or not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard() -> tuple[int, int]:
    """(rank, world) to split work over inside a collective stage; (0, 1) anywhere else."""
    return _group() if _MODE.get() == "collective" else (0, 1)


def is_writer() -> bool:
    """Whether this process writes files: rank 0, or any process outside torchrun."""
    return _group()[0] == 0


def sync() -> None:
    """A barrier among the ranks of a collective stage (no-op anywhere else)."""
    if shard()[1] > 1:
        dist.barrier()


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` in rank order inside a collective stage; ``[obj]`` anywhere else."""
    world = shard()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def from_rank0(obj: T) -> T:
    """Rank 0's ``obj`` on every rank inside a collective stage; ``obj`` anywhere else."""
    if shard()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


def deal(batches: Sequence[B], fn: Callable[[B], T]) -> Iterator[list[tuple[int, T]]]:
    """``fn`` over ``batches``, yielded round by round as ``[(batch index, result), ...]`` in batch order.

    In a collective stage batch ``b`` runs on rank ``b mod world`` and every round's results are all-gathered,
    so every rank sees them all; anywhere else each round is one batch, run here.
    """
    rank, world = shard()
    for r in range(0, len(batches), world):
        mine = [(r + rank, fn(batches[r + rank]))] if r + rank < len(batches) else []
        yield [pair for part in gather_objects(mine) for pair in part]


@contextmanager
def _mode(mode: str) -> Iterator[None]:
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def _wait_for(marker: Path) -> None:
    """Wait (no collective timeout, however long rank 0 takes) until rank 0 has finished a stage."""
    while not marker.is_file():
        time.sleep(0.5)
    dist.barrier()


def _start_attempt(folder: Path) -> float:
    """Record this run's start in ``folder``; return the seconds earlier runs spent on the work kept there."""
    path, kept = folder / ATTEMPTS, 0.0
    if path.is_file():
        prev = json.loads(path.read_text())
        written = [f.stat().st_mtime for f in folder.iterdir() if f.name not in (ATTEMPTS, INPUTS)]
        kept = float(prev.get("kept", 0.0)) + max(0.0, max(written, default=0.0) - float(prev["started"]))
    atomic_write_json(path, {"started": time.time(), "kept": kept})
    return kept


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
    #: called by rank 0 before a stage that is not finished runs, with its name, folder, inputs and code (the study
    #: seeds a new sweep from a predecessor's rows here); what it returns, if anything, is logged
    prepare: Callable[[str, Path, dict[str, Any], Sequence[str]], str | None] | None = None

    def folder(self, name: str, inputs: dict[str, Any], code: Sequence[str] = ("",)) -> Path:
        return self.root / f"{name}-{input_hash({'inputs': inputs, 'code': code_version(tuple(code))})}"

    def run(
        self,
        name: str,
        inputs: dict[str, Any],
        fn: Callable[[Path], T],
        load: Callable[[Path], T],
        code: Sequence[str] = ("",),
        collective: bool = False,
    ) -> T:
        """Return ``load(folder)`` if the stage is finished, else ``fn(folder)`` (which may resume).

        ``code`` names the subpackages whose source the result depends on (default: all of saesteer).
        ``collective``: under torchrun every rank runs ``fn`` (see the module docstring); else rank 0 alone.
        """
        folder = self.folder(name, inputs, code)
        self.folders[name] = folder
        marker = folder / DONE
        rank, world = _group()
        if world > 1:
            dist.barrier()  # every rank sees the same marker state
        if marker.is_file():
            info = json.loads(marker.read_text())
            self.times[name] = float(info.get("seconds", 0.0))
            self.log(f"[{name}] cached in {folder} ({self.times[name]:.0f} s when computed)")
            return load(folder)
        if rank > 0 and not collective:
            _wait_for(marker)
            self.times[name] = float(json.loads(marker.read_text()).get("seconds", 0.0))
            return load(folder)
        if rank == 0:
            note = self.prepare(name, folder, inputs, code) if self.prepare else None
            if note:
                self.log(f"[{name}] {note}")
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(folder / INPUTS, {"inputs": inputs, "code": code_version(tuple(code))})
            self.log(f"[{name}] running in {folder}" + (f" on {world} processes" if collective and world > 1 else ""))
        earlier = _start_attempt(folder) if rank == 0 else 0.0
        if world > 1 and collective:
            dist.barrier()  # the folder exists before any rank writes into it
        t0 = time.time()
        with _mode("collective" if collective and world > 1 else "solo" if world > 1 else ""):
            result = fn(folder)
        seconds = time.time() - t0
        self.times[name] = seconds + earlier
        if rank == 0:
            atomic_write_json(marker, {"name": name, "seconds": self.times[name], "earlier_seconds": earlier,
                                       "finished": time.time()})  # fmt: skip
            self.log(f"[{name}] done in {seconds:.0f} s" + (f" (+{earlier:.0f} s before a resume)" if earlier else ""))
        if world > 1:
            dist.barrier()
        return result
