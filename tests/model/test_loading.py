import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.model.loading import MARKER, _cache_valid, load, resolve_dtype, resolve_source
from tests.conftest import tiny_model


def test_unknown_and_missing_specs(tmp_path: Path) -> None:
    with pytest.raises(SaesteerError, match="unknown model spec"):
        resolve_source("not a model", tmp_path)
    with pytest.raises(SaesteerError, match="empty model spec"):
        resolve_source("  ", tmp_path)
    with pytest.raises(SaesteerError, match="GGUF file .* not found"):
        resolve_source(str(tmp_path / "missing.gguf"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaesteerError, match="no config.json"):
        resolve_source(str(tmp_path / "empty"), tmp_path)


def test_dtype_and_device_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) in (torch.bfloat16, torch.float32)
    with pytest.raises(SaesteerError, match="unknown dtype"):
        resolve_dtype("int3", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(SaesteerError, match="CUDA is not available"):
            load("default", device="cuda")


def test_local_dir_loads(tmp_path: Path, qwen_tokenizer) -> None:
    model = tiny_model("qwen2", vocab_size=len(qwen_tokenizer))
    model.save_pretrained(tmp_path / "m")
    qwen_tokenizer.save_pretrained(tmp_path / "m")
    lm = load(str(tmp_path / "m"), dtype="fp32", device="cpu")
    assert lm.model.config.model_type == "qwen2"
    assert lm.tokenizer.padding_side == "left"
    assert lm.dtype == torch.float32


def _load_smol(cache: str) -> str:
    lm = load("smollm2-135m", dtype="fp32", device="cpu", cache_dir=cache)
    return lm.source


@pytest.mark.slow
def test_gguf_cache_concurrent_build_and_corruption(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    try:
        from saesteer.model.registry import smollm2_model

        smollm2_model()
    except SaesteerError as exc:
        pytest.skip(str(exc))
    cache = str(tmp_path / "cache")
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:  # two processes converting at once
        sources = pool.map(_load_smol, [cache, cache])
    assert sources[0] == sources[1]
    entry = Path(sources[0])
    assert _cache_valid(entry)
    assert json.loads((entry / MARKER).read_text())["source"] == "smollm2-135m"
    # corrupt one byte of the weights: detected and rebuilt, never used
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert not _cache_valid(entry)
    lm = load("smollm2-135m", dtype="fp32", device="cpu", cache_dir=cache)
    assert _cache_valid(entry)
    assert lm.model.config.model_type == "llama"
