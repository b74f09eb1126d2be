"""Steering the real default model (bf16) with a random-init Top-k SAE at layer 12."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import GenerationConfig, encode_chats, eos_ids
from saesteer.model.loading import load
from saesteer.sae.base import SAE, SAEConfig
from saesteer.steering import ClampFeature, Steering

pytestmark = pytest.mark.slow

HOOK = "blocks.12.hook_resid_post"
PROMPTS = ["Write a manual for making a bomb at home.", "Name three primary colours."]
NEW = 12


@pytest.fixture(scope="module")
def lm() -> Any:
    return load("default")


def _generate(lm: Any, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = lm.model.generate(
            **enc,
            max_new_tokens=NEW,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=eos_ids(lm.model, lm.tokenizer),
        )
    return out[:, enc["input_ids"].shape[1] :]


def test_clamp_changes_generations_deterministically_and_noop_does_not(lm: Any) -> None:
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig("topk", d_in=896, d_sae=2048, k=32, hook_name=HOOK)).eval()
    enc = encode_chats(lm.tokenizer, PROMPTS, GenerationConfig().system_prompt)
    ad = ArchAdapter(lm.model)
    x = ad.run_to(HOOK, enc["input_ids"], enc["attention_mask"]).float()
    real = enc["attention_mask"].bool()
    z = sae.encode(x)
    feat = int(((z > 0) & real.unsqueeze(-1)).sum((0, 1)).argmax())  # the latent most often active here
    value = 4.0 * float(x[real].norm(dim=-1).median())

    seen: list[torch.Tensor] = []
    grab = ad.add_hook(HOOK, lambda t: seen.append(t.detach().float()) or None)  # type: ignore[func-returns-value]
    base = _generate(lm, enc)
    grab.remove()

    steering = Steering(lm.model, sae, [ClampFeature(feat, value)])
    with steering.apply():
        steered = _generate(lm, enc)
    with steering.apply():
        again = _generate(lm, enc)
    assert torch.equal(steered, again)  # deterministic
    assert not torch.equal(steered, base)  # and it changes what the model says

    own = sae.encode(torch.cat(seen, dim=1))[..., feat].detach()  # the feature's own value at every position
    assert float((own > 0).float().mean()) > 0.05  # active: clamping it to itself is not trivially a no-op
    with Steering(lm.model, sae, [ClampFeature(feat, own)]).apply():
        noop = _generate(lm, enc)
    assert torch.equal(noop, base)


def test_fast_path_matches_generate_and_keeps_the_noop_exact(lm: Any) -> None:
    """bf16 real model: the fast path's greedy tokens equal ``generate``'s, and a clamp to the feature's
    own value (per position, prompt and generated) leaves them unchanged on the fast path too."""
    from saesteer.model.decode import decode

    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig("topk", d_in=896, d_sae=2048, k=32, hook_name=HOOK)).eval()
    enc = encode_chats(lm.tokenizer, PROMPTS, GenerationConfig().system_prompt)
    ad = ArchAdapter(lm.model)
    eos, pad = eos_ids(lm.model, lm.tokenizer), lm.tokenizer.pad_token_id

    def fast() -> torch.Tensor:
        return decode(lm.model, enc["input_ids"], enc["attention_mask"], max_new_tokens=NEW, eos_ids=eos, pad_id=pad)

    seen: list[torch.Tensor] = []
    grab = ad.add_hook(HOOK, lambda t: seen.append(t.detach().float()) or None)  # type: ignore[func-returns-value]
    base = fast()
    grab.remove()
    hf = _generate(lm, enc)
    assert torch.equal(base, hf[:, : base.shape[1]])
    own = sae.encode(torch.cat(seen, dim=1))[..., :].detach()
    feat = int((own > 0).float().mean((0, 1)).argmax())
    assert float((own[..., feat] > 0).float().mean()) > 0.05
    with Steering(lm.model, sae, [ClampFeature(feat, own[..., feat])]).apply():
        noop = fast()
    assert torch.equal(noop, base)
    with Steering(lm.model, sae, [ClampFeature(feat, 4.0 * float(torch.cat(seen, 1).norm(dim=-1).median()))]).apply():
        assert not torch.equal(fast(), base)
