"""Fixtures for steering tests: tiny random Qwen2 models and tiny random SAEs (fp32)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from tests.steering.helpers import VOCAB, tiny_model


@pytest.fixture
def model() -> transformers.PreTrainedModel:
    return tiny_model()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Three left-padded rows of lengths 7, 4 and 6."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def chat_model(qwen_tokenizer: Any) -> transformers.PreTrainedModel:
    """A tiny random Qwen2 with the real tokenizer's vocabulary (d_model 32)."""
    return tiny_model(seed=3, vocab=len(qwen_tokenizer), hidden=32, layers=3)


@pytest.fixture
def chat_tokenizer(qwen_tokenizer: Any) -> Any:
    return qwen_tokenizer
