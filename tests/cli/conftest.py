"""A workspace on disk for CLI tests: a tiny chat model, a matching SAE, a direction and an activation cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.activations.store import write_manifest, write_shard
from saesteer.sae.io import save_sae
from saesteer.steering import RefusalDirection
from tests.sae.conftest import SparseSource
from tests.steering.helpers import tiny_model, tiny_sae

D = 32


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer: Any) -> Path:
    """model/ (3-layer Qwen2, d_model 32, the real tokenizer), sae/ (layer 1), dir.safetensors, acts/, prompts."""
    root = tmp_path_factory.mktemp("cli-ws")
    tiny_model(seed=3, vocab=len(qwen_tokenizer), hidden=D, layers=3).save_pretrained(root / "model")
    qwen_tokenizer.save_pretrained(root / "model")
    save_sae(tiny_sae("topk", 1, d_in=D), root / "sae")
    RefusalDirection(
        torch.randn(D, generator=torch.Generator().manual_seed(0)) * 30, "blocks.1.hook_resid_pre", torch.zeros(1, D)
    ).save(root / "dir.safetensors")
    src = SparseSource(d=D, batch=256)
    shards = [write_shard(root / "acts", i, b) for i, b in zip(range(2), src.batches(), strict=False)]
    write_manifest(
        root / "acts", {"model": "tiny", "hook_name": "blocks.1.hook_resid_post", "d_model": D, "shards": shards}
    )
    (root / "harmless.txt").write_text("Write a poem\nWhat is 2+2?\nName a colour\nhello\n")
    (root / "bad.jsonl").write_text('{"prompt": "hi"}\n{not json\n')
    (root / "nokey.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
    (root / "a_file.txt").write_text("not a folder\n")
    (root / "empty_dir").mkdir()
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file (content hash) and folder under ``root``."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


MODEL_FLAGS = ["--dtype", "fp32", "--device", "cpu"]
