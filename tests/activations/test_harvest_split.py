"""Harvest integrity: config identity on resume, a held-out split disjoint from training, token kinds, torchrun."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from saesteer.activations.harvest import HarvestConfig, harvest
from saesteer.activations.sources import CHAT, CORPUS, TEMPLATE, token_kinds
from saesteer.activations.store import ActivationStore
from saesteer.errors import SaesteerError
from tests.activations.test_harvest import WORDS, _cfg

# six conversations with disjoint words: any two windows of different conversations differ at every token
VOCABS = [
    "apple pear plum grape lemon melon",
    "copper iron silver nickel zinc tin",
    "violet indigo crimson amber olive teal",
    "thunder storm hail frost sleet mist",
    "marble granite basalt quartz slate flint",
    "velvet linen cotton wool silk denim",
]
CONVS = [
    [
        {"role": "user", "content": " ".join(v.split()[:3] * 3)},
        {"role": "assistant", "content": " ".join(v.split() * 3)},
    ]
    for v in VOCABS
]
PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def _write_corpus(path: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    with gzip.open(path, "wt") as fh:
        for _ in range(120):
            n = int(torch.randint(20, 60, (1,), generator=g))
            fh.write(
                json.dumps({"text": " ".join(WORDS[int(i)] for i in torch.randint(0, 17, (n,), generator=g))}) + "\n"
            )
    return path


def _tensors(folder: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    return load_file(str(folder / entry["file"]))


def test_rerun_with_another_config_is_refused(tmp_path: Path, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    corpus = _write_corpus(tmp_path / "corpus.jsonl.gz", seed=0)
    out = harvest(model, tok, _cfg(tmp_path, corpus, n_tokens=300), "tiny", progress=False)
    ident = json.loads((out / "manifest.json").read_text())["identity"]
    assert ident["corpus"][0]["sha256"] == hashlib.sha256(gzip.decompress(corpus.read_bytes())).hexdigest()
    _write_corpus(corpus, seed=1)  # same file name, other texts
    with pytest.raises(SaesteerError, match=r"another config \(corpus: content differs"):
        harvest(model, tok, _cfg(tmp_path, corpus, n_tokens=600), "tiny", progress=False)
    _write_corpus(corpus, seed=0)
    changes = [({"context_len": 16}, None, "context_len"), ({"seed": 3}, None, "seed"), ({}, CONVS, "chat")]
    changes.append(({"chat_fraction": 0.3}, None, "chat_fraction"))
    for change, chat, field in changes:
        with pytest.raises(SaesteerError, match=f"another config \\({field}:"):
            harvest(model, tok, _cfg(tmp_path, corpus, n_tokens=600, **change), "tiny", chat=chat, progress=False)
    # the same config may ask for more tokens: the cache grows
    grown = ActivationStore(harvest(model, tok, _cfg(tmp_path, corpus, n_tokens=600), "tiny", progress=False))
    assert grown.n_tokens >= 600 and grown.manifest["complete"]


def test_held_out_shares_no_window_with_training(tmp_path: Path, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    tok = copy.deepcopy(tok)  # the fixture's tokenizer is shared by the session
    tok.chat_template = PLAIN_TEMPLATE
    corpus = _write_corpus(tmp_path / "corpus.jsonl.gz", seed=0)
    cfg = _cfg(tmp_path, corpus, chat_fraction=0.4, n_tokens=1500)
    out = harvest(model, tok, cfg, "tiny", chat=CONVS, progress=False)
    shards = json.loads((out / "manifest.json").read_text())["shards"]
    loaded = [_tensors(out, s) for s in shards]

    def chat_rows(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return t["acts"][t.get("kind", t["is_chat"]) != 0]

    held = chat_rows(loaded[0])
    train = torch.cat([chat_rows(t) for t in loaded[1:]])
    assert held.shape[0] > 0 and train.shape[0] > 5 * held.shape[0]  # chat windows cycle many times in training
    # a window repeated in training would reproduce its activations bit for bit
    twins = (held.view(torch.int16)[:, None, :] == train.view(torch.int16)[None, :, :]).all(-1).any(-1)
    assert not twins.any(), f"{int(twins.sum())} held-out chat tokens reappear in training"
    held_w = set(loaded[0]["window"].tolist())
    assert held_w == set(range(8)) and not held_w & set(torch.cat([t["window"] for t in loaded[1:]]).tolist())


def test_template_tokens_are_kept_and_labelled(tmp_path: Path, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    conv = [{"role": "user", "content": "Name a red fruit."}, {"role": "assistant", "content": "An apple."}]
    text = tok.apply_chat_template(conv, tokenize=False)
    ids, kinds = token_kinds(tok, text, conv)
    content = tok.decode([t for t, k in zip(ids, kinds, strict=True) if k == CHAT])
    template = tok.decode([t for t, k in zip(ids, kinds, strict=True) if k == TEMPLATE])
    assert content == "Name a red fruit.An apple."
    assert "<|im_start|>user" in template and "<|im_end|>" in template and "red" not in template
    corpus = _write_corpus(tmp_path / "corpus.jsonl.gz", seed=0)
    out = harvest(model, tok, _cfg(tmp_path, corpus, chat_fraction=0.25), "tiny", chat=CONVS, progress=False)
    store = ActivationStore(out)
    kind = torch.cat([_tensors(out, s)["kind"] for s in store.manifest["shards"]])
    counts = {k: int((kind == k).sum()) for k in (CORPUS, CHAT, TEMPLATE)}
    assert min(counts.values()) > 0, counts  # template tokens are no longer dropped
    assert sum(s["n_template"] for s in store.manifest["shards"]) == counts[TEMPLATE]
    dropped = harvest(model, tok, _cfg(tmp_path / "d", corpus, chat_fraction=0.25, drop_special=True), "tiny",
                      chat=CONVS, progress=False)  # fmt: skip
    kind_d = torch.cat([_tensors(dropped, s)["kind"] for s in ActivationStore(dropped).manifest["shards"]])
    assert not (kind_d == TEMPLATE).any() and (kind_d == CHAT).any()


def _harvest_worker(rank: int, world: int, rdv: str, model: Any, tok: Any, cfg: HarvestConfig) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        harvest(model, tok, cfg, "tiny", chat=CONVS, progress=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_harvest_writes_the_single_process_shards(tmp_path: Path, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    corpus = _write_corpus(tmp_path / "corpus.jsonl.gz", seed=0)
    one = ActivationStore(harvest(model, tok, _cfg(tmp_path / "one", corpus, chat_fraction=0.25), "tiny",
                                  chat=CONVS, progress=False))  # fmt: skip
    cfg = _cfg(tmp_path / "two", corpus, chat_fraction=0.25)
    mp.start_processes(_harvest_worker, args=(2, str(tmp_path / "rdv"), model, tok, cfg), nprocs=2, join=True,
                       start_method="fork")  # fmt: skip
    two = ActivationStore(cfg.out_dir)
    assert len(one.manifest["shards"]) >= 4
    assert [s["sha256"] for s in two.manifest["shards"]] == [s["sha256"] for s in one.manifest["shards"]]
    for key in ("windows_consumed", "n_tokens", "dropped_outliers", "identity", "complete"):
        assert two.manifest[key] == one.manifest[key], key
