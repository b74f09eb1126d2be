"""KV-cache steering of generated tokens equals the manual computation on every supported architecture."""

from __future__ import annotations

import pytest
import torch

from saesteer.model.adapter import ArchAdapter
from saesteer.steering import AddDirection, Steering
from tests.conftest import TINY_CONFIGS, tiny_model


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_generated_tokens_steered_under_kv_cache(arch: str) -> None:
    model = tiny_model(arch, vocab_size=96)
    ad = ArchAdapter(model)
    hook = "blocks.1.hook_resid_post"
    r = torch.randn(ad.d_model, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(3, 96, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    kw = dict(
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    with Steering(model, None, [AddDirection(r, 3.0)], hook=hook, positions="generated").apply():
        out = model.generate(input_ids=ids, attention_mask=mask, **kw)
    seqs = out.sequences
    full_mask = torch.cat([mask, torch.ones(2, seqs.shape[1] - 6, dtype=mask.dtype)], dim=1)
    pos_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() derives them from the mask
    gen = (torch.arange(seqs.shape[1]) >= 6).view(1, -1, 1)
    handle = ad.add_hook(hook, lambda x: torch.where(gen, x + 3.0 * r, x))
    with torch.no_grad():
        ref = model(input_ids=seqs, attention_mask=full_mask, position_ids=pos_ids, use_cache=False).logits
    handle.remove()
    with torch.no_grad():
        plain = model(input_ids=seqs, attention_mask=full_mask, position_ids=pos_ids, use_cache=False).logits
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, ref[:, 5 + step], atol=2e-4, rtol=2e-4)
        if step > 0:
            assert (logits - plain[:, 5 + step]).abs().amax(-1).min() > 1e-4
