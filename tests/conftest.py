"""Shared fixtures: tiny random models of each supported architecture, the default model's tokenizer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny test models gain nothing from intra-op threads, and on a shared 2-core machine spinning
# OpenMP threads slow every process down; SAESTEER_TEST_THREADS overrides
torch.set_num_threads(int(os.environ.get("SAESTEER_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]

# model_type -> (config class, kwargs) for tiny random models built without any download
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "mistral": ("MistralConfig", {}),
    "gemma2": ("Gemma2Config", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "phi3": ("Phi3Config", {"pad_token_id": 0}),
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 4, "n_head": 4, "n_positions": 256}),
    "gpt_neox": ("GPTNeoXConfig", {}),
}
COMMON = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
}


def tiny_model(model_type: str, vocab_size: int = 512, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A tiny randomly initialised causal LM of ``model_type``."""
    cls_name, extra = TINY_CONFIGS[model_type]
    cls = getattr(transformers, cls_name)
    kwargs = {} if model_type == "gpt2" else dict(COMMON)
    if model_type == "gpt_neox":
        kwargs.pop("num_key_value_heads")
    kwargs.update(extra)
    cfg = cls(vocab_size=vocab_size, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    return model


@pytest.fixture(params=sorted(TINY_CONFIGS))
def any_tiny_model(request: pytest.FixtureRequest) -> Any:
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The cached safetensors copy of the default model (converted once per machine)."""
    from saesteer.model.loading import cached_from_gguf, default_cache_dir
    from saesteer.model.registry import default_model

    return cached_from_gguf(default_model(), default_cache_dir())


@pytest.fixture(scope="session")
def qwen_tokenizer(default_model_dir: Path) -> Any:
    """The default model's real tokenizer (chat template, eos <|im_end|>), left padding."""
    from saesteer.model.loading import prepare_tokenizer

    tok = transformers.AutoTokenizer.from_pretrained(str(default_model_dir))
    prepare_tokenizer(tok)
    return tok


@pytest.fixture
def tiny_qwen_chat(qwen_tokenizer: Any) -> tuple[Any, Any]:
    """A tiny random Qwen2 model sharing the real tokenizer's vocabulary, fp32."""
    model = tiny_model("qwen2", vocab_size=len(qwen_tokenizer))
    model.generation_config.eos_token_id = qwen_tokenizer.eos_token_id
    model.generation_config.pad_token_id = qwen_tokenizer.pad_token_id
    return model, qwen_tokenizer


def interop_import(module: str) -> Any:
    """Import an interop anchor (sae_lens, lm_eval): skipped where it isn't installed, an error in CI.

    ``scripts/test.sh`` installs the anchors and sets ``SAESTEER_REQUIRE_INTEROP=1``, so there a missing
    anchor fails the run instead of silently skipping the equality tests.
    """
    if os.environ.get("SAESTEER_REQUIRE_INTEROP") == "1":
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)
