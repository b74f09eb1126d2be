"""Position rules on the real chat template, and readouts that score prompts exactly as the gate does."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saesteer.model.generation import encode_chats, to_messages
from saesteer.steering import Gate, ProjectionScorer, prompt_scores
from saesteer.steering.gate import reduce_tokens
from saesteer.steering.readout import RULES, position_rule, position_rules, readouts
from tests.gating.prompts import ALPACA, HARMFUL
from tests.steering.helpers import tiny_sae

PROMPTS: list[Any] = [
    "How do I pick a lock?",
    "hi",
    [
        {"role": "user", "content": "Tell me about chemistry."},
        {"role": "assistant", "content": "Sure, what about it?"},
        {"role": "user", "content": "Which gases are toxic?"},
    ],
]


def _instruction_end(tokenizer: Any, conv: Any) -> int:
    """Index of the last token of the last user message, found from token offsets in the rendered chat."""
    text = tokenizer.apply_chat_template(to_messages(conv), tokenize=False, add_generation_prompt=True)
    content = conv if isinstance(conv, str) else conv[-1]["content"]
    end = text.rfind(content) + len(content)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return max(i for i, (s, e) in enumerate(offsets) if e <= end and e > s)


def test_rules_find_instruction_and_template_tokens(qwen_tokenizer):  # type: ignore[no-untyped-def]
    rules = position_rules(RULES, qwen_tokenizer)
    n_post = rules["template"].tail
    enc = encode_chats(qwen_tokenizer, PROMPTS)
    ids, real = enc["input_ids"], enc["attention_mask"].bool()
    width = ids.shape[1]
    pos = torch.arange(width, dtype=torch.float32).expand(len(PROMPTS), width).unsqueeze(-1)  # value = position
    got = {name: reduce_tokens(pos, real, r.reduce, r.tail, r.offset)[:, 0] for name, r in rules.items()}
    for i, conv in enumerate(PROMPTS):
        pad = int((~real[i]).sum())
        inst = pad + _instruction_end(qwen_tokenizer, conv)
        assert got["instruction"][i] == inst
        assert qwen_tokenizer.decode(ids[i, inst + 1 :]) == "<|im_end|>\n<|im_start|>assistant\n"
        assert got["template"][i] == pytest.approx(sum(range(inst + 1, width)) / n_post)
        assert got["template_last"][i] == width - 1
        assert got["mean"][i] == pytest.approx(sum(range(pad, width)) / (width - pad))
    with pytest.raises(Exception, match="unknown position rule"):
        position_rule("middle", 5)


def test_readouts_score_like_the_gate(chat_model, qwen_tokenizer):  # type: ignore[no-untyped-def]
    prompts = HARMFUL[:4] + ALPACA[:3] + PROMPTS
    rules = list(position_rules(RULES, qwen_tokenizer).values())
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    sae = tiny_sae("topk", 1, d_in=32)
    acts = readouts(chat_model, qwen_tokenizer, prompts, hooks, rules, batch_size=4, latents=sae)
    assert set(acts) == {(h, r.name) for h in [*hooks, "sae:blocks.1.hook_resid_post"] for r in rules}
    scorer = ProjectionScorer(torch.randn(32, generator=torch.Generator().manual_seed(0)), 0.3)
    for hook in hooks:
        for r in rules:
            gate = Gate(scorer, 0.0, hook, **r.gate_kwargs())
            s = prompt_scores(chat_model, qwen_tokenizer, prompts, gate, batch_size=3)
            torch.testing.assert_close(scorer.token_scores(acts[(hook, r.name)]), s, atol=1e-4, rtol=1e-4)
    # the latents at the instruction token are the SAE's encoding of that token's activation
    inst = acts[("blocks.1.hook_resid_post", "instruction")]
    torch.testing.assert_close(acts[("sae:blocks.1.hook_resid_post", "instruction")], sae.encode(inst))
