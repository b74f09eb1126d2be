"""One gate, one file: safetensors with the scorer's tensors and a JSON header that says how to use them.

Tensors: ``weight`` and ``bias`` (and, for a probe on SAE latents, ``features``). The metadata key
``gate`` holds JSON: ``scorer`` (``linear``: ``x . w + b`` on the residual stream; ``latent_probe``:
``z_S(x) . w + b`` on SAE latents ``S``), ``hook``, the position rule and its gate reduction
(``reduce``, ``tail``, ``offset``), ``threshold``, ``variant``, the SAE (path and sha256 of its
weights) where one is needed, and ``provenance``: model, data sets with the sha256 of their prompts,
the threshold objective and the dev metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from saesteer.config import atomic_write_bytes
from saesteer.errors import SaesteerError
from saesteer.sae.base import SAE
from saesteer.steering.gate import Gate, LatentProbeScorer, ProjectionScorer, read_tagged_safetensors

FORMAT = "saesteer.gate.v1"
SCORERS = ("linear", "latent_probe")


def prompts_sha256(prompts: list[Any]) -> str:
    """sha256 of a prompt list (JSON, in order): names exactly which prompts a gate was fit on."""
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sae_weights_file(sae_dir: str | os.PathLike[str]) -> Path:
    p = Path(sae_dir) / "sae_weights.safetensors"
    if not p.is_file():
        raise SaesteerError(f"{p} not found; give the SAE folder (SAELens layout) the gate was fit with")
    return p


def save_gate(
    path: str | os.PathLike[str],
    gate: Gate,
    *,
    position_rule: str = "",
    variant: str = "",
    sae_dir: str | os.PathLike[str] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``gate`` (a linear or latent-probe scorer) as one safetensors file, atomically."""
    from safetensors.torch import save

    sc = gate.scorer
    head: dict[str, Any] = {
        "hook": gate.hook,
        "reduce": gate.reduce,
        "tail": gate.tail,
        "offset": gate.offset,
        "position_rule": position_rule,
        "threshold": gate.threshold,
        "variant": variant,
        "provenance": provenance or {},
    }
    tensors = {"weight": sc.weight.detach().float().contiguous().clone(), "bias": torch.tensor([float(sc.bias)])}
    if isinstance(sc, LatentProbeScorer):
        if sae_dir is None:
            raise SaesteerError("saving a latent-probe gate needs sae_dir, the SAE folder it reads")
        head["scorer"] = "latent_probe"
        head["sae"] = {"path": str(Path(sae_dir).resolve()), "sha256": file_sha256(sae_weights_file(sae_dir))}
        tensors["features"] = torch.tensor(sc.features, dtype=torch.int64)
    elif isinstance(sc, ProjectionScorer):
        head["scorer"] = "linear"
    else:
        raise SaesteerError(f"cannot save a gate with a {type(sc).__name__}; use a linear or latent-probe scorer")
    p = Path(path)
    atomic_write_bytes(p, save(tensors, {"format": FORMAT, "gate": json.dumps(head)}))
    return p


def read_gate_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, tensors) of a gate file; a one-line error for anything else."""
    p = Path(path)
    bad = f"{p} is not a saesteer gate file; make one with saesteer fit-gate"
    missing = f"gate file {p} not found; make one with `saesteer fit-gate --out {p.name}`"
    meta, tensors = read_tagged_safetensors(p, FORMAT, bad, missing)
    try:
        head = json.loads(meta["gate"])
    except (KeyError, json.JSONDecodeError):
        raise SaesteerError(bad) from None
    if head.get("scorer") not in SCORERS or "weight" not in tensors or "bias" not in tensors:
        raise SaesteerError(bad)
    return head, tensors


def load_gate(path: str | os.PathLike[str], sae: SAE | None = None, device: str | torch.device = "cpu") -> Gate:
    """The :class:`Gate` saved in ``path``. A latent-probe gate loads its SAE from the recorded folder
    (checking the weights' sha256) unless ``sae`` is given."""
    head, t = read_gate_header(path)
    scorer: Any
    if head["scorer"] == "linear":
        scorer = ProjectionScorer(t["weight"], float(t["bias"][0]))
    else:
        if sae is None:
            info = head.get("sae") or {}
            weights = sae_weights_file(info.get("path", ""))
            if file_sha256(weights) != info.get("sha256"):
                raise SaesteerError(
                    f"the SAE at {weights.parent} is not the one this gate was fit with; refit the gate"
                )
            from saesteer.sae.io import load_sae

            sae = load_sae(weights.parent, device=device, dtype="float32").eval()
        scorer = LatentProbeScorer(sae, t["features"].tolist(), t["weight"], float(t["bias"][0]))
    thr = head.get("threshold")
    return Gate(
        scorer,
        float(thr) if thr is not None else float("-inf"),
        head.get("hook", ""),
        reduce=head.get("reduce", "last"),
        tail=int(head.get("tail", 1)),
        offset=int(head.get("offset", 0)),
    )
