"""Fixtures for feature-discovery tests: a tiny random Qwen2 chat model with the real tokenizer, tiny Top-k SAEs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from saesteer.sae.base import SAE, SAEConfig

D_MODEL = 32
N_LAYERS = 3


def make_model(vocab: int, seed: int = 0, hidden: int = D_MODEL, layers: int = N_LAYERS) -> Any:
    """A tiny random fp32 Qwen2 with ``vocab`` tokens."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        vocab_size=vocab,
        max_position_embeddings=512,
    )
    return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def make_sae(layer: int = 1, d_sae: int = 96, k: int = 8, seed: int = 0, d_in: int = D_MODEL) -> SAE:
    """A tiny random Top-k SAE at ``blocks.{layer}.hook_resid_post``."""
    torch.manual_seed(seed)
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, hook_name=f"blocks.{layer}.hook_resid_post")
    sae = SAE.from_config(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.1)
    return sae.eval()


@pytest.fixture
def chat(qwen_tokenizer: Any) -> tuple[Any, Any]:
    """(tiny model, real tokenizer); generation stops at the tokenizer's EOS."""
    model = make_model(len(qwen_tokenizer))
    model.generation_config.eos_token_id = qwen_tokenizer.eos_token_id
    model.generation_config.pad_token_id = qwen_tokenizer.pad_token_id
    return model, qwen_tokenizer


@pytest.fixture
def sae() -> SAE:
    return make_sae()
