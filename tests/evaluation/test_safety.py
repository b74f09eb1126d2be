"""Safety evaluation on a tiny random Qwen2 chat model: rates, intervals, steering, and the resumable cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.evaluation.datasets import load_prompts
from saesteer.evaluation.judges import KeywordJudge
from saesteer.evaluation.safety import (
    BUILTIN_SETS,
    DATA_SETS,
    CompletionCache,
    SafetyConfig,
    cache_key,
    complete,
    refusal_rate,
    safety_suite,
)
from saesteer.evaluation.stats import wilson
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import GenerationConfig, generate

GEN = GenerationConfig(max_new_tokens=3, batch_size=2)


class PrefillCounter:
    """Counts prefill forward passes (sequence length > 1), i.e. generated batches."""

    def __init__(self, model: Any):
        self.n = 0
        self.handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, _m: Any, _args: Any, kwargs: dict[str, Any], _out: Any) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            self.n += 1


def test_refusal_rate_generates_judges_and_scores(tiny_qwen_chat: tuple[Any, Any]) -> None:
    model, tok = tiny_qwen_chat
    prompts = load_prompts("builtin_harmful", n=5, seed=1)
    judge = KeywordJudge(patterns=[r"[a-m]"])  # an arbitrary but deterministic verdict on random text
    res = refusal_rate(model, tok, prompts, judge, GEN)
    direct = generate(model, tok, [p.text for p in prompts], GEN)
    assert res.completions == direct
    assert res.refusals == judge.judge([p.text for p in prompts], direct)
    assert res.n == 5 and res.k == sum(res.refusals)
    assert (res.rate, res.lo, res.hi) == wilson(res.k, 5)
    assert res.prompt_ids == [p.id for p in prompts] and res.judge == "keyword"
    assert set(res.to_dict()) >= {"n", "k", "rate", "lo", "hi"} and "completions" not in res.to_dict()
    # plain strings work too
    assert refusal_rate(model, tok, ["hello there"], judge, GEN).n == 1
    with pytest.raises(SaesteerError, match="empty"):
        refusal_rate(model, tok, [], judge, GEN)


def test_cache_resumes_without_regenerating(tiny_qwen_chat: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny_qwen_chat
    prompts = load_prompts("builtin_xsafe", n=5, seed=0)
    path = tmp_path / "completions.jsonl"
    key = cache_key("tiny", "xsafe", GEN)
    counter = PrefillCounter(model)
    # an "interrupted" run: only the first three prompts were generated (two batches)
    first = complete(model, tok, prompts[:3], GEN, CompletionCache(path), key)
    assert counter.n == 2
    with open(path, "a") as fh:
        fh.write('{"key": "torn')  # a run killed mid-write leaves a torn last line
    cache = CompletionCache(path)
    assert len(cache) == 3
    counter.n = 0
    full = complete(model, tok, prompts, GEN, cache, key)
    assert counter.n == 1 and full[:3] == first  # only the two missing prompts, one batch
    counter.n = 0
    again = complete(model, tok, prompts, GEN, CompletionCache(path), key)
    assert counter.n == 0 and again == full
    assert full == generate(model, tok, [p.text for p in prompts], GEN)
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    assert {r["prompt_id"] for r in recs} == {p.id for p in prompts}
    counter.handle.remove()


def test_cache_key_separates_model_set_config_and_steering() -> None:
    base = cache_key("m", "s", GEN)
    assert base == cache_key("m", "s", GenerationConfig(max_new_tokens=3, batch_size=7))  # batch size not in key
    others = {
        cache_key("m2", "s", GEN),
        cache_key("m", "s2", GEN),
        cache_key("m", "s", GEN, "clamp-5"),
        cache_key("m", "s", GenerationConfig(max_new_tokens=4, batch_size=2)),
    }
    assert base not in others and len(others) == 4


def test_steered_model_is_evaluated_as_given(tiny_qwen_chat: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny_qwen_chat
    prompts = load_prompts("builtin_harmless", n=4, seed=2)
    cache = CompletionCache(tmp_path / "c.jsonl")
    plain = refusal_rate(model, tok, prompts, "keyword", GEN, cache, model_id="tiny")
    torch.manual_seed(0)
    push = torch.randn(model.config.hidden_size) * 50
    handle = ArchAdapter(model).add_hook("blocks.1.hook_resid_post", lambda x: x + push.to(x.dtype))
    try:
        steered = refusal_rate(model, tok, prompts, "keyword", GEN, cache, model_id="tiny", steering_id="push50")
        cached_plain = refusal_rate(model, tok, prompts, "keyword", GEN, cache, model_id="tiny")
    finally:
        handle.remove()
    assert steered.completions != plain.completions  # a new steering id is generated, not read from the cache
    assert cached_plain.completions == plain.completions  # the unsteered key is served from the cache


def test_safety_suite_builtin_without_data(tiny_qwen_chat: tuple[Any, Any], no_data_dir: None) -> None:
    model, tok = tiny_qwen_chat
    suite = safety_suite(model, tok, SafetyConfig(n=2), GEN)
    assert list(suite.results) == BUILTIN_SETS
    assert [r.side for r in suite.results.values()] == ["unsafe", "safe", "safe"]
    assert all(r.n == 2 for r in suite.results.values())
    rows = suite.rows()
    assert [r["name"] for r in rows][-2:] == ["unsafe (pooled)", "safe (pooled)"]
    safe = suite.pooled("safe")
    assert safe.n == 4 and safe.k == suite.results["builtin_xsafe"].k + suite.results["builtin_harmless"].k


def test_safety_suite_data_sets_and_sizes(tiny_qwen_chat: tuple[Any, Any], tiny_data_dir: Path) -> None:
    model, tok = tiny_qwen_chat
    cfg = SafetyConfig(data_dir=str(tiny_data_dir), alpaca_n=3)
    sets = ["xstest_unsafe", "xstest_safe", "alpaca"]
    cfg.sets = sets
    suite = safety_suite(model, tok, cfg, GenerationConfig(max_new_tokens=2, batch_size=8))
    assert {k: r.n for k, r in suite.results.items()} == {"xstest_unsafe": 4, "xstest_safe": 6, "alpaca": 3}
    assert suite.pooled("unsafe").n == 4 and suite.pooled("safe").n == 9
    from saesteer.evaluation.safety import default_sets

    assert default_sets(str(tiny_data_dir)) == DATA_SETS
    with pytest.raises(SaesteerError, match="unknown safety set 'wildguard'"):
        safety_suite(model, tok, SafetyConfig(sets=["xstest_safe", "wildguard"], data_dir=str(tiny_data_dir)), GEN)
