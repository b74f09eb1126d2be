"""Helpers for steering tests: tiny random Qwen2 models and tiny random SAEs (fp32)."""

from __future__ import annotations

import torch
import transformers

from saesteer.sae.base import SAE, SAEConfig

D_MODEL = 64
VOCAB = 128


def tiny_model(
    seed: int = 0, vocab: int = VOCAB, hidden: int = D_MODEL, layers: int = 4
) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        vocab_size=vocab,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def tiny_sae(
    arch: str = "topk",
    layer: int = 2,
    d_sae: int = 256,
    k: int | None = 16,
    seed: int = 0,
    hook_kind: str = "resid_post",
    d_in: int = D_MODEL,
) -> SAE:
    torch.manual_seed(seed)
    cfg = SAEConfig(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        k=k if arch == "topk" else None,
        hook_name=f"blocks.{layer}.hook_{hook_kind}",
    )
    sae = SAE.from_config(cfg)
    with torch.no_grad():  # random encoder/biases so latents differ from token to token
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.05)
        if arch == "jumprelu":
            sae.threshold.uniform_(0.0, 0.3)
    return sae.eval()
