"""``saesteer.features.show``: where the contexts come from, and the card over freshly encoded corpus windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.features.contexts import build_store, corpus_rows
from saesteer.features.show import FeatureShowConfig, check_feature, run_contexts, show_feature, show_texts
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE
from tests.features.conftest import make_sae

TEXTS = [
    f"Note {i}: the library opens at nine, the bakery at {i % 5 + 6}, and the cat sleeps all day." for i in range(30)
]


def test_where_the_texts_come_from(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(TEXTS))
    assert show_texts(FeatureShowConfig(corpus=str(corpus), n_windows=2)) == TEXTS[:8]  # the first 4 n texts
    with pytest.raises(SaesteerError, match="no contexts to show: pass --run DIR"):
        show_texts(FeatureShowConfig(data_dir="none"))
    (tmp_path / "blank.txt").write_text("\n\n\n")
    with pytest.raises(SaesteerError, match="no token windows"):
        show_texts(FeatureShowConfig(corpus=str(tmp_path / "blank.txt")))


def test_card_over_corpus_windows_peaks_where_the_sae_does(chat: tuple[Any, Any], sae: SAE) -> None:
    """The card's statistics and strongest context match the feature's activation recomputed here from the
    hook activations of the same windows (statistics leave each window's first token out; contexts do not)."""
    model, tok = chat
    cfg = FeatureShowConfig(n_windows=3, context_len=16, n_contexts=2, lens_k=3)
    rows = corpus_rows(tok, TEXTS, cfg.context_len, cfg.n_windows)
    x = ArchAdapter(model).run_to(sae.cfg.hook_name, torch.tensor(rows))
    dense = sae.encode(x).detach()  # (windows, positions, d_sae)
    feature = int(dense[:, 1:].amax((0, 1)).argmax())  # the feature with the largest activation: surely active
    card = show_feature(model, tok, sae, check_feature(sae, feature), cfg, texts=TEXTS)
    assert card.feature == feature and card.n_tokens == 3 * 15 and 0 < len(card.contexts) <= 2
    acts = dense[..., feature]
    assert card.max_act == pytest.approx(float(acts[:, 1:].max()), rel=1e-5)
    assert card.freq == pytest.approx(float((acts[:, 1:] > 0).float().mean()))
    assert card.contexts[0].peak == pytest.approx(float(acts.max()), rel=1e-3)
    with pytest.raises(SaesteerError, match="no token windows"):
        show_feature(model, tok, sae, feature, cfg, texts=[])


def test_feature_range_and_a_run_built_with_another_sae(chat: tuple[Any, Any], sae: SAE, tmp_path: Path) -> None:
    model, tok = chat
    with pytest.raises(SaesteerError, match="no feature given"):
        check_feature(sae, None)
    with pytest.raises(SaesteerError, match=f"feature {sae.d_sae} out of range"):
        check_feature(sae, sae.d_sae)
    store = build_store(model, sae, [tok(TEXTS[0])["input_ids"]], ["corpus"])
    store.save(tmp_path / "contexts.safetensors")
    assert run_contexts(tmp_path, sae).n_tokens == store.n_tokens
    with pytest.raises(SaesteerError, match="was built with another SAE"):
        run_contexts(tmp_path, make_sae(seed=5))
