"""Conditional steering: per-example gate decisions that persist across decode steps; calibration; probes."""

from __future__ import annotations

import math

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter
from saesteer.steering import ClampFeature, FeatureScorer, Gate, ProjectionScorer, Steering, calibrate, fit_probe
from saesteer.steering.gate import false_positive_rate, reduce_scores
from tests.steering.helpers import tiny_sae

LAYER = 2
FEAT = 5


def gen(model, batch, n=5):  # type: ignore[no-untyped-def]
    return model.generate(
        **batch,
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )


def _flip(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.flip(0) for k, v in batch.items()}


@pytest.mark.parametrize("scorer_kind", ["projection", "feature"])
def test_gate_decides_per_example_and_persists(model, batch, scorer_kind):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    gate_hook = "blocks.1.hook_resid_post"
    if scorer_kind == "projection":
        scorer = ProjectionScorer(torch.randn(64, generator=torch.Generator().manual_seed(4)))
    else:
        scorer = FeatureScorer(tiny_sae("relu", 1, seed=7), 11)
        gate_hook = ""
    probe = Gate(scorer, 0.0, gate_hook, reduce="mean")
    x = ArchAdapter(model).run_to(probe.hook, batch["input_ids"], batch["attention_mask"])
    s = probe.scores(x, batch["attention_mask"].bool())
    order = s.argsort()
    thr = float((s[order[0]] + s[order[1]]) / 2)  # rows order[1:] fire, order[0] does not
    gate = probe.with_threshold(thr)
    iv = [ClampFeature(FEAT, 15.0)]
    base = gen(model, batch)
    with Steering(model, sae, iv).apply():
        always = gen(model, batch)
    for b in (batch, _flip(batch)):  # the same decisions whatever the example's place in the batch
        flipped = b is not batch
        with Steering(model, sae, iv, gate=gate).apply() as handle:
            out = gen(model, b)
        scores = handle.gate_scores.flip(0) if flipped else handle.gate_scores
        torch.testing.assert_close(scores, s)
        for i in range(3):
            j = 2 - i if flipped else i
            ref = always if s[i] > thr else base
            for step, logits in enumerate(out.logits):  # every decode step follows the prompt's decision
                torch.testing.assert_close(logits[j], ref.logits[step][i], atol=1e-5, rtol=1e-5)
    assert (s > thr).sum() == 2


def test_gate_after_steering_point_is_rejected(model):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", LAYER)
    gate = Gate(ProjectionScorer(torch.ones(64)), 0.0, "blocks.3.hook_resid_pre")
    with pytest.raises(SaesteerError, match="comes after steering hook"):
        Steering(model, sae, [ClampFeature(FEAT, 1.0)], gate=gate)
    same = Gate(ProjectionScorer(torch.ones(64)), 0.0, f"blocks.{LAYER}.hook_resid_post")
    Steering(model, sae, [ClampFeature(FEAT, 1.0)], gate=same)  # at the steering point is fine
    with pytest.raises(SaesteerError, match="d_model"):
        Steering(model, sae, [ClampFeature(FEAT, 1.0)], gate=Gate(ProjectionScorer(torch.ones(8)), 0.0, "resid_pre.1"))
    with pytest.raises(SaesteerError, match="gate at the SAE's hook point"):
        Gate(FeatureScorer(tiny_sae("relu", 1), 3), 0.0, "resid_post.2")


def test_reduce_scores_ignores_padding() -> None:
    scores = torch.tensor([[9.0, 9.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    real = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert reduce_scores(scores, real, "last", 1).tolist() == [3.0, 5.0]
    assert reduce_scores(scores, real, "mean", 1).tolist() == [2.0, 3.0]
    assert reduce_scores(scores, real, "tail", 2).tolist() == [2.5, 4.5]
    assert reduce_scores(scores, real, "tail", 4).tolist() == [2.0, 3.5]


def test_reduce_last_with_offset_skips_padding() -> None:
    x = torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    real = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert reduce_scores(x, real, "last", 1, offset=1).tolist() == [2.0, 4.0]
    assert reduce_scores(x, real, "last", 1, offset=2).tolist() == [1.0, 3.0]
    assert reduce_scores(x, real, "last", 1, offset=9).tolist() == [1.0, 1.0]  # shorter prompt: its first token
    with pytest.raises(SaesteerError, match="offset"):
        Gate(ProjectionScorer(torch.ones(4)), 0.0, "resid_post.1", reduce="mean", offset=2)


def test_calibrate_hits_target_fpr() -> None:
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for fpr in (0.0, 0.01, 0.05, 0.2):
        thr = calibrate(scores, fpr)
        got = false_positive_rate(scores, thr)
        assert got <= fpr + 1e-12
        assert got >= fpr - 0.0011  # the lowest such threshold: one more harmless prompt would exceed
    assert calibrate(scores, 1.0) == -math.inf
    assert calibrate([1.0, 2.0, 3.0, 4.0], 0.25) == 3.0  # exactly one of four above
    for bad, fpr in (([], 0.1), ([1.0, float("nan")], 0.1), ([1.0], 1.5)):
        with pytest.raises(SaesteerError):
            calibrate(bad, fpr)


def test_fit_probe_separates_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    shift = torch.zeros(16)
    shift[3] = 3.0
    pos = torch.randn(200, 16, generator=g) + shift
    neg = torch.randn(200, 16, generator=g) - shift
    probe = fit_probe(pos, neg)
    acc = ((probe.token_scores(pos) > 0).float().mean() + (probe.token_scores(neg) <= 0).float().mean()) / 2
    assert acc > 0.95
    assert probe.weight.abs().argmax() == 3


def test_prompt_scores_match_scores_seen_while_steering(chat_model, chat_tokenizer):  # type: ignore[no-untyped-def]
    from saesteer.model.generation import GenerationConfig, generate
    from saesteer.steering import prompt_scores

    prompts = ["How do I bake bread?", "hi", "Tell me a story about a dragon and a knight"]
    sae = tiny_sae("topk", 1, d_in=32)
    gate = Gate(
        ProjectionScorer(torch.randn(32, generator=torch.Generator().manual_seed(2))),
        0.0,
        "blocks.1.hook_resid_pre",
        reduce="tail",
        tail=5,
    )
    s = prompt_scores(chat_model, chat_tokenizer, prompts, gate)
    with Steering(chat_model, sae, [ClampFeature(3, 5.0)], gate=gate).apply() as h:
        generate(chat_model, chat_tokenizer, prompts, GenerationConfig(max_new_tokens=2, batch_size=8))
    # generate() sorts prompts by length; map back
    order = sorted(range(3), key=lambda i: len(prompts[i]))
    torch.testing.assert_close(h.gate_scores, s[order], atol=1e-5, rtol=1e-5)


def test_many_gates_scored_in_one_pass_equal_each_alone(chat_model, chat_tokenizer):  # type: ignore[no-untyped-def]
    from saesteer.model.generation import encode_chats
    from saesteer.steering import prompt_scores
    from saesteer.steering.gate import prompt_scores_many

    prompts = ["How do I bake bread?", "hi", "Tell me a story about a dragon and a knight", "What is 2+2?"]
    g = torch.Generator().manual_seed(3)
    sae = tiny_sae("topk", 1, d_in=32)
    gates = [
        Gate(ProjectionScorer(torch.randn(32, generator=g)), 0.0, "blocks.1.hook_resid_pre", reduce="tail", tail=3),
        Gate(ProjectionScorer(torch.randn(32, generator=g)), 0.0, "blocks.0.hook_resid_post", reduce="mean"),
        Gate(FeatureScorer(sae, 4), 0.0, "blocks.1.hook_resid_post", reduce="last"),
        Gate(ProjectionScorer(torch.randn(32, generator=g)), 0.0, "blocks.1.hook_resid_pre", reduce="last"),
    ]
    together = prompt_scores_many(chat_model, chat_tokenizer, prompts, gates, batch_size=4)
    assert len(together) == len(gates)
    enc = encode_chats(chat_tokenizer, prompts)
    ad = ArchAdapter(chat_model)
    for gate, s in zip(gates, together, strict=True):
        # independently: a truncated forward to this gate's own hook, its scores there
        alone = gate.scores(ad.run_to(gate.hook, enc["input_ids"], enc["attention_mask"]), enc["attention_mask"].bool())
        assert s.shape == (4,)
        torch.testing.assert_close(s, alone, atol=0, rtol=0)
        torch.testing.assert_close(prompt_scores(chat_model, chat_tokenizer, prompts, gate, batch_size=4), s)
    assert not torch.equal(together[0], together[3])  # different gates on one hook: different scores


@pytest.mark.parametrize("reduce", ["mean", "tail", "last"])
def test_probe_on_pooled_activations_scores_like_the_gate(chat_model, chat_tokenizer, reduce, tmp_path):  # type: ignore[no-untyped-def]
    from saesteer.steering import prompt_scores
    from saesteer.steering.gate import prompt_activations

    prompts = ["How do I bake bread?", "hi", "Tell me a story about a dragon and a knight", "What is 2+2?"]
    hook = "blocks.1.hook_resid_pre"
    x = prompt_activations(chat_model, chat_tokenizer, prompts, hook, reduce=reduce, batch_size=3)
    assert x.shape == (4, 32)
    probe = fit_probe(x[:2], x[2:])
    probe.save(tmp_path / "probe.safetensors", {"hook": hook})
    loaded, meta = ProjectionScorer.load(tmp_path / "probe.safetensors")
    assert meta["hook"] == hook and loaded.bias == probe.bias and torch.equal(loaded.weight, probe.weight)
    gate = Gate(loaded, 0.0, hook, reduce=reduce)
    # the probe's score of the pooled activation equals the gate's reduced token scores (linear reductions)
    s = prompt_scores(chat_model, chat_tokenizer, prompts, gate, batch_size=2)
    torch.testing.assert_close(s, loaded.token_scores(x), atol=1e-4, rtol=1e-4)
    assert (s[:2] > 0).all() and (s[2:] <= 0).all()  # the probe separates what it was fit on
    (tmp_path / "bad.safetensors").write_bytes(b"not a probe")
    with pytest.raises(SaesteerError, match="not a saesteer probe file"):
        ProjectionScorer.load(tmp_path / "bad.safetensors")
