import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.model.adapter import SUPPORTED, ArchAdapter, HookPoint
from tests.conftest import TINY_CONFIGS, tiny_model


def _inputs(vocab: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    return ids, mask


def test_every_tiny_config_is_supported() -> None:
    assert set(TINY_CONFIGS) <= set(SUPPORTED)


def test_hook_points_and_truncated_forward(any_tiny_model) -> None:
    a = ArchAdapter(any_tiny_model)
    assert a.n_layers == 4 and a.d_model == 64
    ids, mask = _inputs()
    with torch.no_grad():
        hs = any_tiny_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in range(a.n_layers):
        full_pre, _ = a.run_full(f"blocks.{layer}.hook_resid_pre", ids, mask)
        trunc_pre = a.run_to(f"blocks.{layer}.hook_resid_pre", ids, mask)
        torch.testing.assert_close(trunc_pre, full_pre, rtol=0, atol=0)
        torch.testing.assert_close(trunc_pre, hs[layer], rtol=1e-6, atol=1e-6)
        full_post, _ = a.run_full(f"resid_post.{layer}", ids, mask)
        trunc_post = a.run_to(f"resid_post.{layer}", ids, mask)
        torch.testing.assert_close(trunc_post, full_post, rtol=0, atol=0)
        if layer + 1 < a.n_layers:  # the last hidden state is taken after the final norm
            torch.testing.assert_close(full_post, hs[layer + 1], rtol=1e-6, atol=1e-6)
        mlp = a.run_to(f"blocks.{layer}.hook_mlp_out", ids, mask)
        assert mlp.shape == full_post.shape


def test_hook_replacement_changes_logits(any_tiny_model) -> None:
    a = ArchAdapter(any_tiny_model)
    ids, mask = _inputs()
    with torch.no_grad():
        clean = any_tiny_model(input_ids=ids, attention_mask=mask).logits
    handle = a.add_hook("blocks.1.hook_resid_post", lambda x: x + 1.0)
    with torch.no_grad():
        edited = any_tiny_model(input_ids=ids, attention_mask=mask).logits
    handle.remove()
    with torch.no_grad():
        after = any_tiny_model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(clean, edited)
    torch.testing.assert_close(clean, after)


def test_resid_pre_edit_equals_previous_resid_post_edit() -> None:
    model = tiny_model("qwen2")
    a = ArchAdapter(model)
    ids, mask = _inputs()
    outs = []
    for point in ("blocks.2.hook_resid_pre", "blocks.1.hook_resid_post"):
        h = a.add_hook(point, lambda x: x * 0.5)
        with torch.no_grad():
            outs.append(model(input_ids=ids, attention_mask=mask).logits)
        h.remove()
    torch.testing.assert_close(outs[0], outs[1])


def test_layer_out_of_range_and_bad_names() -> None:
    a = ArchAdapter(tiny_model("llama"))
    with pytest.raises(SaesteerError, match="out of range"):
        a.check("blocks.4.hook_resid_post")
    with pytest.raises(SaesteerError, match="bad hook point"):
        HookPoint.parse("layer twelve")
    with pytest.raises(SaesteerError, match="unknown hook kind"):
        HookPoint.parse("blocks.1.hook_attn_scores")
    assert HookPoint.parse("resid_pre.3").name == "blocks.3.hook_resid_pre"


def test_unsupported_architecture() -> None:
    class Cfg:
        model_type = "bert"

    class Fake(torch.nn.Module):
        config = Cfg()

    with pytest.raises(SaesteerError, match="unsupported architecture 'bert'"):
        ArchAdapter(Fake())
