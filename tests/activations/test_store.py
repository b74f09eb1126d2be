from pathlib import Path

import pytest
import torch

from saesteer.activations.store import ActivationStore, write_manifest, write_shard
from saesteer.errors import SaesteerError


def _make_store(path: Path, n_shards: int = 5, per: int = 100, d: int = 8) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shards = []
    for i in range(n_shards):
        acts = torch.arange(per * d, dtype=torch.float32).reshape(per, d) + 10_000 * i
        shards.append(write_shard(path, i, acts / 1000))
    write_manifest(path, {"model": "m", "hook_name": "blocks.1.hook_resid_post", "d_model": d, "shards": shards})
    return path


def test_batches_deterministic_and_resumable(tmp_path: Path) -> None:
    store = ActivationStore(_make_store(tmp_path / "s"))
    assert store.n_tokens == 400
    it = store.batches(64, seed=3, buffer_shards=2, epochs=2)
    all_batches = list(it)
    again = list(store.batches(64, seed=3, buffer_shards=2, epochs=2))
    assert all(torch.equal(a, b) for a, b in zip(all_batches, again, strict=True))
    for start in (1, 5, 7):
        resumed = list(store.batches(64, seed=3, buffer_shards=2, epochs=2, start_step=start))
        assert len(resumed) == len(all_batches) - start
        assert all(torch.equal(a, b) for a, b in zip(resumed, all_batches[start:], strict=True))
    # an epoch covers every training token once, never the held-out shard
    held = {tuple(r.tolist()) for r in store.held_out()}
    seen = torch.cat(list(store.batches(50, seed=1, epochs=1, buffer_shards=8)))
    assert seen.shape[0] == 400
    assert not held & {tuple(r.tolist()) for r in seen}


def test_corrupt_shard_and_mismatch(tmp_path: Path) -> None:
    path = _make_store(tmp_path / "s")
    store = ActivationStore(path)
    with pytest.raises(SaesteerError, match="not 'blocks.2"):
        store.check_matches(hook_name="blocks.2.hook_resid_post")
    with pytest.raises(SaesteerError, match="from model 'm'"):
        store.check_matches(model="other")
    data = bytearray((path / "shard_00002.safetensors").read_bytes())
    data[-3] ^= 1
    (path / "shard_00002.safetensors").write_bytes(bytes(data))
    with pytest.raises(SaesteerError, match="corrupt"):
        list(store.batches(64, shuffle=False, epochs=1))
    with pytest.raises(SaesteerError, match="not an activation cache"):
        ActivationStore(tmp_path / "nothing")


def test_source_filter_selects_labelled_tokens(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    shards = []
    for i in range(4):
        acts = torch.zeros(60, 4)
        acts[:, 0] = torch.arange(60)  # the row index (exact in bf16)
        acts[:, 1] = i
        is_chat = torch.arange(60) % 3 == 0  # every third token is a chat token
        shards.append(write_shard(path, i, acts, is_chat))
    write_manifest(path, {"model": "m", "hook_name": "blocks.1.hook_resid_post", "d_model": 4, "shards": shards})
    every, corpus, chat = (ActivationStore(path, source=s) for s in ("all", "corpus", "chat"))
    assert (every.n_tokens, corpus.n_tokens, chat.n_tokens) == (180, 120, 60)
    first = every.load_shard(every.train_shards[0])
    assert torch.equal(chat.load_shard(chat.train_shards[0]), first[::3])
    assert corpus.held_out().shape[0] == 60  # the held-out split is never filtered
    seen = torch.cat(list(corpus.batches(40, seed=2, epochs=1)))
    assert seen.shape[0] == 120 and not (seen[:, 0] % 3 == 0).any()  # no chat row
    resumed = list(corpus.batches(40, seed=2, epochs=1, start_step=1))
    assert torch.equal(torch.cat(resumed), seen[40:])
    unlabelled = _make_store(tmp_path / "old")
    with pytest.raises(SaesteerError, match="no chat/corpus token labels"):
        ActivationStore(unlabelled, source="corpus")
