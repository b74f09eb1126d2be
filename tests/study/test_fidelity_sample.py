"""The web-text fidelity sample is the harvest's held-out corpus windows: never trained on, same stream."""

import itertools
from pathlib import Path

import pytest
import torch

from saesteer.activations.harvest import harvest, right_pad, window_stream
from saesteer.activations.store import ActivationStore
from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter
from saesteer.study.sae_stages import held_out_corpus_windows
from tests.activations.test_harvest import _cfg, corpus  # noqa: F401  (fixture)


def _rows(acts: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in acts.to(torch.bfloat16).view(torch.int16)}


def test_web_sample_is_held_out_corpus(tmp_path: Path, corpus: Path, tiny_qwen_chat) -> None:  # noqa: F811
    model, tok = tiny_qwen_chat
    chat = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "an answer " * 6}]
            for i in range(6)]  # fmt: skip
    cfg = _cfg(tmp_path, corpus, chat_fraction=0.25, outlier_factor=0.0)
    store = ActivationStore(harvest(model, tok, cfg, "tiny", chat=chat, progress=False))
    ids, mask = held_out_corpus_windows(str(store.path), tok, 4)
    assert ids.shape == (4, cfg.context_len) and bool(mask.all())
    adapter = ArchAdapter(model)

    def rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[set[bytes], set[bytes]]:
        """Rows of every position, and of positions past the first (which depends on its token alone)."""
        with torch.no_grad():
            acts = adapter.run_to(adapter.check(cfg.hook), ids, mask)
        return _rows(acts.flatten(0, 1)), _rows(acts[:, 1:].flatten(0, 1))

    held, train = _rows(store.held_out()), set().union(*(_rows(store.load_shard(s)) for s in store.train_shards))
    every, late = rows(ids, mask)
    # an independent check: the model's activations on the sample are rows of the held-out shard, and (up to
    # the odd bf16 collision of a tiny random model) of no training shard ...
    assert every <= held
    assert len(late & train) <= 0.05 * len(late)
    # ... while the stream's first training windows are
    stream = window_stream(cfg, tok, chat)
    first_train = [w for w, k in itertools.islice(stream, cfg.held_out_windows(), None) if 2 not in k][:4]
    _, late = rows(*right_pad(first_train, tok.pad_token_id))
    assert len(late & train) >= 0.95 * len(late)
    with pytest.raises(SaesteerError, match="not a harvested activation cache"):
        held_out_corpus_windows(str(tmp_path), tok, 4)


def test_spliced_by_window_equals_batched_and_brackets_it(tiny_qwen_chat) -> None:
    from saesteer.model.loading import LoadedModel
    from saesteer.sae.metrics import spliced_over
    from saesteer.study.sae_stages import spliced_by_window
    from tests.sae.conftest import random_sae

    model, tok = tiny_qwen_chat
    sae = random_sae("topk", d_in=model.config.hidden_size, d_sae=128, k=8, hook="blocks.1.hook_resid_post")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 5000, (6, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0  # windows of unequal length weigh by their predictions
    lm = LoadedModel(model, tok, "tiny", "tiny")
    one = spliced_by_window(lm, sae, ids, mask, 0.0)
    batched = spliced_over(model, sae, ids, mask, 3, 0.0)
    assert one["n_windows"] == 6 and one["n_predictions"] == batched["n_predictions"]
    for key in ("ce_increase", "kl_spliced"):
        assert one[key] == pytest.approx(batched[key], rel=1e-4, abs=1e-6)
        lo, hi = one[f"{key}_ci"]
        assert lo <= one[key] <= hi and lo < hi
