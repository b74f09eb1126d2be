"""On-disk activation cache: bf16 shards (safetensors) plus a JSON manifest, and a shuffling reader.

Layout of a cache folder::

    manifest.json          model, hook point, d_model, sources, token counts, shard list (size + sha256)
    shard_00000.safetensors  {"acts": bf16 [n_tokens, d_model], "kind": uint8 [n_tokens] (0 corpus, 1 chat
                             content, 2 chat template), "is_chat": uint8 (kind != 0), "window": int64 [n_tokens]
                             (index of the token's window in the harvest order)}  (shard 0: the held-out split)
    shard_00001.safetensors  ...

Every shard and the manifest are written atomically; a shard listed in the manifest is complete. A
shard whose size or sha256 no longer matches is reported as corrupt, never silently used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, load_file, save

from saesteer.config import atomic_write_bytes, atomic_write_json
from saesteer.errors import SaesteerError

MANIFEST = "manifest.json"


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


SOURCES = ("all", "corpus", "chat")


def write_shard(
    folder: Path, index: int, acts: torch.Tensor, kind: torch.Tensor | None = None, window: torch.Tensor | None = None
) -> dict[str, Any]:
    """Write one shard atomically; return its manifest entry.

    ``kind`` (one per token: 0 corpus, 1 chat content, 2 chat template; a bool tensor means chat or not)
    lets a later run train on one source alone (``ActivationStore(path, source="corpus")``) or measure
    each kind apart; ``window`` records each token's window index.
    """
    tensors = {"acts": acts.to(torch.bfloat16).contiguous()}
    is_chat = None
    if kind is not None:
        is_chat = kind if kind.dtype == torch.bool else kind != 0
        tensors["is_chat"] = is_chat.to(torch.uint8).contiguous()
        if kind.dtype != torch.bool:
            tensors["kind"] = kind.to(torch.uint8).contiguous()
    if window is not None:
        tensors["window"] = window.to(torch.int64).contiguous()
    data = save(tensors)
    atomic_write_bytes(folder / shard_name(index), data)
    entry: dict[str, Any] = {
        "file": shard_name(index),
        "n_tokens": int(acts.shape[0]),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if is_chat is not None:
        entry["n_chat"] = int(is_chat.sum())
    if "kind" in tensors:
        entry["n_template"] = int((tensors["kind"] == 2).sum())
    return entry


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a cache folder, or None if there is none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except json.JSONDecodeError:
        raise SaesteerError(f"{path} is corrupt; delete the cache folder {folder} and harvest again") from None


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(folder / MANIFEST, manifest)


class ActivationStore:
    """Read a harvested activation cache: manifest, held-out tokens and shuffled training batches."""

    def __init__(self, path: str | Path, source: str = "all"):
        if source not in SOURCES:
            raise SaesteerError(f"unknown token source {source!r}; use one of {', '.join(SOURCES)}")
        self.path = Path(path)
        self.source = source
        manifest = read_manifest(self.path)
        if manifest is None:
            raise SaesteerError(f"{self.path} is not an activation cache (no {MANIFEST}); run `saesteer harvest` first")
        self.manifest = manifest
        shards = manifest.get("shards", [])
        if len(shards) < 2:
            raise SaesteerError(f"activation cache {self.path} has no training shards yet; run `saesteer harvest`")
        if source != "all" and any("n_chat" not in s for s in shards):
            raise SaesteerError(
                f"activation cache {self.path} has no chat/corpus token labels (harvested before they were "
                "recorded); harvest again to train on one source only, or use source 'all'"
            )
        self.held_out_shards = shards[:1]
        self.train_shards = [self._selected(s) for s in shards[1:]]

    def _selected(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The manifest entry with ``n_tokens`` counting only the selected source's tokens."""
        if self.source == "all":
            return entry
        n_chat = int(entry["n_chat"])
        return {**entry, "n_tokens": n_chat if self.source == "chat" else int(entry["n_tokens"]) - n_chat}

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def hook_name(self) -> str:
        return str(self.manifest["hook_name"])

    @property
    def n_tokens(self) -> int:
        """Training tokens (held-out excluded)."""
        return sum(int(s["n_tokens"]) for s in self.train_shards)

    def check_matches(self, model: str | None = None, hook_name: str | None = None, d_model: int | None = None) -> None:
        """Raise if this cache came from another model, hook point or width."""
        m = self.manifest
        if model is not None and m.get("model") not in (model, None):
            raise SaesteerError(
                f"activation cache {self.path} is from model {m.get('model')!r}, not {model!r}; "
                "harvest again for this model"
            )
        if hook_name is not None and m.get("hook_name") != hook_name:
            raise SaesteerError(
                f"activation cache {self.path} is at {m.get('hook_name')!r}, not {hook_name!r}; "
                "harvest at that hook point or pick the matching SAE"
            )
        if d_model is not None and self.d_model != d_model:
            raise SaesteerError(f"activation cache {self.path} has width {self.d_model}, expected {d_model}")

    def load_shard(self, entry: dict[str, Any]) -> torch.Tensor:
        """Load one shard (bf16), verifying its size and sha256."""
        f = self.path / entry["file"]
        if not f.is_file():
            raise SaesteerError(f"shard {f} is missing; run `saesteer harvest` again on {self.path} to repair it")
        data = f.read_bytes()
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise SaesteerError(
                f"shard {f} is corrupt (size or checksum differ); rerun `saesteer harvest` to rebuild it"
            )
        tensors = load(data)
        if self.source == "all" or entry is self.held_out_shards[0]:
            return tensors["acts"]
        keep = tensors["is_chat"].bool()
        return tensors["acts"][keep if self.source == "chat" else ~keep]

    def held_out(self, n_tokens: int | None = None) -> torch.Tensor:
        """Held-out tokens (shard 0), never used for training."""
        acts = self.load_shard(self.held_out_shards[0])
        return acts if n_tokens is None else acts[:n_tokens]

    def held_out_kinds(self, n_tokens: int | None = None) -> torch.Tensor | None:
        """Kind of each held-out token (0 corpus, 1 chat content, 2 chat template), or None if not recorded."""
        entry = self.held_out_shards[0]
        self.load_shard(entry)  # verifies size and checksum
        tensors = load((self.path / entry["file"]).read_bytes())
        kind = tensors.get("kind")
        if kind is None and "is_chat" in tensors:
            kind = tensors["is_chat"]
        return None if kind is None else (kind if n_tokens is None else kind[:n_tokens])

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        start_step: int = 0,
        buffer_shards: int = 8,
        epochs: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Training batches [batch_size, d_model] from a shuffling buffer over shards, forever (or ``epochs``).

        The order is a pure function of ``seed``, so ``start_step`` resumes exactly where step N left off.
        """
        step = 0
        epoch = 0
        carry = torch.empty(0, self.d_model, dtype=torch.bfloat16)
        while epochs is None or epoch < epochs:
            gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = (
                torch.randperm(len(self.train_shards), generator=gen).tolist()
                if shuffle
                else list(range(len(self.train_shards)))
            )
            for g in range(0, len(order), buffer_shards):
                group = [self.train_shards[i] for i in order[g : g + buffer_shards]]
                # skip whole groups cheaply when resuming far ahead
                group_tokens = sum(int(s["n_tokens"]) for s in group) + carry.shape[0]
                if step + group_tokens // batch_size < start_step:
                    step += group_tokens // batch_size
                    keep = group_tokens % batch_size
                    carry = self._group_tail(group, carry, gen, shuffle, keep)
                    continue
                acts = torch.cat([carry, *(self.load_shard(s) for s in group)])
                if shuffle:
                    acts = acts[torch.randperm(acts.shape[0], generator=gen)]
                n_full = acts.shape[0] // batch_size
                for b in range(n_full):
                    if step >= start_step:
                        yield acts[b * batch_size : (b + 1) * batch_size]
                    step += 1
                carry = acts[n_full * batch_size :]
            epoch += 1

    def _group_tail(
        self, group: list[dict[str, Any]], carry: torch.Tensor, gen: torch.Generator, shuffle: bool, keep: int
    ) -> torch.Tensor:
        """The leftover tokens of a skipped group (same RNG use as when the group is read)."""
        acts = torch.cat([carry, *(self.load_shard(s) for s in group)])
        if shuffle:
            acts = acts[torch.randperm(acts.shape[0], generator=gen)]
        return acts[acts.shape[0] - keep :] if keep else acts[:0]


def load_shard_file(path: str | Path) -> torch.Tensor:
    """Load a single shard file without manifest checks (for inspection)."""
    return load_file(str(path))["acts"]
