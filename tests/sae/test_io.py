"""SAELens-layout files: round trips, the config flavours of SAELens releases, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saesteer.errors import SaesteerError
from saesteer.sae.io import CFG_FILE, WEIGHTS_FILE, load_sae, save_sae
from tests.sae.conftest import random_sae

ARCHS = ["topk", "relu", "jumprelu"]


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_keeps_weights_config_and_outputs(arch: str, tmp_path: Path) -> None:
    sae = random_sae(arch)
    save_sae(sae, tmp_path / "s")
    back = load_sae(tmp_path / "s")
    assert type(back) is type(sae)
    assert back.cfg.hook_name == "blocks.1.hook_resid_post" and back.cfg.model_name == "tiny"
    assert back.cfg.k == sae.cfg.k and back.cfg.apply_b_dec_to_input
    for name, p in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], p), name
    x = torch.randn(10, 16)
    assert torch.equal(back.encode(x), sae.encode(x))
    raw = json.loads((tmp_path / "s" / CFG_FILE).read_text())
    assert raw["architecture"] == {"relu": "standard"}.get(arch, arch)
    assert raw["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert raw["metadata"]["sae_lens_version"].startswith("6")


def test_load_casts_dtype_and_device(tmp_path: Path) -> None:
    save_sae(random_sae("topk"), tmp_path)
    sae = load_sae(tmp_path, dtype="bfloat16")
    assert sae.W_enc.dtype == torch.bfloat16 and sae.cfg.dtype == "bfloat16"


def _write(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CFG_FILE).write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))
    return folder


def _weights(d_in: int = 16, d_sae: int = 64, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }


def test_old_flat_topk_config_with_activation_fn_kwargs(tmp_path: Path) -> None:
    """Pre-6 SAELens: flat hook_point / hook_layer, activation_fn_str topk with activation_fn_kwargs.k."""
    cfg = {
        "architecture": "standard",
        "d_in": 16,
        "d_sae": 64,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_point": "blocks.3.hook_resid_pre",
        "hook_layer": 3,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 5},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "sae_lens_training_version": "3.13.0",
    }
    w = _weights()
    sae = load_sae(_write(tmp_path, cfg, w))
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 5
    assert sae.cfg.hook_name == "blocks.3.hook_resid_pre" and sae.cfg.hook_layer == 3
    assert sae.cfg.model_name == "gpt2-small"
    x = torch.randn(7, 16)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    v, i = pre.topk(5, dim=-1)
    want = torch.zeros_like(pre).scatter(-1, i, v.relu())
    torch.testing.assert_close(sae.encode(x), want)


def test_gemma_scope_style_jumprelu_with_log_threshold(tmp_path: Path) -> None:
    """Gemma Scope as SAELens writes it: flat keys, jumprelu, apply_b_dec_to_input false, normalize null."""
    cfg = {
        "architecture": "jumprelu",
        "d_in": 16,
        "d_sae": 64,
        "dtype": "float32",
        "model_name": "gemma-2-2b",
        "hook_name": "blocks.12.hook_resid_post",
        "hook_head_index": None,
        "activation_fn": "relu",
        "finetuning_scaling_factor": False,
        "prepend_bos": True,
        "context_size": 1024,
        "apply_b_dec_to_input": False,
        "normalize_activations": None,
    }
    w = _weights()
    thr = torch.rand(64) * 0.5 + 0.05
    sae = load_sae(_write(tmp_path, cfg, {**w, "log_threshold": thr.log()}))
    assert sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input
    torch.testing.assert_close(sae.threshold, thr)  # type: ignore[arg-type]
    x = torch.randn(9, 16)
    pre = x @ w["W_enc"] + w["b_enc"]
    torch.testing.assert_close(sae.encode(x), pre * (pre > thr) * (pre > 0))


def test_llama_scope_scalar_threshold_and_scaling_factor(tmp_path: Path) -> None:
    cfg = {
        "architecture": "jumprelu",
        "jump_relu_threshold": 0.25,
        "d_in": 16,
        "d_sae": 64,
        "dtype": "bfloat16",
        "model_name": "meta-llama/Llama-3.1-8B",
        "hook_name": "blocks.0.hook_resid_post",
        "apply_b_dec_to_input": False,
        "normalize_activations": "expected_average_only_in",
    }
    w = _weights()
    scaling = torch.rand(64) + 0.5
    sae = load_sae(_write(tmp_path, cfg, {**w, "scaling_factor": scaling}), dtype="float32")
    assert torch.equal(sae.threshold, torch.full((64,), 0.25))  # type: ignore[arg-type]
    z = torch.rand(3, 64)
    torch.testing.assert_close(sae.decode(z), (z * scaling) @ w["W_dec"] + w["b_dec"])


def test_saelens6_topk_rescale_by_decoder_norm_is_folded(tmp_path: Path) -> None:
    cfg = {
        "architecture": "topk",
        "d_in": 16,
        "d_sae": 64,
        "k": 6,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": True,
        "metadata": {"model_name": "m", "hook_name": "blocks.2.hook_resid_post", "sae_lens_version": "6.5.0"},
    }
    w = _weights()
    sae = load_sae(_write(tmp_path, cfg, w))
    x = torch.randn(11, 16)
    norms = w["W_dec"].norm(dim=1)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms
    v, i = pre.topk(6, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, i, v.relu())
    want = (acts / norms) @ w["W_dec"] + w["b_dec"]  # SAELens' decode with rescaling
    torch.testing.assert_close(sae(x), want, rtol=1e-5, atol=1e-5)
    assert sae.cfg.hook_name == "blocks.2.hook_resid_post"


def test_missing_files_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SaesteerError, match="not found"):
        load_sae(tmp_path / "nope")
    save_sae(random_sae("relu"), tmp_path / "s")
    (tmp_path / "s" / WEIGHTS_FILE).unlink()
    with pytest.raises(SaesteerError, match=f"lacks {WEIGHTS_FILE}"):
        load_sae(tmp_path / "s")


def test_shape_mismatch_nan_and_unknown_architecture(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    save_sae(random_sae("topk"), folder)
    raw = json.loads((folder / CFG_FILE).read_text())
    (folder / CFG_FILE).write_text(json.dumps({**raw, "d_in": 32}))
    with pytest.raises(
        SaesteerError, match=r"W_(enc|dec) has shape .* the config and weights belong to different SAEs"
    ):
        load_sae(folder)
    (folder / CFG_FILE).write_text(json.dumps({**raw, "architecture": "gated"}))
    with pytest.raises(SaesteerError, match="unsupported SAE architecture 'gated'"):
        load_sae(folder)
    (folder / CFG_FILE).write_text("{not json")
    with pytest.raises(SaesteerError, match="not valid JSON"):
        load_sae(folder)
    (folder / CFG_FILE).write_text(json.dumps(raw))
    w = load_file(str(folder / WEIGHTS_FILE))
    w["W_dec"][3, 2] = float("nan")
    save_file(w, str(folder / WEIGHTS_FILE))
    with pytest.raises(SaesteerError, match="NaN or inf"):
        load_sae(folder)
    (folder / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(SaesteerError, match="unreadable"):
        load_sae(folder)


def test_save_leaves_no_temp_files(tmp_path: Path) -> None:
    save_sae(random_sae("jumprelu"), tmp_path)
    save_sae(random_sae("jumprelu", seed=3), tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [CFG_FILE, WEIGHTS_FILE]
