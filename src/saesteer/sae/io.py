"""Save and load SAEs in SAELens' folder layout: ``cfg.json`` + ``sae_weights.safetensors``.

Written files follow SAELens 6 (``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``k``, and a
``metadata`` block with ``model_name`` / ``hook_name``), so ``sae_lens.SAE.load_from_disk`` reads
them. Reading also accepts the older flat configs that SAELens releases ship (``hook_point`` /
``hook_name``, ``hook_layer``, ``activation_fn_str`` / ``activation_fn`` with
``activation_fn_kwargs.k``, ``architecture: standard``), a ``log_threshold`` instead of
``threshold``, a scalar ``jump_relu_threshold`` (Llama Scope), a ``scaling_factor`` tensor
(folded into the decoder) and ``rescale_acts_by_decoder_norm`` (folded into the weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from saesteer.config import atomic_write_bytes, atomic_write_json
from saesteer.errors import SaesteerError
from saesteer.sae.base import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
# SAELens names <-> ours; SAELens calls the plain ReLU SAE "standard".
_TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
_FROM_SAELENS = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu", "jump_relu": "jumprelu"}
_DTYPES = {
    "float32": torch.float32, "torch.float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "torch.bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "torch.float16": torch.float16, "fp16": torch.float16,
    "float64": torch.float64, "torch.float64": torch.float64,
}  # fmt: skip
# The SAELens format version our cfg.json follows (it reads configs without one as pre-6 files).
SAELENS_FORMAT_VERSION = "6.0.0"


def dtype_from_str(name: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``"torch.bfloat16"`` / ``"bf16"`` -> ``torch.bfloat16`` (and so on)."""
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise SaesteerError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return _DTYPES[name]


def dtype_to_str(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------- save


def sae_cfg_dict(sae: SAE) -> dict[str, Any]:
    """The SAELens-6 ``cfg.json`` content for ``sae``."""
    cfg = sae.cfg
    meta: dict[str, Any] = {
        "model_name": cfg.model_name or None,
        "hook_name": cfg.hook_name or None,
        "hook_head_index": None,
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": SAELENS_FORMAT_VERSION,
        "written_by": "saesteer",
    }
    for key, value in cfg.metadata.items():
        meta.setdefault(key, value)
    out: dict[str, Any] = {
        "architecture": _TO_SAELENS[cfg.architecture],
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": dtype_to_str(sae.W_enc.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": meta,
    }
    if cfg.architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    return out


def save_sae(sae: SAE, path: str | os.PathLike[str]) -> Path:
    """Write ``sae`` to folder ``path`` (created) as ``cfg.json`` + ``sae_weights.safetensors``, atomically.

    The weights are written first and the config last, so a folder with a ``cfg.json`` is complete.
    """
    if sae.cfg.architecture not in _TO_SAELENS:
        raise SaesteerError(f"cannot save architecture {sae.cfg.architecture!r}; savable: {', '.join(_TO_SAELENS)}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in sae.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    atomic_write_json(out / CFG_FILE, sae_cfg_dict(sae))
    return out


# ---------------------------------------------------------------------------------------- load


def _read_cfg(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise SaesteerError(f"SAE folder {folder} not found; pass a folder holding {CFG_FILE} and {WEIGHTS_FILE}")
    missing = [n for n in (CFG_FILE, WEIGHTS_FILE) if not (folder / n).is_file()]
    if missing:
        raise SaesteerError(
            f"SAE folder {folder} lacks {' and '.join(missing)}; an SAELens-format SAE needs {CFG_FILE} and {WEIGHTS_FILE}"
        )
    try:
        data = json.loads((folder / CFG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SaesteerError(f"{folder / CFG_FILE} is not valid JSON ({exc}); re-save or re-download the SAE") from None
    if not isinstance(data, dict):
        raise SaesteerError(f"{folder / CFG_FILE} must hold a JSON object")
    return data


def _architecture(raw: dict[str, Any]) -> tuple[str, int | None]:
    """(our architecture name, k) from either config flavour."""
    act = raw.get("activation_fn") or raw.get("activation_fn_str")
    kwargs = raw.get("activation_fn_kwargs") or {}
    arch = str(raw.get("architecture") or "standard").lower()
    k = raw.get("k", kwargs.get("k"))
    if act == "topk" and arch in ("standard", "topk"):
        arch = "topk"
    if arch not in _FROM_SAELENS:
        raise SaesteerError(f"unsupported SAE architecture {arch!r}; saesteer loads {', '.join(sorted(_FROM_SAELENS))}")
    ours = _FROM_SAELENS[arch]
    if ours == "topk" and k is None:
        raise SaesteerError("Top-k SAE config has no k (neither 'k' nor activation_fn_kwargs.k); add it to cfg.json")
    return ours, (int(k) if k is not None else None)


def config_from_saelens(raw: dict[str, Any]) -> SAEConfig:
    """Our :class:`SAEConfig` from a SAELens ``cfg.json`` dict (SAELens 6 or older flat keys)."""
    for key in ("d_in", "d_sae"):
        if not isinstance(raw.get(key), int):
            raise SaesteerError(f"SAE cfg.json lacks an integer {key!r}; it is not an SAELens SAE config")
    meta = dict(raw.get("metadata") or {})
    arch, k = _architecture(raw)
    norm = raw.get("normalize_activations")
    if norm in ("layer_norm", "constant_norm_rescale", "covariance_whitening"):
        raise SaesteerError(
            f"SAE normalizes its input at run time ({norm!r}); saesteer supports only SAEs with this folded in "
            "(normalize_activations none / expected_average_only_in)"
        )
    if raw.get("reshape_activations") == "hook_z":
        raise SaesteerError("SAE reads attention hook_z (reshape_activations hook_z); saesteer steers residual SAEs")
    hook_name = meta.get("hook_name") or raw.get("hook_name") or raw.get("hook_point") or ""
    model_name = meta.get("model_name") or raw.get("model_name") or ""
    extra = {k2: v for k2, v in meta.items() if k2 not in ("hook_name", "model_name")}
    return SAEConfig(
        architecture=arch,
        d_in=int(raw["d_in"]),
        d_sae=int(raw["d_sae"]),
        k=k,
        hook_name=str(hook_name),
        model_name=str(model_name),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        dtype=dtype_to_str(dtype_from_str(raw.get("dtype") or "float32")),
        metadata=extra,
    )


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(folder / WEIGHTS_FILE)
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaesteerError(f"{folder / WEIGHTS_FILE} is unreadable ({exc}); re-save or re-download the SAE") from None


def _normalise_state(raw: dict[str, Any], cfg: SAEConfig, state: dict[str, torch.Tensor], where: Path) -> None:
    """Bring SAELens variants to our parameter set, in place, in float32."""
    for name in list(state):
        state[name] = state[name].float()
    if "log_threshold" in state:
        state["threshold"] = state.pop("log_threshold").exp()
    if cfg.architecture == "jumprelu" and "threshold" not in state:
        if raw.get("jump_relu_threshold") is None:
            raise SaesteerError(f"JumpReLU SAE in {where} has no threshold tensor nor jump_relu_threshold")
        state["threshold"] = torch.full((cfg.d_sae,), float(raw["jump_relu_threshold"]))
    for name in ("scaling_factor", "finetuning_scaling_factor"):
        if name in state:  # SAELens decodes (acts * scaling_factor) @ W_dec
            state["W_dec"] = state["W_dec"] * state.pop(name).reshape(-1, 1)
    if cfg.architecture == "topk" and raw.get("rescale_acts_by_decoder_norm"):
        norms = state["W_dec"].norm(dim=1).clamp_min(1e-8)
        state["W_enc"] = state["W_enc"] * norms
        state["b_enc"] = state["b_enc"] * norms
        state["W_dec"] = state["W_dec"] / norms[:, None]


def load_sae(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> SAE:
    """Load an SAELens-layout SAE folder (ours, or a saved SAELens release) as a saesteer :class:`SAE`.

    ``dtype`` defaults to the dtype named in ``cfg.json``. Raises :class:`SaesteerError` for a missing
    file, an unknown architecture, a weight whose shape does not fit ``d_in`` / ``d_sae``, or NaN/inf weights.
    """
    folder = Path(path)
    raw = _read_cfg(folder)
    cfg = config_from_saelens(raw)
    state = _read_weights(folder)
    want = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}
    missing = [n for n in want if n not in state]
    if missing:
        raise SaesteerError(f"{folder / WEIGHTS_FILE} lacks {', '.join(missing)}; it is not an SAELens SAE")
    _normalise_state(raw, cfg, state, folder)
    want["threshold"] = (cfg.d_sae,)
    for name, tensor in state.items():
        if name in want and tuple(tensor.shape) != want[name]:
            raise SaesteerError(
                f"{folder / WEIGHTS_FILE}: {name} has shape {tuple(tensor.shape)} but cfg.json (d_in={cfg.d_in}, "
                f"d_sae={cfg.d_sae}) needs {want[name]}; the config and weights belong to different SAEs"
            )
        if not torch.isfinite(tensor).all():
            raise SaesteerError(f"{folder / WEIGHTS_FILE}: {name} holds NaN or inf values; the SAE is corrupt")
    sae = SAE.from_config(cfg)
    own = set(sae.state_dict())
    unknown = sorted(set(state) - own)
    if unknown:
        raise SaesteerError(
            f"{folder / WEIGHTS_FILE} has tensors {', '.join(unknown)} that a {cfg.architecture} SAE does not use"
        )
    sae.load_state_dict(state, strict=True)
    target = dtype_from_str(dtype if dtype is not None else cfg.dtype)
    sae.cfg.dtype = dtype_to_str(target)
    return sae.to(device=device, dtype=target).eval()


def is_sae_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like an SAELens-layout SAE folder."""
    p = Path(path)
    return (p / CFG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()
