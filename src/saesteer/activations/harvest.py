"""Harvest residual-stream activations with the truncated forward into a sharded bf16 cache.

Windows come in a fixed order (:func:`window_stream`): first ``ceil(held_out_tokens / context_len)``
held-out windows, then training windows. Chat conversations are split once, by a seeded shuffle, into a
held-out pool and a training pool, so a conversation cycled into both phases can never put the same
window in shard 0 (held-out) and in a training shard; corpus windows are never repeated.

Per token the cache keeps its kind (corpus / chat content / chat template, see
:mod:`saesteer.activations.sources`) and the index of its window. Padding is dropped, and so are tokens
whose activation norm exceeds ``outlier_factor`` times the batch median (the attention-sink first token,
tens of times the median). Template and special tokens are kept unless ``drop_special``.

The run is resumable: the manifest records the windows consumed, so a rerun skips them and appends new
shards, and it records the config identity (model, hook, dtype, corpus *content* hashes, chat data hash,
window and split settings). A rerun whose identity differs is refused; only ``n_tokens`` may grow.

Under ``torchrun`` each rank runs every ``world``-th batch of the same window order; rank 0 gathers the
results in batch order and writes the shards, which are therefore identical to a single-process harvest.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saesteer.activations.distributed import broadcast_flag, gather_rows, rank_world
from saesteer.activations.sources import CORPUS, TEMPLATE, chat_windows, iter_texts, mix, pack_tokens, shuffled_texts
from saesteer.activations.store import read_manifest, write_manifest, write_shard
from saesteer.config import config_to_dict, opt
from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter, HookPoint

FORMAT = "saesteer-activations-v2"
Window = tuple[list[int], list[int]]  # token ids, kinds


@dataclass
class HarvestConfig:
    """What to harvest and where to put it."""

    out_dir: str = opt("runs/acts", "activation cache folder (resumes if it already holds a partial harvest)")
    hook: str = opt("blocks.12.hook_resid_post", "hook point, e.g. blocks.12.hook_resid_post")
    corpus: list[str] = opt([], "corpus files or folders (.txt, .jsonl(.gz), .parquet) or hf:DATASET")
    text_key: str = opt("text", "text field of jsonl / parquet corpora")
    chat_file: str | None = opt(None, "jsonl of chat conversations ({'messages': [...]}) mixed into the corpus")
    chat_fraction: float = opt(0.1, "fraction of windows drawn from chat data (cycled if fewer)")
    n_tokens: int = opt(2_000_000, "training tokens to harvest (after dropping)")
    held_out_tokens: int = opt(
        65_536, "held-out split (shard 0): the first ceil(this / context_len) windows' tokens, never trained on"
    )
    context_len: int = opt(128, "tokens per window")
    batch_size: int = opt(32, "windows per forward pass")
    shard_tokens: int = opt(262_144, "tokens per shard file")
    drop_special: bool = opt(False, "drop special and chat-template tokens (default: keep them, labelled 'template')")
    outlier_factor: float = opt(8.0, "drop tokens whose norm exceeds this many times the median norm (0: keep all)")
    seed: int = opt(0, "shuffle seed for the corpus stream and the chat held-out split")

    def held_out_windows(self) -> int:
        return max(1, math.ceil(self.held_out_tokens / self.context_len))


def file_identity(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file's content (its name does not matter; a .gz file counts by what it holds)."""
    digest, size = hashlib.sha256(), 0
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def corpus_identity(corpus: list[str]) -> list[Any]:
    """Content identity of each corpus entry: a file's hash, a folder's files' hashes in order, or hf:NAME."""
    out: list[Any] = []
    for entry in corpus:
        p = Path(entry)
        if entry.startswith("hf:"):
            out.append(entry)
        elif p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            out.append([file_identity(f) for f in files])
        elif p.is_file():
            out.append(file_identity(p))
        else:
            raise SaesteerError(f"corpus {p} not found; pass a .txt, .jsonl(.gz) or .parquet file, or hf:DATASET")
    return out


def config_identity(cfg: HarvestConfig, model_name: str, model: Any, chat: list[list[dict[str, str]]]) -> dict:
    """Everything that decides which activations land in which shard (``n_tokens`` only decides how many)."""
    chat_blob = repr([[(m.get("role"), m.get("content")) for m in c] for c in chat]).encode()
    return {
        "model": model_name,
        "dtype": str(next(model.parameters()).dtype),
        "hook": cfg.hook,
        "corpus": corpus_identity(cfg.corpus),
        "text_key": cfg.text_key,
        "chat": {"conversations": len(chat), "sha256": hashlib.sha256(chat_blob).hexdigest()},
        "chat_fraction": cfg.chat_fraction,
        "held_out_tokens": cfg.held_out_tokens,
        "context_len": cfg.context_len,
        "batch_size": cfg.batch_size,
        "shard_tokens": cfg.shard_tokens,
        "drop_special": cfg.drop_special,
        "outlier_factor": cfg.outlier_factor,
        "seed": cfg.seed,
    }


def check_identity(out: Path, cached: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """Raise unless a partial cache was harvested with the same config identity."""
    if cached is None:
        raise SaesteerError(f"{out} holds a harvest without a recorded config; use a new --out-dir")
    diff = [k for k in now if cached.get(k) != now[k]]
    if not diff:
        return
    k = diff[0]
    what = "content differs" if k in ("corpus", "chat") else f"cached {cached.get(k)!r}, now {now[k]!r}"
    raise SaesteerError(
        f"{out} holds a harvest made with another config ({k}: {what}; {len(diff)} setting(s) differ); "
        "use another --out-dir or rerun with the cached settings"
    )


def _split_chat(chat_w: list[Window], cfg: HarvestConfig, has_corpus: bool) -> tuple[list[Window], list[Window]]:
    """Disjoint (held-out, training) pools of chat windows, about as many held-out as the held-out phase uses."""
    if not chat_w:
        return [], []
    want = cfg.held_out_windows() * (cfg.chat_fraction if has_corpus else 1.0)
    n_held = min(math.ceil(want), len(chat_w) // 2) if want > 0 else 0
    if not has_corpus and n_held == 0:
        raise SaesteerError("chat-only harvest needs at least 2 conversations (held-out and training); add more")
    order = list(range(len(chat_w)))
    random.Random(cfg.seed).shuffle(order)
    return [chat_w[i] for i in order[:n_held]], [chat_w[i] for i in order[n_held:]]


def window_stream(cfg: HarvestConfig, tokenizer: Any, chat: list[list[dict[str, str]]]) -> Iterator[Window]:
    """(ids, kinds) windows in harvest order: the held-out windows, then training windows."""
    if not cfg.corpus and not chat:
        raise SaesteerError("no data to harvest; pass --corpus FILE and/or --chat-file FILE")
    texts = itertools.chain.from_iterable(iter_texts(c, cfg.text_key) for c in cfg.corpus)
    corpus: Iterator[Window] = (
        (w, [CORPUS] * len(w)) for w in pack_tokens(tokenizer, shuffled_texts(texts, cfg.seed), cfg.context_len)
    )
    held, train = _split_chat(list(chat_windows(tokenizer, chat, cfg.context_len)), cfg, bool(cfg.corpus))

    def phase(pool: list[Window]) -> Iterator[Window]:
        if not cfg.corpus:
            return itertools.cycle(pool)
        return mix(corpus, pool, cfg.chat_fraction, cfg.seed)

    yield from itertools.islice(phase(held), cfg.held_out_windows())
    yield from phase(train)


def right_pad(windows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad windows (positions stay 0..n-1 without position-id bookkeeping)."""
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(windows), width, dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.tensor(w)
        mask[i, : len(w)] = 1
    return ids, mask


def keep_mask(
    acts: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, special: set[int], outlier_factor: float
) -> tuple[torch.Tensor, int]:
    """[B, T] bool of real, non-``special`` positions whose norm is not an outlier; and n dropped as outliers."""
    keep = mask.bool()
    if special:
        keep &= ~torch.isin(ids, torch.tensor(sorted(special)))
    if not keep.any() or outlier_factor <= 0:
        return keep, 0
    norms = acts.float().norm(dim=-1)
    ok = norms <= outlier_factor * norms[keep].median()
    return keep & ok, int((keep & ~ok).sum())


def select_tokens(
    acts: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, special: set[int], outlier_factor: float
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Kept tokens (see :func:`keep_mask`): (acts [n, d], n dropped as outliers, row [n]: each one's window)."""
    keep, dropped = keep_mask(acts, ids, mask, special, outlier_factor)
    return acts[keep].float(), dropped, keep.nonzero()[:, 0]


@dataclass
class _Batch:
    acts: torch.Tensor  # [n, d] bf16
    kind: torch.Tensor  # [n] uint8
    window: torch.Tensor  # [n] int64, index in the window stream
    dropped: int = 0


def _run_batch(
    adapter: ArchAdapter,
    hp: HookPoint,
    tagged: list[Window],
    first: int,
    cfg: HarvestConfig,
    special: set[int],
    pad_id: int,
) -> _Batch:
    """Activations of one batch of windows (``first``: the stream index of its first window)."""
    if not tagged:
        return _Batch(torch.empty(0, adapter.d_model, dtype=torch.bfloat16), torch.empty(0, dtype=torch.uint8),
                      torch.empty(0, dtype=torch.long))  # fmt: skip
    ids, mask = right_pad([w for w, _ in tagged], pad_id)
    kinds, _ = right_pad([k for _, k in tagged], 0)
    dev = next(adapter.model.parameters()).device
    acts = adapter.run_to(hp, ids.to(dev), mask.to(dev)).cpu()
    if not torch.isfinite(acts).all():
        raise SaesteerError(f"non-finite activations at {hp.name}; try --dtype fp32")
    if cfg.drop_special:
        mask = mask * (kinds != TEMPLATE)
    keep, dropped = keep_mask(acts, ids, mask, special, cfg.outlier_factor)
    rows = keep.nonzero()[:, 0]
    return _Batch(acts[keep].to(torch.bfloat16), kinds[keep].to(torch.uint8), rows + first, dropped)


def _new_manifest(cfg: HarvestConfig, model_name: str, adapter: ArchAdapter, hp: HookPoint, ident: dict) -> dict:
    return {
        "format": FORMAT, "model": model_name, "model_type": adapter.model_type, "hook_name": hp.name,
        "layer": hp.layer, "d_model": adapter.d_model, "dtype": "bfloat16", "context_len": cfg.context_len,
        "sources": {"corpus": cfg.corpus, "chat_file": cfg.chat_file, "chat_conversations": ident["chat"]["conversations"],
                    "chat_fraction": cfg.chat_fraction},
        "identity": ident, "config": config_to_dict(cfg), "held_out_windows": cfg.held_out_windows(),
        "kinds": ["corpus", "chat", "template"], "shards": [], "n_tokens": 0, "windows_consumed": 0,
        "dropped_outliers": 0, "dropped_special": cfg.drop_special, "complete": False, "seconds": 0.0,
    }  # fmt: skip


@torch.no_grad()
def harvest(
    model: Any,
    tokenizer: Any,
    cfg: HarvestConfig,
    model_name: str,
    chat: list[list[dict[str, str]]] | None = None,
    progress: bool = True,
) -> Path:
    """Harvest ``cfg.n_tokens`` activations at ``cfg.hook`` into ``cfg.out_dir``; resume a partial run.

    Under torchrun every rank calls this with the same arguments; rank 0 writes the cache.
    """
    adapter = ArchAdapter(model)
    hp = adapter.check(cfg.hook)
    if cfg.held_out_tokens < 1 or cfg.batch_size < 1 or cfg.context_len < 2:
        raise SaesteerError("need held_out_tokens >= 1, batch_size >= 1 and context_len >= 2")
    rank, world = rank_world()
    out = Path(cfg.out_dir)
    chat = chat or []
    ident = config_identity(cfg, model_name, model, chat)
    manifest = read_manifest(out)
    if manifest is not None:
        if manifest.get("model") != model_name or manifest.get("hook_name") != hp.name:
            raise SaesteerError(
                f"{out} already holds activations of {manifest.get('model')!r} at {manifest.get('hook_name')!r}; "
                "use another --out-dir for this model / hook point"
            )
        check_identity(out, manifest.get("identity"), ident)
        manifest["config"]["n_tokens"] = cfg.n_tokens
    else:
        manifest = _new_manifest(cfg, model_name, adapter, hp, ident)
    w = _Writer(out, manifest, cfg, active=rank == 0)
    if not w.done():
        special = set(tokenizer.all_special_ids) if cfg.drop_special else set()
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        stream = itertools.islice(window_stream(cfg, tokenizer, chat), w.consumed, None)
        bar = tqdm(total=cfg.n_tokens, initial=w.train_tokens(), unit="tok", desc=f"harvest {hp.name}",
                   disable=not progress or rank != 0, unit_scale=True)  # fmt: skip
        stop = False
        while not stop:
            batches = [list(itertools.islice(stream, cfg.batch_size)) for _ in range(world)]
            first = w.consumed + sum(len(b) for b in batches[:rank])
            mine = _run_batch(adapter, hp, batches[rank], first, cfg, special, pad_id)
            parts = zip(*(gather_rows(t) for t in (mine.acts, mine.kind, mine.window)), strict=True)
            drops = gather_rows(torch.tensor([mine.dropped]))
            for tagged, (acts, kind, window), drop in zip(batches, parts, drops, strict=True):
                if not tagged or w.done():
                    stop = True
                    break
                before = w.progress()
                w.add(_Batch(acts, kind, window, int(drop.sum())), len(tagged))
                bar.update(w.progress() - before)
            stop = broadcast_flag(stop or w.done())
        bar.close()
    w.finish()
    if w.train_tokens() < cfg.n_tokens:
        raise SaesteerError(
            f"sources ran out after {w.train_tokens():,} of {cfg.n_tokens:,} tokens; add corpus data or lower --n-tokens"
        )
    return out


class _Writer:
    """Rank 0's side of a harvest: buffers kept tokens in window order and writes shards + manifest."""

    def __init__(self, out: Path, manifest: dict[str, Any], cfg: HarvestConfig, active: bool):
        self.out, self.m, self.cfg, self.active = out, manifest, cfg, active
        self.consumed = int(manifest["windows_consumed"])
        self.buf: list[_Batch] = []
        self.t0 = time.time()
        if active:
            out.mkdir(parents=True, exist_ok=True)

    def train_tokens(self) -> int:
        return sum(int(s["n_tokens"]) for s in self.m["shards"][1:])

    def buffered(self) -> int:
        return sum(b.acts.shape[0] for b in self.buf)

    def done(self) -> bool:
        return bool(self.m["shards"]) and self.train_tokens() + self.buffered() >= self.cfg.n_tokens

    def progress(self) -> int:
        """Training tokens written or buffered (0 until the held-out split is written)."""
        return self.train_tokens() + self.buffered() if self.m["shards"] else 0

    def add(self, batch: _Batch, n_windows: int) -> None:
        """Take one batch's kept tokens (in stream order); write shards when due."""
        self.consumed += n_windows
        self.m["dropped_outliers"] += batch.dropped
        self.buf.append(batch)
        if not self.m["shards"]:
            if self.consumed < self.cfg.held_out_windows():
                return
            held = self._take(lambda b: b.window < self.cfg.held_out_windows())
            self._flush(held)
        if self.buffered() >= self.cfg.shard_tokens or self.done():
            self._flush(self._take(lambda b: torch.ones_like(b.window, dtype=torch.bool)))

    def _take(self, sel: Any) -> _Batch:
        """Remove and return the buffered tokens where ``sel(batch)`` holds."""
        cat = [torch.cat([getattr(b, f) for b in self.buf]) for f in ("acts", "kind", "window")]
        whole = _Batch(cat[0], cat[1], cat[2])
        keep = sel(whole)
        self.buf = [_Batch(whole.acts[~keep], whole.kind[~keep], whole.window[~keep])] if (~keep).any() else []
        return _Batch(whole.acts[keep], whole.kind[keep], whole.window[keep])

    def _flush(self, b: _Batch) -> None:
        if not self.active:
            self.m["shards"].append({"n_tokens": int(b.acts.shape[0])})  # the other ranks only count
            return
        entry = write_shard(self.out, len(self.m["shards"]), b.acts, b.kind, b.window)
        entry["windows_end"] = self.consumed
        self.m["shards"].append(entry)
        self.m.update(n_tokens=self.train_tokens(), windows_consumed=self.consumed)
        self.m["seconds"] = float(self.m["seconds"]) + time.time() - self.t0
        self.t0 = time.time()
        write_manifest(self.out, self.m)

    def finish(self) -> None:
        if self.buf and self.m["shards"]:
            self._flush(self._take(lambda b: torch.ones_like(b.window, dtype=torch.bool)))
        if self.active and self.train_tokens() >= self.cfg.n_tokens:
            self.m["complete"] = True
            write_manifest(self.out, self.m)
