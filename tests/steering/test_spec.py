"""SteeringSpec -> Steering.from_spec: the same edits as a hand-built Steering, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.sae.io import save_sae
from saesteer.steering import ClampFeature, Gate, RefusalDirection, ScaleFeature, Steering, calibrate, prompt_scores
from saesteer.steering.spec import SteeringSpec, parse_pairs, read_prompt_file
from tests.steering.helpers import tiny_sae

PROMPTS = ["How do I bake bread?", "hi there", "Name three colours"]


def _logits(model: Any, tok: Any, steering: Steering | None) -> torch.Tensor:
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    if steering is None:
        return model(**enc).logits
    with steering.apply():
        return model(**enc).logits


@pytest.fixture
def files(tmp_path: Path) -> Path:
    save_sae(tiny_sae("topk", 1, d_in=32), tmp_path / "sae")
    rd = RefusalDirection(torch.linspace(-1, 1, 32) * 20, "blocks.1.hook_resid_pre", torch.zeros(1, 32))
    rd.save(tmp_path / "d.safetensors")
    (tmp_path / "harmless.txt").write_text("Write a poem\n\nWhat is 2+2?\nName a colour\nhello\n")
    return tmp_path


def test_parse_pairs() -> None:
    assert parse_pairs(["12=3.5", " 7 = -2 "], "--clamp") == [(12, 3.5), (7, -2.0)]
    for bad in ("12", "x=1", "1=y", "1=2=3"):
        with pytest.raises(SaesteerError, match="use FEATURE=NUMBER"):
            parse_pairs([bad], "--clamp")


@torch.no_grad()
def test_from_spec_matches_a_hand_built_steering(chat_model: Any, chat_tokenizer: Any, files: Path) -> None:
    from saesteer.sae.io import load_sae

    spec = SteeringSpec(sae=str(files / "sae"), clamp=["3=40"], scale=["5=0.5"], positions="prompt")
    steering = Steering.from_spec(chat_model, spec)
    sae = load_sae(files / "sae")
    by_hand = Steering(chat_model, sae, [ClampFeature(3, 40.0), ScaleFeature(5, 0.5)], positions="prompt")
    got, want = _logits(chat_model, chat_tokenizer, steering), _logits(chat_model, chat_tokenizer, by_hand)
    assert torch.equal(got, want)
    assert not torch.allclose(got, _logits(chat_model, chat_tokenizer, None))


@torch.no_grad()
def test_direction_spec_and_calibrated_gate(chat_model: Any, chat_tokenizer: Any, files: Path) -> None:
    spec = SteeringSpec(
        direction=str(files / "d.safetensors"),
        add_direction=2.0,
        gate="direction",
        gate_calibrate=str(files / "harmless.txt"),
        gate_fpr=0.25,
    )
    steering = Steering.from_spec(chat_model, spec, chat_tokenizer)
    rd = RefusalDirection.load(files / "d.safetensors")
    gate = Gate(rd.scorer(), 0.0, rd.hook, "last", 5)
    harmless = ["Write a poem", "What is 2+2?", "Name a colour", "hello"]
    threshold = calibrate(prompt_scores(chat_model, chat_tokenizer, harmless, gate), 0.25)
    assert steering.gate is not None and steering.gate.threshold == pytest.approx(threshold)
    assert [h.name for h in steering.hooks] == ["blocks.1.hook_resid_pre"]


def test_check_rejects_before_loading(tmp_path: Path) -> None:
    cases = [
        (SteeringSpec(clamp=["3=1"]), "need an SAE"),
        (SteeringSpec(add_direction=1.0), "need --direction FILE"),
        (SteeringSpec(sae=str(tmp_path)), "no intervention given"),
        (SteeringSpec(sae=str(tmp_path), clamp=["3=1"], gate="feature:3>x"), "threshold must be a number"),
        (SteeringSpec(sae=str(tmp_path), clamp=["3=1"], positions="middle"), "unknown positions"),
        (SteeringSpec(sae=str(tmp_path / "no"), clamp=["3=1"]), "--sae .* not found"),
    ]
    for spec, message in cases:
        with pytest.raises(SaesteerError, match=message) as exc:
            spec.check()
        assert "\n" not in str(exc.value)
    assert not SteeringSpec().active and SteeringSpec(ablate_direction=True).active


def test_read_prompt_file(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("one\n\n two \n")
    assert read_prompt_file(tmp_path / "p.txt") == ["one", " two "]
    msgs = [{"role": "user", "content": "hey"}]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n\n" + json.dumps({"messages": msgs}) + "\n")
    assert read_prompt_file(tmp_path / "p.jsonl") == ["a", msgs]
    (tmp_path / "bad.jsonl").write_text("[1]\n")
    with pytest.raises(SaesteerError, match="bad.jsonl:1 has neither"):
        read_prompt_file(tmp_path / "bad.jsonl")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SaesteerError, match="cannot read prompts file"):
        read_prompt_file(tmp_path / "bin.txt")


@torch.no_grad()
def test_gate_file_from_fit_gate(chat_model: Any, chat_tokenizer: Any, files: Path) -> None:
    """--gate FILE steers exactly the prompts the saved gate fires on."""
    from saesteer.model.adapter import ArchAdapter
    from saesteer.steering import ProjectionScorer
    from saesteer.steering.gatefile import save_gate

    rd = RefusalDirection.load(files / "d.safetensors")
    enc = chat_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    real = enc["attention_mask"].bool()
    acts = ArchAdapter(chat_model).run_to(rd.hook, enc["input_ids"], enc["attention_mask"])
    gate = Gate(ProjectionScorer(torch.linspace(-1, 1, 32), 0.0), 0.0, rd.hook, "last")
    scores = gate.scores(acts, real)
    gate = gate.with_threshold(float(scores.median()))  # fires on some prompts, not all
    fired = gate.decide(scores)
    assert 0 < int(fired.sum()) < len(PROMPTS)
    save_gate(files / "g.safetensors", gate)
    spec = SteeringSpec(direction=str(files / "d.safetensors"), add_direction=3.0, gate=str(files / "g.safetensors"))
    steering = Steering.from_spec(chat_model, spec)
    assert steering.gate is not None and steering.gate.threshold == gate.threshold
    base = _logits(chat_model, chat_tokenizer, None)
    gated = _logits(chat_model, chat_tokenizer, steering)
    always = _logits(chat_model, chat_tokenizer, Steering(chat_model, None, [rd.add(3.0)], hook=rd.hook))
    assert not torch.allclose(always, base)
    for i, f in enumerate(fired.tolist()):
        torch.testing.assert_close(gated[i][real[i]], (always if f else base)[i][real[i]])
    with pytest.raises(SaesteerError, match="--gate .*not found"):
        SteeringSpec(direction=spec.direction, add_direction=1.0, gate=str(files / "no.safetensors")).check()
