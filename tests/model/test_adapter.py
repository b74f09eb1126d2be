import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.model.adapter import SUPPORTED, ArchAdapter, HookPoint, StopForward
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


GEMMA = {"gemma2", "gemma3_text"}  # these normalise the attention and MLP outputs before each residual add


def _attention(layer: torch.nn.Module) -> torch.nn.Module:
    for name in ("self_attn", "attn", "attention"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise AssertionError(f"no attention module in {type(layer).__name__}")


def test_mlp_out_is_the_residual_update_less_attention(any_tiny_model) -> None:
    """mlp_out.L, recomputed without the MLP module: h_{L+1} - h_L - attention output (the MLP's share of the
    layer's residual update; Gemma: after its post-MLP norm). Hidden states and attention outputs come from
    the model's own outputs and a plain torch hook, not from the adapter."""
    a = ArchAdapter(any_tiny_model)
    ids, mask = _inputs()
    attn_out: dict[int, torch.Tensor] = {}
    handles = [
        _attention(layer).register_forward_hook(lambda _m, _a, out, i=i: attn_out.__setitem__(i, out[0]))
        for i, layer in enumerate(a.layers)
    ]
    try:
        with torch.no_grad():
            hs = any_tiny_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()
    gemma = a.model_type in GEMMA
    for layer in range(a.n_layers - 1):  # the last hidden state is taken after the final norm
        block = a.layers[layer]
        attn = block.post_attention_layernorm(attn_out[layer]) if gemma else attn_out[layer]
        expected = hs[layer + 1] - hs[layer] - attn
        mlp = a.run_to(f"blocks.{layer}.hook_mlp_out", ids, mask)
        with torch.no_grad():
            got = block.post_feedforward_layernorm(mlp) if gemma else mlp
        assert mlp.abs().max() > 1e-3  # a real update, not a zero that any capture would match
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_record_appends_every_forward_and_truncates() -> None:
    model = tiny_model("qwen2")
    a = ArchAdapter(model)
    ids, mask = _inputs()
    calls: list[int] = []
    counter = a.layers[3].register_forward_hook(lambda *_: calls.append(1))
    points = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "resid_post.1"]  # the last is the first again
    try:
        with a.record(points) as got:
            logits = a.forward(ids, mask)
            a.forward(ids[:1], mask[:1])
        assert sorted(got) == ["blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"]
        assert [t.shape[0] for t in got["blocks.1.hook_resid_post"]] == [2, 1]
        assert len(calls) == 2
        with a.record(points, truncate=True) as cut:
            with pytest.raises(StopForward):
                a.forward(ids, mask)
            with pytest.raises(StopForward):
                a.forward(ids, mask)
        assert len(calls) == 2  # layer 3 never ran in the truncated forwards
    finally:
        counter.remove()
    for name in got:
        torch.testing.assert_close(cut[name][1], got[name][0], rtol=0, atol=0)
    torch.testing.assert_close(a.run_full("resid_post.1", ids, mask)[1], logits, rtol=0, atol=0)
    assert not a.model._forward_pre_hooks and not a.layers[1]._forward_hooks  # every hook removed


def test_run_full_last_only_with_positions_from_the_mask() -> None:
    """A left-padded row with positions from the mask gives what the same prompt gives alone; gpt2's learned
    absolute positions make the default positions (0..seq-1, pads counted) give something else."""
    model = tiny_model("gpt2")
    a = ArchAdapter(model)
    ids, _ = _inputs()
    short = ids[1, 4:]
    alone_act, alone = a.run_full("resid_post.2", short[None], torch.ones(1, 8, dtype=torch.long))
    padded = ids.clone()
    padded[1, :4] = 0
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    act, last = a.run_full("resid_post.2", padded, mask, mask_positions=True, last_only=True)
    assert last.shape == (2, a.vocab_size)
    torch.testing.assert_close(last[1], alone[0, -1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(act[1, 4:], alone_act[0], rtol=1e-4, atol=1e-5)
    _, full = a.run_full("resid_post.2", padded, mask)
    assert not torch.allclose(full[1, -1], alone[0, -1], atol=1e-3)
    torch.testing.assert_close(a.run_full("resid_post.2", ids, None, last_only=True)[1], a.forward(ids)[:, -1])


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
