"""Fixtures for the app: a tiny random Qwen2 chat model with the real tokenizer, a tiny Top-k SAE on disk,
a small corpus, and the app state over them (its activation cache built once per test session)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.app.config import AppConfig
from saesteer.app.state import AppState
from saesteer.sae.base import SAE, SAEConfig
from saesteer.sae.io import save_sae

D_SAE = 96
CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.",
    "Python is a programming language that lets you work quickly and integrate systems more effectively.",
    "A lock has pins that a key lifts to the shear line, so the plug can turn and the door opens.",
    "Rivers carry water from mountains to the sea, shaping valleys and feeding forests along the way.",
]


def make_model(vocab: int, seed: int = 0) -> Any:
    """A tiny random fp32 Qwen2 (d_model 32, 3 layers) with ``vocab`` tokens."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=vocab,
        max_position_embeddings=1024,
    )
    return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def make_sae(seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    cfg = SAEConfig(architecture="topk", d_in=32, d_sae=D_SAE, k=8, hook_name="blocks.1.hook_resid_post")
    sae = SAE.from_config(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.1)
    return sae.eval()


@pytest.fixture(scope="session")
def app_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("app")
    save_sae(make_sae(), root / "sae")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t * 3}) + "\n" for t in CORPUS))
    return {"root": root, "sae": root / "sae", "corpus": corpus, "cache": root / "acts_cache"}


def app_config(files: dict[str, Path], **kw: Any) -> AppConfig:
    base: dict[str, Any] = dict(
        sae=str(files["sae"]),
        corpus=str(files["corpus"]),
        acts_cache=str(files["cache"]),
        n_windows=6,
        context_len=24,
        chat_prompts=4,
        batch_size=4,
        max_queue=4,
        max_prompt_chars=600,
        max_prompt_tokens=120,
    )
    base.update(kw)
    return AppConfig(**base)


@pytest.fixture(scope="session")
def tiny_chat(qwen_tokenizer: Any) -> tuple[Any, Any]:
    model = make_model(len(qwen_tokenizer))
    model.generation_config.eos_token_id = qwen_tokenizer.eos_token_id
    model.generation_config.pad_token_id = qwen_tokenizer.pad_token_id
    return model, qwen_tokenizer


def build_state(tiny_chat: tuple[Any, Any], files: dict[str, Path], **kw: Any) -> AppState:
    from saesteer.sae.io import load_sae

    model, tok = tiny_chat
    state = AppState.build(model, tok, "tiny-qwen2", load_sae(files["sae"]), app_config(files, **kw))
    state.cache.start()
    assert state.cache.wait(120), state.cache.status()
    return state


@pytest.fixture(scope="session")
def state(tiny_chat: tuple[Any, Any], app_files: dict[str, Path]) -> AppState:
    return build_state(tiny_chat, app_files, gate="feature:3>0.5")


@pytest.fixture(scope="session")
def client(state: AppState) -> Any:
    from fastapi.testclient import TestClient

    from saesteer.app.server import create_app

    return TestClient(create_app(state))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def live_server(state: AppState) -> Iterator[str]:
    """The app served by uvicorn on a loopback port, in a thread (for the browser and cancellation tests)."""
    import uvicorn

    from saesteer.app.server import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("the app server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def read_sse(lines: Any) -> list[tuple[str, dict[str, Any]]]:
    """Parse server-sent events from an iterator of text lines."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind, data = "message", ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line == "" and data:
            events.append((kind, json.loads(data)))
            kind, data = "message", ""
    return events
