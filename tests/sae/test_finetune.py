"""KL fine-tune: lowers the spliced KL on held-out windows, leaves the model alone, resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saesteer.activations.harvest import right_pad
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.finetune import FinetuneConfig, finetune_kl
from saesteer.sae.metrics import spliced_metrics
from tests.conftest import tiny_model
from tests.sae.conftest import random_sae

HOOK = "blocks.1.hook_resid_post"


def _windows(n: int, seed: int, length: int = 24) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 200, (length,), generator=g).tolist() for _ in range(n)]


def _cfg(**kw) -> FinetuneConfig:
    base = dict(tokens=12 * 4 * 24, lr=1e-2, warmup_steps=2, batch_windows=4, context_len=24, outlier_factor=0.0)
    base.update(progress=False, **kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def test_finetune_lowers_held_out_kl_and_freezes_the_model() -> None:
    model = tiny_model("qwen2", vocab_size=256)
    sae = random_sae("topk", d_in=64, d_sae=128, k=8, hook=HOOK)
    before_w = {k: v.clone() for k, v in model.state_dict().items()}
    res = finetune_kl(model, sae, _windows(48, seed=1), _cfg())
    assert res.steps == 12 and res.tokens == 12 * 4 * 24 and res.tokens_per_s == pytest.approx(res.tokens / res.seconds)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before_w.items())  # frozen
    assert all(p.requires_grad for p in model.parameters())  # and handed back as it was
    assert not torch.equal(res.sae.W_enc, sae.W_enc)  # the copy trained, the input SAE did not change
    torch.testing.assert_close(res.sae.W_dec.norm(dim=1), torch.ones(128))
    ids, mask = right_pad(_windows(16, seed=99), 0)  # windows the fine-tune never saw
    adapter = ArchAdapter(model)
    kl0 = spliced_metrics(model, adapter, sae, ids, mask)["kl_spliced"]
    kl1 = spliced_metrics(model, adapter, res.sae, ids, mask)["kl_spliced"]
    assert kl1 < 0.85 * kl0, (kl0, kl1)  # random-init model: small KLs, a clear relative drop
    assert res.sae.cfg.metadata["kl_finetune"]["tokens"] == 12 * 4 * 24 and "kl_finetune" not in sae.cfg.metadata


def test_finetune_resumes_after_a_kill(tmp_path: Path) -> None:
    model = tiny_model("qwen2", vocab_size=256)
    sae = random_sae("topk", d_in=64, d_sae=128, k=8, hook=HOOK)
    straight = finetune_kl(model, sae, _windows(48, seed=1), _cfg())

    def kill(step: int, _loss: float) -> None:
        if step == 7:
            raise KeyboardInterrupt

    cfg = _cfg(out_dir=str(tmp_path / "ft"), checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        finetune_kl(model, sae, _windows(48, seed=1), cfg, on_step=kill)
    resumed = finetune_kl(model, sae, _windows(48, seed=1), cfg)
    assert [e["step"] for e in resumed.log] == list(range(1, 13))
    for name, value in straight.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="another fine-tune config"):
        finetune_kl(model, sae, _windows(48, seed=1), _cfg(out_dir=str(tmp_path / "ft"), lr=1e-3, checkpoint_every=3))
