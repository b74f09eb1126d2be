"""Context store, statistics, top contexts, profanity masking, histogram, logit lens and renderings."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.features.contexts import ContextStore, build_store, corpus_rows, merge_stores, sae_fingerprint
from saesteer.features.interpret import ContextView, describe_feature, histogram, logit_lens, mask_pieces
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE

TEXTS = [
    "The cat sat on the mat. It was a sunny day and the birds were singing.",
    "Philosophy asks what we can know, and how we ought to live together.",
    "def add(a, b):\n    return a + b\n# <b>not html</b>",
]


def _store(chat: tuple[Any, Any], sae: SAE) -> tuple[ContextStore, list[list[int]]]:
    model, tok = chat
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    return build_store(model, sae, rows, ["corpus", "corpus", "topic"], batch_size=2), rows


def test_store_codes_match_dense_encoding(chat: tuple[Any, Any], sae: SAE) -> None:
    model, _ = chat
    store, rows = _store(chat, sae)
    assert store.n_rows == 3 and store.n_tokens == sum(len(r) for r in rows)
    x = ArchAdapter(model).run_to(sae.cfg.hook_name, torch.tensor([rows[1]]))
    dense = sae.encode(x[0]).detach()
    lo, hi = int(store.offsets[1]), int(store.offsets[2])
    for f in range(0, sae.d_sae, 7):
        assert torch.allclose(store.feature_acts(f)[lo:hi], dense[:, f], atol=1e-5)
    st = store.stats()
    assert st.n_tokens == store.n_tokens - 3  # the first token of each row is left out
    f = int(torch.argmax(st.freq))
    acts = store.feature_acts(f)[store.stat_mask]
    assert float(st.freq[f]) == pytest.approx(float((acts > 0).float().mean()))
    assert float(st.max_act[f]) == pytest.approx(float(acts.max()))
    assert float(st.mean_act[f]) == pytest.approx(float(acts[acts > 0].mean()), rel=1e-5)
    topic = store.stats(["topic"])
    assert topic.n_tokens == len(rows[2]) - 1
    with pytest.raises(SaesteerError, match="out of range"):
        store.feature_acts(sae.d_sae)


def test_top_contexts_one_per_row_strongest_first(chat: tuple[Any, Any], sae: SAE) -> None:
    store, _ = _store(chat, sae)
    f = int(torch.argmax(store.stats().freq))
    ctxs = store.top_contexts(f, n=5, left=4, right=2)
    assert len({c.row for c in ctxs}) == len(ctxs) and ctxs
    assert [c.peak for c in ctxs] == sorted((c.peak for c in ctxs), reverse=True)
    for c in ctxs:
        assert c.acts[c.position] == pytest.approx(c.peak, abs=1e-3) and len(c.tokens) <= 7


def test_store_roundtrip_and_merge(chat: tuple[Any, Any], sae: SAE, tmp_path: Path) -> None:
    store, _ = _store(chat, sae)
    store.save(tmp_path / "c.safetensors")
    back = ContextStore.load(tmp_path / "c.safetensors")
    assert back.sources == store.sources and back.fingerprint == sae_fingerprint(sae)
    assert torch.allclose(back.feature_acts(3), store.feature_acts(3), atol=1e-2)  # fp16 values on disk
    both = merge_stores([store, back])
    assert both.n_rows == 6 and both.n_tokens == 2 * store.n_tokens
    with pytest.raises(SaesteerError, match="not found"):
        ContextStore.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(SaesteerError, match="unreadable"):
        ContextStore.load(tmp_path / "bad.safetensors")


def test_corpus_rows_are_full_windows(qwen_tokenizer: Any) -> None:
    rows = corpus_rows(qwen_tokenizer, TEXTS * 3, context_len=16, n_windows=4)
    assert len(rows) == 4 and all(len(r) == 16 for r in rows)


def test_masking_covers_words_split_across_tokens() -> None:
    bad = codecs.decode("shpxvat", "rot13")
    pieces = [" what", " the", f" {bad[:2]}", bad[2:], " class", " assessment", " Dickens"]
    out, flags = mask_pieces(pieces)
    assert flags == [False, False, True, True, False, False, False]
    assert out[2] == " **" and set(out[3]) == {"*"}
    assert "".join(out).count(bad) == 0


def test_histogram_counts_active_tokens() -> None:
    h = histogram(torch.tensor([0.0, 0.5, 1.0, 0.0, 2.0, 2.0]), bins=4)
    assert sum(h.counts) == 4 and h.edges[-1] == 2.0 and len(h.edges) == 5
    assert histogram(torch.zeros(3)).counts == []


def test_logit_lens_finds_the_planted_token(chat: tuple[Any, Any], sae: SAE) -> None:
    model, tok = chat
    adapter = ArchAdapter(model)
    target = tok("Sorry", add_special_tokens=False)["input_ids"][0]
    w_u = model.get_output_embeddings().weight.detach()
    with torch.no_grad():
        sae.W_dec[4] = w_u[target] / model.model.norm.weight
    lens = logit_lens(adapter, tok, sae, 4, k=3)
    assert lens["promoted"][0]["id"] == target and lens["promoted"][0]["token"] == "Sorry"
    assert lens["suppressed"][0]["logit"] < lens["promoted"][-1]["logit"]
    with pytest.raises(SaesteerError, match="out of range"):
        logit_lens(adapter, tok, sae, -1)


def test_feature_card_renderings(chat: tuple[Any, Any], sae: SAE) -> None:
    model, tok = chat
    store, _ = _store(chat, sae)
    f = int(torch.argmax(store.stats().freq))
    card = describe_feature(model, tok, sae, store, f, n_contexts=3, title="test")
    assert card.freq > 0 and card.log10_freq is not None and card.contexts
    text, md, page = card.to_text(), card.to_markdown(), card.to_html()
    assert f"feature {f}" in text and "logit lens" in text and "[[" in text
    assert md.startswith(f"### Feature {f}") and "| # | source |" in md
    card.contexts = [ContextView("corpus", 2.0, ["<b>", "not html", "</b>"], [0.0, 2.0, 0.0], 0)]
    page = card.to_html()
    assert "<b>not html</b>" not in page and "&lt;b&gt;" in page  # escaped
    assert "**not html**<sub>2.0</sub>" in card.to_markdown()
    assert card.to_dict()["feature"] == f
    with pytest.raises(SaesteerError, match="out of range"):
        describe_feature(model, tok, sae, store, sae.d_sae)


def test_identical_windows_are_shown_once(chat: tuple[Any, Any], sae: SAE) -> None:
    model, tok = chat
    row = tok(TEXTS[0], add_special_tokens=False)["input_ids"]
    store = build_store(model, sae, [row, row, row[:-2]], ["a", "b", "c"])
    f = int(torch.argmax(store.stats().freq))
    windows = [tuple(c.tokens) for c in store.top_contexts(f, n=5, left=3, right=1)]
    assert len(windows) == len(set(windows)) and 1 <= len(windows) <= 2
