"""Fixtures for gating tests: a tiny random Qwen2 with the real tokenizer's vocabulary and chat template."""

from __future__ import annotations

from typing import Any

import pytest
import transformers

from tests.steering.helpers import tiny_model


@pytest.fixture
def chat_model(qwen_tokenizer: Any) -> transformers.PreTrainedModel:
    """d_model 32, 3 layers, fp32."""
    return tiny_model(seed=3, vocab=len(qwen_tokenizer), hidden=32, layers=3)
