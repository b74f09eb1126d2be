"""Training checkpoints: atomic folders of safetensors + JSON, checked on load, with fallback.

A checkpoint is ``<root>/step_00000100/`` holding ``state.safetensors`` (every tensor: weights, optimizer
moments, counters, RNG state) and ``meta.json`` (step, scalars, the sha256 of the tensor file). It is
written into a hidden temporary folder and renamed into place, so a checkpoint folder is either complete
or absent. Loading verifies the hash; a corrupt newest checkpoint is reported and the previous one used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from saesteer.errors import SaesteerError

STATE_FILE = "state.safetensors"
META_FILE = "meta.json"
PREFIX = "step_"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete-looking checkpoint folders under ``root``, newest (highest step) first."""
    r = Path(root)
    if not r.is_dir():
        return []
    found = [p for p in r.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]), reverse=True)


def save_checkpoint(
    root: str | os.PathLike[str], step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep`` checkpoints."""
    r = Path(root)
    r.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    full_meta = {**meta, "step": step, "sha256": hashlib.sha256(blob).hexdigest(), "n_bytes": len(blob)}
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{PREFIX}{step:08d}-", dir=r))
    try:
        for name, data in ((STATE_FILE, blob), (META_FILE, (json.dumps(full_meta, indent=1) + "\n").encode())):
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        final = r / f"{PREFIX}{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(r)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(r)[max(keep, 1) :]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in r.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify one checkpoint folder; raises :class:`SaesteerError` if it is corrupt."""
    p = Path(path)
    try:
        meta = json.loads((p / META_FILE).read_text())
        blob = (p / STATE_FILE).read_bytes()
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SaesteerError(f"checkpoint {p} is unreadable ({exc})") from None
    if not isinstance(meta, dict) or "sha256" not in meta:
        raise SaesteerError(f"checkpoint {p} has a malformed {META_FILE}")
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise SaesteerError(f"checkpoint {p} is corrupt ({STATE_FILE} does not match its recorded sha256)")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError) as exc:
        raise SaesteerError(f"checkpoint {p} is corrupt ({exc})") from None
    return tensors, meta


def load_latest(root: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The newest valid checkpoint under ``root`` (None if there is none).

    A corrupt checkpoint is reported on stderr and skipped in favour of the previous one; if every
    checkpoint is corrupt, raises :class:`SaesteerError`.
    """
    found = list_checkpoints(root)
    errors: list[str] = []
    for path in found:
        try:
            return read_checkpoint(path)
        except SaesteerError as exc:
            errors.append(str(exc))
            print(f"saesteer: warning: {exc}; trying an older checkpoint", file=sys.stderr)
    if found:
        raise SaesteerError(
            f"every checkpoint in {root} is corrupt ({errors[0]}); delete that folder (or pass --no-resume) to start over"
        )
    return None
