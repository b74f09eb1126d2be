"""SAE evaluation: one definition of dead latents, and fidelity on web text and on chat, apart."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from saesteer.activations.harvest import HarvestConfig, harvest
from saesteer.activations.store import ActivationStore
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.metrics import (
    SaeEvalConfig,
    activation_metrics,
    combine_spliced,
    conversation_windows,
    corpus_windows,
    evaluate_sae,
    spliced_metrics,
)
from saesteer.sae.trainer import TopKTrainer
from tests.sae.conftest import SparseSource, random_sae


def test_dead_means_the_same_in_training_and_evaluation() -> None:
    """With the weights frozen (lr 0), training's dead set over S steps equals evaluation's over the same tokens."""
    src = SparseSource(d=32, batch=64)
    window = 5 * 64
    trainer = TopKTrainer(
        32, 256, 4, lr=0.0, warmup_steps=0, decay_frac=0.0, total_steps=5, auxk_alpha=0.0, k_aux=None,
        dead_tokens=10**9, compute_dtype=torch.float32, device=torch.device("cpu"), seed=0, dead_window=window,
    )  # fmt: skip
    stream = src.batches()
    seen = [next(stream) for _ in range(5)]
    trainer.init_from_data(seen[0], "mean")
    for b in seen:
        stats = trainer.train_step(b)
    sae = trainer.to_sae("blocks.1.hook_resid_post")
    ev = activation_metrics(sae, [torch.cat(seen), src.held_out(4096)], dead_window=window)
    assert ev["dead_window_tokens"] == window and ev["n_tokens"] == window + 4096
    assert 0.05 < stats.dead_frac < 0.95  # some latents fire, some don't: the comparison means something
    assert stats.dead_frac == pytest.approx(ev["dead_frac"], abs=1e-9)
    # independent count: latents in no token's top-k over the window
    vals, idx = sae.topk(torch.cat(seen))
    fired = torch.zeros(256, dtype=torch.bool)
    fired[idx[vals > 0]] = True
    assert ev["dead_frac"] == pytest.approx(1 - fired.float().mean().item())
    longer = activation_metrics(sae, [torch.cat(seen), src.held_out(4096)])
    assert longer["dead_frac"] <= ev["dead_frac"] and longer["dead_window_tokens"] == window + 4096


def _corpus(path: Path) -> Path:
    words = "the cat sat on a mat while rain fell over hills and rivers".split()
    g = torch.Generator().manual_seed(0)
    with gzip.open(path, "wt") as fh:
        for _ in range(60):
            text = " ".join(words[int(i)] for i in torch.randint(0, len(words), (40,), generator=g))
            fh.write(json.dumps({"text": text}) + "\n")
    return path


CHATS = [
    [{"role": "user", "content": f"Tell me about topic {i}."}, {"role": "assistant", "content": f"Topic {i} is fun."}]
    for i in range(6)
]


def test_evaluate_sae_reports_web_chat_and_kinds_apart(tmp_path: Path, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    corpus = _corpus(tmp_path / "c.jsonl.gz")
    hcfg = HarvestConfig(out_dir=str(tmp_path / "acts"), hook="blocks.1.hook_resid_post", corpus=[str(corpus)],
                         n_tokens=400, held_out_tokens=256, context_len=32, batch_size=4, chat_fraction=0.3)  # fmt: skip
    store = ActivationStore(harvest(model, tok, hcfg, "tiny", chat=CHATS, progress=False))
    sae = random_sae("topk", d_in=64, d_sae=128, k=8, hook="blocks.1.hook_resid_post")
    cfg = SaeEvalConfig(n_texts=6, n_chats=4, context_len=32, batch_size=4, outlier_factor=0.0, dead_window=128)
    res = evaluate_sae(model, tok, sae, cfg, store=store, corpus=str(corpus), conversations=CHATS)
    assert set(res) == {"activations", "web", "chat", "dead_window_tokens"} and res["dead_window_tokens"] == 128
    assert {"all", "corpus", "chat", "template"} <= set(res["activations"])
    per_kind = res["activations"]
    assert sum(per_kind[k]["n_tokens"] for k in ("corpus", "chat", "template")) == per_kind["all"]["n_tokens"]
    # independent recomputation of each side's spliced numbers
    adapter = ArchAdapter(model)
    for side, (ids, mask) in (
        ("web", corpus_windows(str(corpus), tok, 6, 32)),
        ("chat", conversation_windows(CHATS[:4], tok, 32)),
    ):
        parts = [spliced_metrics(model, adapter, sae, ids[i : i + 4], mask[i : i + 4]) for i in range(0, len(ids), 4)]
        want = combine_spliced(parts)
        assert res[side]["ce_increase"] == pytest.approx(want["ce_increase"], rel=1e-5)
        assert res[side]["n_predictions"] == want["n_predictions"]
    chat_ids, _ = conversation_windows(CHATS[:1], tok, 32)
    assert tok.convert_tokens_to_ids("<|im_start|>") in chat_ids[0].tolist()  # scored with the template
    assert res["web"]["ce_increase"] != res["chat"]["ce_increase"]
