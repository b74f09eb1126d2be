"""The playground's generation endpoint: outputs against independent runs, the gate, the command, bad input, 503."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
import torch

from saesteer.app.state import AppState
from saesteer.model.generation import GenerationConfig, generate_batch
from saesteer.steering.engine import Steering
from saesteer.steering.interventions import ClampFeature
from tests.app.conftest import D_SAE, read_sse
from tests.app.test_api import PROMPT, last_token_code, live_feature, stream, texts


def reference(state: AppState, clamp: tuple[int, float] | None, n: int, rows: int) -> str:
    """Row 0 of a plain batched generate of the same prompt (steered with the library when ``clamp``)."""
    cfg = GenerationConfig(max_new_tokens=n)
    if clamp is None:
        return generate_batch(state.model, state.tokenizer, [PROMPT] * rows, cfg)[0]
    steering = Steering(state.model, state.sae, [ClampFeature(*clamp)])
    with steering.apply():
        return generate_batch(state.model, state.tokenizer, [PROMPT] * rows, cfg)[0]


@pytest.mark.parametrize("fires", [True, False])
def test_three_outputs_match_independent_runs(client: Any, state: AppState, fires: bool) -> None:
    f = live_feature(state)
    value = state.browser.value_bounds(f)["hi"]
    code = last_token_code(state, PROMPT)
    g = int(torch.argmax(code))
    score = float(code[g])
    assert score > 0
    thr = score / 2 if fires else score * 2
    body = {
        "prompt": PROMPT,
        "features": [{"feature": f, "value": value}],
        "gate": {"enabled": True, "feature": g, "threshold": thr},
        "max_new_tokens": 10,
    }
    events = stream(client, body)
    kinds = [k for k, _ in events]
    assert kinds[0] == "meta" and kinds[-1] == "end" and "error" not in kinds
    gate = next(d for k, d in events if k == "gate")
    assert gate["score"] == pytest.approx(score, rel=1e-4, abs=1e-5)
    assert gate["threshold"] == pytest.approx(thr) and gate["fires"] is fires
    base, steered, cond = texts(events, 3)
    assert base == reference(state, None, 10, 3)
    assert steered == reference(state, (f, value), 10, 3)
    assert steered != base  # a clamp at 10x the feature's max changes the greedy completion
    assert cond == (steered if fires else base)
    meta = events[0][1]
    assert meta["rows"] == ["baseline", "steered", "conditional"]
    assert f"--clamp {f}={value:g}" in meta["command"] and f"'feature:{g}>{thr:g}'" in meta["command"]
    end = events[-1][1]
    assert end["tokens"] == [10, 10, 10] and end["first_token_s"] > 0 and end["tokens_per_s"] > 0


def test_gate_off_gives_two_outputs_and_default_gate(client: Any, state: AppState) -> None:
    f = live_feature(state)
    events = stream(client, {"prompt": PROMPT, "features": [{"feature": f, "value": 0.0}], "max_new_tokens": 3})
    assert events[0][1]["rows"] == ["baseline", "steered"] and not [d for k, d in events if k == "gate"]
    events = stream(client, {"prompt": PROMPT, "features": [{"feature": f, "value": 0.0}], "max_new_tokens": 3,
                             "gate": {"enabled": True}})  # fmt: skip
    gate = next(d for k, d in events if k == "gate")
    assert gate["spec"] == "feature:3>0.5" and gate["score"] == pytest.approx(float(last_token_code(state, PROMPT)[3]))


def test_multi_turn_chat_and_command(client: Any, state: AppState) -> None:
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": PROMPT},
    ]
    body = {"messages": chat, "features": [{"feature": 4, "value": 0.5}, {"feature": 9, "value": -0.5}],
            "max_new_tokens": 4, "do_sample": True, "temperature": 0.7, "seed": 3}  # fmt: skip
    cmd = client.post("/api/command", json=body).json()["command"]
    assert cmd.startswith("printf") and "--prompts-file chat.jsonl" in cmd
    assert "--clamp 4=0.5 --clamp 9=-0.5" in cmd and "--do-sample --temperature 0.7" in cmd and "--seed 3" in cmd
    events = stream(client, body)
    assert events[-1][0] == "end" and sum(events[-1][1]["tokens"]) > 0


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("no prompt", {"features": [{"feature": 1, "value": 1}]}, 422, "exactly one of 'prompt'"),
    ("prompt and messages", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 422, "exactly one"),
    ("empty prompt", {"prompt": "  "}, 422, "empty"),
    (
        "ends with assistant",
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        422,
        "end with a user message",
    ),  # fmt: skip
    ("bad role", {"messages": [{"role": "robot", "content": "a"}]}, 422, "messages.0.role"),
    ("too many messages", {"messages": [{"role": "user", "content": "a"}] * 65}, 422, "messages"),
    ("no features", {"features": []}, 422, "features"),
    ("too many features", {"features": [{"feature": i, "value": 0} for i in range(17)]}, 422, "features"),
    ("feature not int", {"features": [{"feature": "x", "value": 1}]}, 422, "features.0.feature"),
    ("feature negative", {"features": [{"feature": -1, "value": 1}]}, 400, "out of range"),
    ("feature too large", {"features": [{"feature": D_SAE, "value": 1}]}, 400, "out of range"),
    ("duplicate feature", {"features": [{"feature": 2, "value": 0}, {"feature": 2, "value": 0}]}, 400, "twice"),
    ("value out of range", {"features": [{"feature": 2, "value": 1e6}]}, 400, "outside"),
    ("max_new_tokens 0", {"max_new_tokens": 0}, 422, "max_new_tokens"),
    ("max_new_tokens 513", {"max_new_tokens": 513}, 422, "max_new_tokens"),
    ("temperature 0", {"temperature": 0}, 422, "temperature"),
    ("top_p 2", {"top_p": 2}, 422, "top_p"),
    ("negative seed", {"seed": -1}, 422, "seed"),
    ("unknown field", {"bogus": 1}, 422, "bogus"),
    ("prompt too long", {"prompt": "x" * 601}, 400, "601 characters"),
    ("prompt too many tokens", {"prompt": "lock " * 110}, 400, "tokens after the chat template"),
    ("gate feature out of range", {"gate": {"enabled": True, "feature": D_SAE, "threshold": 1}}, 400, "gate"),
    ("gate feature without threshold", {"gate": {"enabled": True, "feature": 2}}, 400, "threshold"),
    ("gate threshold not a number", {"gate": {"enabled": True, "feature": 2, "threshold": "x"}}, 422, "threshold"),
]


@pytest.mark.parametrize("name,patch,status,words", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("path", ["/api/generate", "/api/command"])
def test_bad_input(client: Any, path: str, name: str, patch: dict[str, Any], status: int, words: str) -> None:
    body: dict[str, Any] = {"prompt": PROMPT, "features": [{"feature": 2, "value": 0.1}], "max_new_tokens": 4}
    body.update(patch)
    if "messages" in patch and "prompt" not in patch:
        body.pop("prompt")
    if name == "no prompt":
        body.pop("prompt")
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


@pytest.mark.parametrize("raw", ['{"prompt": "a", "features": [{"feature": 1, "value": NaN}]}',
                                 '{"prompt": "a", "features": [{"feature": 1, "value": Infinity}]}',
                                 '{"prompt": "a", "features": [{"feature": 1, "value": -Infinity}]}',
                                 '{"prompt": "a", "features": [{"feature": 1, "value": 1}], "gate": '
                                 '{"enabled": true, "feature": 1, "threshold": NaN}}',
                                 "not json", '["a list"]', ""])  # fmt: skip
def test_non_finite_and_malformed_bodies(client: Any, raw: str) -> None:
    r = client.post("/api/generate", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]


def test_gate_without_configured_gate(tiny_chat: Any, app_files: Any) -> None:
    from fastapi.testclient import TestClient

    from saesteer.app.server import create_app
    from tests.app.conftest import build_state

    c = TestClient(create_app(build_state(tiny_chat, app_files)))
    r = c.post(
        "/api/generate", json={"prompt": "a", "features": [{"feature": 1, "value": 0}], "gate": {"enabled": True}}
    )
    assert r.status_code == 400 and "no gate configured" in r.json()["error"]


def test_full_queue_answers_503(live_server: str, state: AppState) -> None:
    """With the model busy, requests wait up to the queue's limit; the next one gets 503; all then finish."""
    body = {"prompt": PROMPT, "features": [{"feature": 2, "value": 0.1}], "max_new_tokens": 3}
    results: list[list[Any]] = []

    def call() -> None:
        with httpx.Client(timeout=60) as c, c.stream("POST", live_server + "/api/generate", json=body) as r:
            results.append([r.status_code, read_sse(r.iter_lines())])

    state.model_lock.acquire()  # the model is busy: requests queue up
    try:
        threads = [threading.Thread(target=call) for _ in range(state.queue.limit)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while state.queue.active < state.queue.limit and time.time() < deadline:
            time.sleep(0.02)
        r = httpx.post(live_server + "/api/generate", json=body, timeout=30)
        assert r.status_code == 503 and "queue is full" in r.json()["error"] and r.headers["retry-after"] == "5"
    finally:
        state.model_lock.release()
    for t in threads:
        t.join(60)
    assert len(results) == state.queue.limit
    assert all(code == 200 and ev[-1][0] == "end" for code, ev in results)
    assert state.queue.active == 0


def test_closed_connection_cancels_generation(live_server: str, state: AppState) -> None:
    body = {"prompt": PROMPT, "features": [{"feature": 2, "value": 0.1}], "max_new_tokens": 512}
    before = last_serial(live_server)
    with httpx.Client(timeout=60) as c, c.stream("POST", live_server + "/api/generate", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("event: token"):
                break  # leave after the first token: closing the connection must stop the generation
    deadline = time.time() + 30
    while (last_serial(live_server) == before or state.queue.active) and time.time() < deadline:
        time.sleep(0.05)
    last = client_recent(live_server)[-1]
    assert last["cancelled"] is True and max(last["tokens"]) < 512
    assert state.queue.active == 0 and not state.model_lock.locked()


def client_recent(base: str) -> list[dict[str, Any]]:
    return httpx.get(base + "/api/info", timeout=30).json()["recent"]


def last_serial(base: str) -> int:
    recent = client_recent(base)
    return recent[-1]["n"] if recent else 0
