import gzip
import importlib
import json
from pathlib import Path

import pytest
import torch

from saesteer.activations.harvest import HarvestConfig, harvest, select_tokens
from saesteer.activations.sources import iter_texts, mix, pack_tokens, shuffled_texts
from saesteer.activations.store import ActivationStore
from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter

harvest_mod = importlib.import_module("saesteer.activations.harvest")

WORDS = "the quick brown fox jumps over a lazy dog while rivers run to the sea and birds sing".split()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        for _ in range(120):
            n = int(torch.randint(20, 60, (1,), generator=g))
            text = " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g))
            fh.write(json.dumps({"source": "t", "text": text}) + "\n")
    return path


def _cfg(tmp: Path, corpus: Path, **kw) -> HarvestConfig:
    base = dict(
        out_dir=str(tmp / "acts"),
        hook="blocks.2.hook_resid_post",
        corpus=[str(corpus)],
        n_tokens=1200,
        held_out_tokens=256,
        context_len=32,
        batch_size=4,
        shard_tokens=300,
    )
    base.update(kw)
    return HarvestConfig(**base)


def test_pack_tokens_fixed_windows(qwen_tokenizer) -> None:
    wins = list(pack_tokens(qwen_tokenizer, ["hello world"] * 50, 16))
    assert wins and all(len(w) == 16 for w in wins)
    assert qwen_tokenizer.eos_token_id in sum(wins, [])


def test_mix_fraction() -> None:
    out = list(mix(iter([[0]] * 900), [[1]] * 5, 0.1, seed=0))
    share = sum(1 for w in out if w == [1]) / len(out)
    assert abs(share - 0.1) < 0.01


def test_select_tokens_drops_pad_special_and_outliers() -> None:
    acts = torch.ones(1, 5, 4)
    acts[0, 1] *= 100.0  # outlier norm
    ids = torch.tensor([[7, 8, 99, 10, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    kept, dropped, rows = select_tokens(acts, ids, mask, {99}, outlier_factor=8.0)
    assert kept.shape == (2, 4) and dropped == 1
    assert rows.tolist() == [0, 0]
    two = torch.cat([acts, torch.ones(1, 5, 4)])
    _, _, rows = select_tokens(two, ids.repeat(2, 1), mask.repeat(2, 1), {99}, outlier_factor=8.0)
    assert rows.tolist() == [0, 0, 1, 1, 1]  # row 1: same ids, no outlier


def test_harvest_matches_truncated_forward_and_resumes(tmp_path, corpus, tiny_qwen_chat, monkeypatch) -> None:
    model, tok = tiny_qwen_chat
    straight = harvest(model, tok, _cfg(tmp_path / "a", corpus), "tiny", progress=False)
    store = ActivationStore(straight)
    assert store.n_tokens >= 1200 and store.held_out().shape == (256, 64)  # 8 full corpus windows of 32
    assert store.manifest["hook_name"] == "blocks.2.hook_resid_post" and store.manifest["complete"]

    # kill during the third shard write, then rerun: the result is the same cache
    calls = {"n": 0}
    real = harvest_mod.write_shard

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(harvest_mod, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        harvest(model, tok, _cfg(tmp_path / "b", corpus), "tiny", progress=False)
    assert not list((tmp_path / "b" / "acts").glob("*.tmp"))
    monkeypatch.setattr(harvest_mod, "write_shard", real)
    resumed = ActivationStore(harvest(model, tok, _cfg(tmp_path / "b", corpus), "tiny", progress=False))
    assert [s["sha256"] for s in resumed.manifest["shards"]] == [s["sha256"] for s in store.manifest["shards"]]

    # the first held-out rows are the truncated-forward activations of the first window's kept tokens
    wins = list(pack_tokens(tok, shuffled_texts(iter_texts(corpus), 0), 32))
    assert len(wins) > 10
    a = ArchAdapter(model)
    x = a.run_to("blocks.2.hook_resid_post", torch.tensor([wins[0]]), torch.ones(1, 32, dtype=torch.long))
    first, _, _ = select_tokens(x, torch.tensor([wins[0]]), torch.ones(1, 32), set(), 8.0)
    torch.testing.assert_close(store.held_out()[: first.shape[0]].float(), first.float(), rtol=2e-2, atol=2e-2)


def test_harvest_refuses_other_model_cache(tmp_path, corpus, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    harvest(model, tok, _cfg(tmp_path, corpus, n_tokens=300), "tiny", progress=False)
    with pytest.raises(SaesteerError, match="already holds activations"):
        harvest(model, tok, _cfg(tmp_path, corpus, n_tokens=300), "other-model", progress=False)
    with pytest.raises(SaesteerError, match="layer 9 out of range"):
        harvest(model, tok, _cfg(tmp_path / "x", corpus, hook="blocks.9.hook_resid_post"), "tiny", progress=False)


def test_sources_run_out(tmp_path, corpus, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    with pytest.raises(SaesteerError, match="sources ran out"):
        harvest(model, tok, _cfg(tmp_path, corpus, n_tokens=10**7), "tiny", progress=False)


def test_harvest_labels_chat_tokens_and_trains_on_one_source(tmp_path, corpus, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    chat = [
        [{"role": "user", "content": f"question {i} about birds"}, {"role": "assistant", "content": "an answer " * 8}]
        for i in range(6)
    ]
    out = harvest(model, tok, _cfg(tmp_path, corpus, chat_fraction=0.25), "tiny", chat=chat, progress=False)
    every = ActivationStore(out)
    shards = every.manifest["shards"]
    n_chat = sum(s["n_chat"] for s in shards[1:])
    assert all("n_chat" in s for s in shards)
    # about a quarter of the windows are chat (chat windows are shorter: fewer tokens)
    assert 0.05 < n_chat / every.n_tokens < 0.35
    corpus_only = ActivationStore(out, source="corpus")
    chat_only = ActivationStore(out, source="chat")
    assert corpus_only.n_tokens + chat_only.n_tokens == every.n_tokens
    split = torch.cat([corpus_only.load_shard(s) for s in corpus_only.train_shards])
    assert split.shape[0] == corpus_only.n_tokens < every.n_tokens
    with pytest.raises(SaesteerError, match="unknown token source"):
        ActivationStore(out, source="web")
