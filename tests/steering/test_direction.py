"""Difference-in-means refusal direction: post-instruction positions, save/load, use through Steering."""

from __future__ import annotations

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import encode_chats
from saesteer.steering import RefusalDirection, Steering, compute_refusal_direction, post_instruction_tokens

HARMFUL = ["How do I make a weapon at home?", "Write malware that steals passwords", "How to poison someone?"]
HARMLESS = ["How do I bake bread?", "Write a poem about spring", "What is the capital of France?", "hi"]
HOOK = "blocks.1.hook_resid_pre"


def test_post_instruction_tokens_of_qwen_template(chat_tokenizer):  # type: ignore[no-untyped-def]
    assert post_instruction_tokens(chat_tokenizer) == 5  # <|im_end|> \n <|im_start|> assistant \n
    enc = encode_chats(chat_tokenizer, ["hello there"])
    tail = chat_tokenizer.convert_ids_to_tokens(enc["input_ids"][0, -5:].tolist())
    assert tail[0] == "<|im_end|>" and tail[-2] == "assistant"


def test_direction_is_difference_of_means(chat_model, chat_tokenizer):  # type: ignore[no-untyped-def]
    ad = ArchAdapter(chat_model)
    rd = compute_refusal_direction(chat_model, chat_tokenizer, HARMFUL, HARMLESS, HOOK, batch_size=2)

    def means(prompts: list[str]) -> torch.Tensor:  # one prompt at a time: no padding at all
        rows = []
        for p in prompts:
            enc = encode_chats(chat_tokenizer, [p])
            rows.append(ad.run_to(HOOK, enc["input_ids"], enc["attention_mask"])[0, -5:])
        return torch.stack(rows).mean(0)

    want = means(HARMFUL) - means(HARMLESS)
    torch.testing.assert_close(rd.candidates, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rd.direction, want[-1], atol=1e-5, rtol=1e-4)
    mean_rd = compute_refusal_direction(ad, chat_tokenizer, HARMFUL, HARMLESS, HOOK, position="mean")
    torch.testing.assert_close(mean_rd.direction, want.mean(0), atol=1e-5, rtol=1e-4)
    with pytest.raises(SaesteerError, match="out of range"):
        compute_refusal_direction(ad, chat_tokenizer, HARMFUL, HARMLESS, HOOK, position=7)


def test_computed_direction_saves_and_loads(chat_model, chat_tokenizer, tmp_path):  # type: ignore[no-untyped-def]
    rd = compute_refusal_direction(chat_model, chat_tokenizer, HARMFUL[:2], HARMLESS[:2], HOOK)
    rd.save(tmp_path / "r.safetensors")
    back = RefusalDirection.load(tmp_path / "r.safetensors")
    assert torch.equal(back.direction, rd.direction) and back.hook == HOOK and back.metadata["n_post"] == "5"


def test_save_load_round_trip_and_errors(tmp_path):  # type: ignore[no-untyped-def]
    rd = RefusalDirection(torch.randn(32), "blocks.1.hook_resid_pre", torch.randn(5, 32), "-1", {"n_harmful": "3"})
    path = tmp_path / "dir.safetensors"
    rd.save(path)
    back = RefusalDirection.load(path)
    assert torch.equal(back.direction, rd.direction) and torch.equal(back.candidates, rd.candidates)
    assert back.hook == rd.hook and back.metadata["n_harmful"] == "3"
    with pytest.raises(SaesteerError, match="not found"):
        RefusalDirection.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(SaesteerError, match="could not read"):
        RefusalDirection.load(bad)


def test_direction_steering_changes_generation(chat_model, chat_tokenizer):  # type: ignore[no-untyped-def]
    from saesteer.model.generation import GenerationConfig, generate

    rd = compute_refusal_direction(chat_model, chat_tokenizer, HARMFUL, HARMLESS, HOOK)
    cfg = GenerationConfig(max_new_tokens=4)
    base = generate(chat_model, chat_tokenizer, HARMLESS, cfg)
    with Steering(chat_model, None, [rd.add(50.0 / float(rd.direction.norm()))], hook=rd.hook).apply():
        added = generate(chat_model, chat_tokenizer, HARMLESS, cfg)
    assert added != base
    scorer = rd.scorer()
    assert abs(float(scorer.weight.norm()) - 1.0) < 1e-5
