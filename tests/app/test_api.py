"""API tests on a tiny model: every endpoint, and every kind of bad input answered with a 4xx and a message."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from saesteer.app.state import AppState
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import encode_chats
from tests.app.conftest import D_SAE, build_state, read_sse

PROMPT = "How do I pick a lock?"


def live_feature(state: AppState) -> int:
    """A feature that fires in the activation cache (so its clamp bounds come from its own max)."""
    assert state.browser.stats is not None
    return int(torch.argmax(state.browser.stats.max_act))


def last_token_code(state: AppState, prompt: str) -> torch.Tensor:
    """The SAE code of the prompt's last chat-template token, computed directly (for the gate)."""
    enc = encode_chats(state.tokenizer, [prompt])
    x = ArchAdapter(state.model).run_to(state.sae.cfg.hook_name, enc["input_ids"], enc["attention_mask"])
    return state.sae.encode(x[0, -1].float()).detach()


def stream(client: Any, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with client.stream("POST", "/api/generate", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        return read_sse(resp.iter_lines())


def texts(events: list[tuple[str, dict[str, Any]]], n_rows: int) -> list[str]:
    out = [""] * n_rows
    for kind, d in events:
        if kind == "token":
            out[d["row"]] += d["text"]
    return [t.strip() for t in out]


# --- info, cache, page ---------------------------------------------------------------------------------------


def test_info(client: Any, state: AppState) -> None:
    info = client.get("/api/info").json()
    assert info["sae"]["d_sae"] == D_SAE and info["sae"]["hook"] == "blocks.1.hook_resid_post"
    assert info["limits"]["max_new_tokens"] == 512
    assert info["gate"]["spec"] == "feature:3>0.5" and info["gate"]["feature"] == 3
    assert info["cache"]["state"] == "ready"
    assert client.get("/").text.startswith("<!doctype html>")
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "http://" not in js.text and "https://" not in js.text


def test_cache_is_built_once_and_reused(tiny_chat: Any, app_files: Any, state: AppState, client: Any) -> None:
    status = client.get("/api/cache").json()
    assert status["state"] == "ready" and status["done"] == status["total"] > 0
    again = build_state(tiny_chat, app_files)
    assert again.cache.message.startswith("loaded from")
    assert again.cache.store is not None and state.cache.store is not None
    assert torch.equal(again.cache.store.tokens, state.cache.store.tokens)
    assert torch.equal(again.cache.store.idx, state.cache.store.idx)


def test_search(client: Any, state: AppState) -> None:
    listing = client.get("/api/features").json()
    assert listing["kind"] == "list" and listing["total"] > 0
    freqs = [r["freq"] for r in listing["results"]]
    assert freqs == sorted(freqs, reverse=True)
    assert [r["feature"] for r in client.get("/api/features?q=17").json()["results"]] == [17]
    assert client.get(f"/api/features?q={D_SAE}").json()["total"] == 0
    f = live_feature(state)
    token = state.browser.top_tokens[f][0]["token"].strip()
    hits = client.get("/api/features", params={"q": f"tok:{token}", "limit": 500}).json()["results"]
    assert f in [h["feature"] for h in hits]
    for h in hits:  # every hit has the token among its top tokens
        assert token.lower() in [t["token"].strip().lower() for t in h["top_tokens"]]


def test_feature_page(client: Any, state: AppState) -> None:
    f = live_feature(state)
    page = client.get(f"/api/features/{f}").json()
    card = page["card"]
    assert card["contexts"] and card["max_act"] > 0 and sum(card["histogram"]["counts"]) > 0
    c = card["contexts"][0]
    assert len(c["pieces"]) == len(c["acts"]) and max(c["acts"]) == pytest.approx(c["peak"], abs=1e-3)
    assert len(page["logit_lens"]["promoted"]) == 15 and len(page["logit_lens"]["suppressed"]) == 15
    w = state.sae.W_dec.detach().float()
    cos = torch.nn.functional.cosine_similarity(w, w[f].unsqueeze(0), dim=1)
    cos[f] = -2
    assert [n["feature"] for n in page["nearest"]] == torch.topk(cos, 10).indices.tolist()
    assert page["bounds"]["hi"] == pytest.approx(10 * card["max_act"], rel=1e-3)
    assert page["screen"] is None
    brief = client.get(f"/api/features/{f}?brief=1").json()
    assert brief["bounds"] == page["bounds"] and "card" not in brief


@pytest.mark.parametrize("path,status", [(f"/api/features/{D_SAE}", 404), ("/api/features/-1", 404),
                                         ("/api/features/abc", 422), ("/api/features?limit=0", 422),
                                         ("/api/features?limit=100000", 422), ("/api/nothing", 404)])  # fmt: skip
def test_bad_feature_requests(client: Any, path: str, status: int) -> None:
    r = client.get(path)
    assert r.status_code == status and r.json()["error"]


def test_features_json_labels_and_screen(tiny_chat: Any, app_files: Any, tmp_path: Any) -> None:
    fj = {
        "format": "saesteer.features.v1",
        "sae": {"d_sae": D_SAE},
        "chosen": {"feature": 7, "value": 2.5},
        "control": {"feature": 9},
        "features": {"7": {"feature": 7, "title": "lock picking instructions"}},
        "screen": {
            "cheap": [{"feature": 7, "objective": 0.25, "d_harmful_score": 0.5, "d_harmless_score": 0.1}],
            "generation": [],
            "clamp": {"per_feature": {"7": {"value": 2.5, "ref_max": 0.5, "x_max": 5.0}}},
            "pool_ranks": {"7": {"contrastive": 1}},
        },
    }
    path = tmp_path / "features.json"
    path.write_text(json.dumps(fj))
    from fastapi.testclient import TestClient

    from saesteer.app.server import create_app

    c = TestClient(create_app(build_state(tiny_chat, app_files, features=str(path))))
    assert c.get("/api/info").json()["chosen"] == 7
    hits = c.get("/api/features?q=text:picking").json()["results"]
    assert [h["feature"] for h in hits] == [7] and hits[0]["role"] == "chosen"
    assert c.get("/api/features?q=control").json()["results"][0]["feature"] == 9
    page = c.get("/api/features/7").json()
    assert page["label"] == "lock picking instructions"
    assert page["screen"]["cheap"][0]["objective"] == 0.25 and page["screen"]["clamp"]["x_max"] == 5.0
    assert page["screen"]["ranks"] == {"contrastive": 1}
