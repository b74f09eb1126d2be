"""Steering through lm-evaluation-harness: HFLM given the (steered) model instance."""

from __future__ import annotations

from typing import Any

import pytest

from saesteer.steering import ClampFeature, ScaleFeature, Steering
from tests.conftest import interop_import
from tests.steering.helpers import tiny_sae

lm_eval = interop_import("lm_eval")


def test_hflm_loglikelihood_sees_steering(chat_model: Any, qwen_tokenizer: Any) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=chat_model, tokenizer=qwen_tokenizer, device="cpu", batch_size=2)
    reqs = [
        Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=i)
        for i, (ctx, cont) in enumerate(
            [("The capital of France is", " Paris"), ("2 + 2 =", " 4"), ("Once upon a", " time")]
        )
    ]
    base = [ll for ll, _ in lm.loglikelihood(reqs)]
    sae = tiny_sae("topk", 1, d_in=32)
    with Steering(chat_model, sae, [ScaleFeature(3, 1.0)]).apply():
        same = [ll for ll, _ in lm.loglikelihood(reqs)]
    with Steering(chat_model, sae, [ClampFeature(3, 30.0)]).apply():
        steered = [ll for ll, _ in lm.loglikelihood(reqs)]
    assert same == pytest.approx(base, rel=1e-5)
    assert all(abs(a - b) > 1e-3 for a, b in zip(steered, base, strict=True))
