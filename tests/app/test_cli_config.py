"""The app's command line, config checks, gates from files, and SAELens-format SAE folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from saesteer.app.config import AppConfig
from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import encode_chats
from saesteer.steering.gate import ProjectionScorer
from tests.app.conftest import app_config, build_state, read_sse
from tests.app.test_api import PROMPT


@pytest.mark.parametrize("kw,words", [({"sae": ""}, "no SAE"), ({"port": 70000}, "--port"),
                                      ({"max_queue": 0}, "--max-queue"), ({"value_multiple": 0}, "value-multiple"),
                                      ({"gate_reduce": "max"}, "gate-reduce"), ({"chat_prompts": -1}, "chat-prompts")])  # fmt: skip
def test_config_validation(kw: dict[str, Any], words: str) -> None:
    cfg = AppConfig(**{"sae": "x", **kw})
    with pytest.raises(SaesteerError, match=words):
        cfg.validate()


def test_cli_bad_sae_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from saesteer.cli.main import main

    assert main(["app", "--sae", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saesteer: error:") and "not found" in err and "\n" not in err


def test_cli_help_lists_app_options(capsys: pytest.CaptureFixture[str]) -> None:
    from saesteer.cli.main import main

    with pytest.raises(SystemExit):
        main(["app", "--help"])
    out = capsys.readouterr().out
    for flag in ("--sae", "--features", "--gate", "--port", "--host", "--study", "--model"):
        assert flag in out


def test_non_loopback_host_warns(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 state: Any) -> None:  # fmt: skip
    import uvicorn

    from saesteer.app.server import serve

    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: served.update(host=host, port=port))
    serve(state, "0.0.0.0", 0)
    assert served["host"] == "0.0.0.0" and served["port"] > 0
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err
    serve(state, "127.0.0.1", 8123)
    assert "warning" not in capsys.readouterr().err and served == {"host": "127.0.0.1", "port": 8123}


def test_bad_gate_and_features_files(tiny_chat: Any, app_files: Any, tmp_path: Path) -> None:
    with pytest.raises(SaesteerError, match="feature:F>T"):
        build_state(tiny_chat, app_files, gate="feature:3")
    with pytest.raises(SaesteerError, match="out of range"):
        build_state(tiny_chat, app_files, gate="feature:500>1")
    bad = tmp_path / "features.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(SaesteerError, match="not a saesteer features.json"):
        build_state(tiny_chat, app_files, features=str(bad))
    bad.write_text("{nope")
    with pytest.raises(SaesteerError, match="not valid JSON"):
        build_state(tiny_chat, app_files, features=str(bad))
    with pytest.raises(SaesteerError, match="no features.json"):
        build_state(tiny_chat, app_files, features=str(tmp_path / "none"))


def test_gate_file_from_fit_gate(tiny_chat: Any, app_files: Any, tmp_path: Path) -> None:
    """A gate file written by saesteer.gating (as `saesteer fit-gate` does) is the playground's default gate."""
    from fastapi.testclient import TestClient

    from saesteer.app.server import create_app
    from saesteer.steering.gate import Gate
    from saesteer.steering.gatefile import save_gate

    torch.manual_seed(1)
    w = torch.randn(32)
    path = tmp_path / "gate.safetensors"
    save_gate(path, Gate(ProjectionScorer(w, 0.25), -1e9, "blocks.1.hook_resid_post", "last"))
    state = build_state(tiny_chat, app_files, gate=str(path))
    c = TestClient(create_app(state))
    body = {
        "prompt": PROMPT,
        "features": [{"feature": 2, "value": 0.1}],
        "max_new_tokens": 3,
        "gate": {"enabled": True},
    }
    with c.stream("POST", "/api/generate", json=body) as r:
        events = read_sse(r.iter_lines())
    gate = next(d for k, d in events if k == "gate")
    model, tok = tiny_chat
    enc = encode_chats(tok, [PROMPT])
    x = ArchAdapter(model).run_to("blocks.1.hook_resid_post", enc["input_ids"], enc["attention_mask"])[0, -1]
    assert gate["score"] == pytest.approx(float(x.float() @ w + 0.25), rel=1e-4)
    assert gate["fires"] is True and gate["spec"] == str(path)
    assert events[0][1]["command"].endswith(f"--gate {path}")
    body["gate"] = {"enabled": True, "threshold": 1e9}  # a typed threshold overrides the file's
    with c.stream("POST", "/api/generate", json=body) as r:
        events = read_sse(r.iter_lines())
    assert next(d for k, d in events if k == "gate")["fires"] is False
    assert "its own threshold differs" in events[0][1]["command"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a gate")
    with pytest.raises(SaesteerError, match="gate file"):
        build_state(tiny_chat, app_files, gate=str(bad))


def test_saelens_format_folder(tiny_chat: Any, app_files: Any, tmp_path: Path) -> None:
    """An SAELens release folder (flat pre-6 cfg.json, ReLU 'standard' SAE) serves like our own."""
    from fastapi.testclient import TestClient

    from saesteer.app.server import create_app
    from saesteer.app.state import AppState
    from saesteer.sae.io import load_sae

    folder = tmp_path / "saelens"
    folder.mkdir()
    cfg = {"architecture": "standard", "d_in": 32, "d_sae": 40, "hook_point": "blocks.2.hook_resid_post",
           "hook_layer": 2, "dtype": "float32", "activation_fn_str": "relu", "apply_b_dec_to_input": True}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(40, 32, generator=g)
    save_file({"W_enc": w_dec.T.contiguous() * 0.5, "b_enc": torch.zeros(40), "W_dec": w_dec,
               "b_dec": torch.zeros(32)}, str(folder / "sae_weights.safetensors"))  # fmt: skip
    model, tok = tiny_chat
    cfg_app = app_config(app_files, sae=str(folder))
    state = AppState.build(model, tok, "tiny-qwen2", load_sae(folder), cfg_app)
    state.cache.start()
    assert state.cache.wait(120)
    c = TestClient(create_app(state))
    assert c.get("/api/info").json()["sae"] == {"path": str(folder), "d_sae": 40, "d_in": 32,
                                               "hook": "blocks.2.hook_resid_post", "architecture": "relu", "k": None}  # fmt: skip
    f = int(torch.argmax(state.browser.stats.max_act))  # type: ignore[union-attr]
    assert c.get(f"/api/features/{f}").json()["card"]["contexts"]
    with c.stream("POST", "/api/generate", json={"prompt": PROMPT, "features": [{"feature": f, "value": 1.0}],
                                                  "max_new_tokens": 3}) as r:  # fmt: skip
        assert read_sse(r.iter_lines())[-1][0] == "end"
