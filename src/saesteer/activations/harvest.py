"""Harvest residual-stream activations with the truncated forward into a sharded bf16 cache.

The run is resumable: the manifest records, per shard, how many input windows had been consumed, so
a rerun skips those windows and appends new shards. Positions that are padding, optionally special
(template) tokens, and tokens whose activation norm is an outlier (e.g. the attention-sink first
token, whose norm is tens of times the median) are dropped.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saesteer.activations.sources import chat_windows, iter_texts, mix, pack_tokens, shuffled_texts
from saesteer.activations.store import read_manifest, write_manifest, write_shard
from saesteer.config import config_to_dict, opt
from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter


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
    held_out_tokens: int = opt(65_536, "tokens kept aside (shard 0) for evaluation")
    context_len: int = opt(128, "tokens per window")
    batch_size: int = opt(32, "windows per forward pass")
    shard_tokens: int = opt(262_144, "tokens per shard file")
    drop_special: bool = opt(True, "drop special/template tokens (<|im_start|> etc.)")
    outlier_factor: float = opt(8.0, "drop tokens whose norm exceeds this many times the median norm (0: keep all)")
    seed: int = opt(0, "shuffle seed for the corpus stream")


def _windows(cfg: HarvestConfig, tokenizer: Any, chat: list[list[dict[str, str]]]) -> Iterator[tuple[list[int], bool]]:
    """Token windows in harvest order, each with whether it is a chat window."""
    if not cfg.corpus and not chat:
        raise SaesteerError("no data to harvest; pass --corpus FILE and/or --chat-file FILE")
    texts = itertools.chain.from_iterable(iter_texts(c, cfg.text_key) for c in cfg.corpus)
    corpus = pack_tokens(tokenizer, shuffled_texts(texts, cfg.seed), cfg.context_len) if cfg.corpus else iter(())
    chat_w = list(chat_windows(tokenizer, chat, cfg.context_len))
    if not cfg.corpus:
        return ((w, True) for w in itertools.cycle(chat_w))
    chat_ids = {id(w) for w in chat_w}  # mix() yields these very lists, so identity tells the source
    return ((w, id(w) in chat_ids) for w in mix(corpus, chat_w, cfg.chat_fraction, cfg.seed))


def right_pad(windows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad windows (positions stay 0..n-1 without position-id bookkeeping)."""
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(windows), width, dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.tensor(w)
        mask[i, : len(w)] = 1
    return ids, mask


def select_tokens(
    acts: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, special: set[int], outlier_factor: float
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Keep real, non-special tokens whose norm is not an outlier.

    Returns (acts [n, d], n dropped as outliers, row [n]: the window each kept token came from).
    """
    keep = mask.bool()
    if special:
        keep &= ~torch.isin(ids, torch.tensor(sorted(special)))
    flat = acts[keep].float()
    rows = keep.nonzero()[:, 0]
    if flat.shape[0] == 0 or outlier_factor <= 0:
        return flat, 0, rows
    norms = flat.norm(dim=-1)
    ok = norms <= outlier_factor * norms.median()
    return flat[ok], int((~ok).sum()), rows[ok]


@torch.no_grad()
def harvest(
    model: Any,
    tokenizer: Any,
    cfg: HarvestConfig,
    model_name: str,
    chat: list[list[dict[str, str]]] | None = None,
    progress: bool = True,
) -> Path:
    """Harvest ``cfg.n_tokens`` activations at ``cfg.hook`` into ``cfg.out_dir``; resume a partial run."""
    adapter = ArchAdapter(model)
    hp = adapter.check(cfg.hook)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chat = chat or []
    manifest = read_manifest(out)
    if manifest is not None:
        if manifest.get("model") != model_name or manifest.get("hook_name") != hp.name:
            raise SaesteerError(
                f"{out} already holds activations of {manifest.get('model')!r} at {manifest.get('hook_name')!r}; "
                "use another --out-dir for this model / hook point"
            )
    else:
        manifest = {
            "format": "saesteer-activations-v1",
            "model": model_name,
            "model_type": adapter.model_type,
            "hook_name": hp.name,
            "layer": hp.layer,
            "d_model": adapter.d_model,
            "dtype": "bfloat16",
            "context_len": cfg.context_len,
            "sources": {
                "corpus": cfg.corpus,
                "chat_file": cfg.chat_file,
                "chat_conversations": len(chat),
                "chat_fraction": cfg.chat_fraction,
            },
            "config": config_to_dict(cfg),
            "shards": [],
            "n_tokens": 0,
            "windows_consumed": 0,
            "dropped_outliers": 0,
            "dropped_special": cfg.drop_special,
            "complete": False,
            "seconds": 0.0,
        }

    def train_tokens() -> int:
        return sum(s["n_tokens"] for s in manifest["shards"][1:])

    if manifest["shards"] and train_tokens() >= cfg.n_tokens:
        manifest["complete"] = True
        write_manifest(out, manifest)
        return out
    windows = _windows(cfg, tokenizer, chat)
    consumed = int(manifest["windows_consumed"])
    windows = itertools.islice(windows, consumed, None)
    special = set(tokenizer.all_special_ids) if cfg.drop_special else set()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = next(model.parameters()).device
    buf: list[torch.Tensor] = []
    buf_chat: list[torch.Tensor] = []
    buf_n = 0
    total = cfg.n_tokens + cfg.held_out_tokens
    done = sum(s["n_tokens"] for s in manifest["shards"])
    bar = tqdm(total=total, initial=done, unit="tok", desc=f"harvest {hp.name}", disable=not progress, unit_scale=True)
    t0 = time.time()

    def flush(acts: torch.Tensor, is_chat: torch.Tensor) -> None:
        nonlocal t0
        entry = write_shard(out, len(manifest["shards"]), acts, is_chat)
        entry["windows_end"] = consumed
        manifest["shards"].append(entry)
        manifest["n_tokens"] = train_tokens()
        manifest["windows_consumed"] = consumed
        manifest["seconds"] = float(manifest["seconds"]) + time.time() - t0
        t0 = time.time()
        write_manifest(out, manifest)

    while True:
        have = train_tokens() + (buf_n if manifest["shards"] else 0)
        if manifest["shards"] and have >= cfg.n_tokens:
            break
        tagged = list(itertools.islice(windows, cfg.batch_size))
        if not tagged:
            break
        chunk = [w for w, _ in tagged]
        chat_rows = torch.tensor([c for _, c in tagged], dtype=torch.bool)
        ids, mask = right_pad(chunk, pad_id)
        acts = adapter.run_to(hp, ids.to(dev), mask.to(dev)).cpu()
        if not torch.isfinite(acts).all():
            raise SaesteerError(f"non-finite activations at {hp.name}; try --dtype fp32")
        kept, dropped, rows = select_tokens(acts, ids, mask, special, cfg.outlier_factor)
        manifest["dropped_outliers"] += dropped
        consumed += len(chunk)
        buf.append(kept.to(torch.bfloat16))
        buf_chat.append(chat_rows[rows])
        buf_n += kept.shape[0]
        bar.update(kept.shape[0])
        if not manifest["shards"]:
            if buf_n >= cfg.held_out_tokens:  # shard 0 is exactly the held-out split
                allacts, allchat = torch.cat(buf), torch.cat(buf_chat)
                flush(allacts[: cfg.held_out_tokens], allchat[: cfg.held_out_tokens])
                buf, buf_chat = [allacts[cfg.held_out_tokens :]], [allchat[cfg.held_out_tokens :]]
                buf_n = allacts.shape[0] - cfg.held_out_tokens
        elif buf_n >= cfg.shard_tokens or train_tokens() + buf_n >= cfg.n_tokens:
            flush(torch.cat(buf), torch.cat(buf_chat))
            buf, buf_chat, buf_n = [], [], 0
    if buf_n and manifest["shards"]:
        flush(torch.cat(buf), torch.cat(buf_chat))
    bar.close()
    if train_tokens() < cfg.n_tokens:
        raise SaesteerError(
            f"sources ran out after {train_tokens():,} of {cfg.n_tokens:,} tokens; add corpus data or lower --n-tokens"
        )
    manifest["complete"] = True
    write_manifest(out, manifest)
    return out
