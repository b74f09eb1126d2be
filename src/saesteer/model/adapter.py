"""Architecture adapter: the one place that knows where each architecture keeps its parts.

Named hook points follow SAELens' spelling: ``blocks.{L}.hook_resid_pre`` (input of decoder layer L),
``blocks.{L}.hook_resid_post`` (its output) and ``blocks.{L}.hook_mlp_out``. The short forms
``resid_pre.L`` / ``resid_post.L`` / ``mlp_out.L`` are accepted too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from saesteer.errors import SaesteerError

# model_type -> (decoder layers path, final norm path); embeddings come from the HF accessors
_PATHS: dict[str, tuple[str, str]] = {
    "llama": ("model.layers", "model.norm"),
    "qwen2": ("model.layers", "model.norm"),
    "qwen3": ("model.layers", "model.norm"),
    "mistral": ("model.layers", "model.norm"),
    "gemma": ("model.layers", "model.norm"),
    "gemma2": ("model.layers", "model.norm"),
    "gemma3_text": ("model.layers", "model.norm"),
    "phi3": ("model.layers", "model.norm"),
    "gpt2": ("transformer.h", "transformer.ln_f"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.final_layer_norm"),
}
SUPPORTED = sorted(_PATHS)
HOOK_KINDS = ("resid_pre", "resid_post", "mlp_out")


@dataclass(frozen=True)
class HookPoint:
    """A named place in the residual stream: ``kind`` at decoder layer ``layer``."""

    kind: str
    layer: int

    @property
    def name(self) -> str:
        """SAELens-style name, e.g. ``blocks.12.hook_resid_post``."""
        return f"blocks.{self.layer}.hook_{self.kind}"

    @classmethod
    def parse(cls, text: str | HookPoint) -> HookPoint:
        """Parse ``blocks.L.hook_KIND`` or ``KIND.L``."""
        if isinstance(text, HookPoint):
            return text
        m = re.fullmatch(r"blocks\.(\d+)\.hook_(\w+)", text) or None
        if m:
            layer, kind = int(m.group(1)), m.group(2)
        else:
            m2 = re.fullmatch(r"(\w+)\.(\d+)", text)
            if not m2:
                raise SaesteerError(f"bad hook point {text!r}; use e.g. blocks.12.hook_resid_post or resid_post.12")
            kind, layer = m2.group(1), int(m2.group(2))
        if kind not in HOOK_KINDS:
            raise SaesteerError(f"unknown hook kind {kind!r} in {text!r}; use one of {', '.join(HOOK_KINDS)}")
        return cls(kind, layer)


class _StopForward(Exception):
    """Raised inside a hook to end a truncated forward pass early."""


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


class ArchAdapter:
    """Where a model's decoder layers, final norm, unembedding and hook points are."""

    def __init__(self, model: nn.Module):
        cfg: Any = getattr(model, "config", None)
        mtype = getattr(cfg, "model_type", None)
        if mtype not in _PATHS:
            raise SaesteerError(
                f"unsupported architecture {mtype!r}; supported: {', '.join(SUPPORTED)} "
                "(add its module paths to saesteer.model.adapter._PATHS)"
            )
        self.model = model
        self.model_type: str = mtype
        layers_p, norm_p = _PATHS[mtype]
        self.layers: nn.ModuleList = _get(model, layers_p)
        self.final_norm: nn.Module = _get(model, norm_p)
        self.unembed: nn.Module = model.get_output_embeddings()  # type: ignore[operator]
        self.embed: nn.Module = model.get_input_embeddings()  # type: ignore[operator]
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.n_layers: int = len(self.layers)
        self.d_model: int = int(getattr(text_cfg, "hidden_size", None) or text_cfg.n_embd)
        self.vocab_size: int = int(text_cfg.vocab_size)

    def hook_points(self) -> list[str]:
        """All hook point names of this model."""
        return [HookPoint(k, layer).name for layer in range(self.n_layers) for k in HOOK_KINDS]

    def check(self, point: str | HookPoint) -> HookPoint:
        """Parse a hook point and check its layer is in range."""
        hp = HookPoint.parse(point)
        if not 0 <= hp.layer < self.n_layers:
            raise SaesteerError(
                f"layer {hp.layer} out of range: this {self.model_type} model has layers 0..{self.n_layers - 1}"
            )
        return hp

    def _module(self, hp: HookPoint) -> nn.Module:
        layer: nn.Module = self.layers[hp.layer]
        if hp.kind == "mlp_out":
            mlp: nn.Module = getattr(layer, "mlp")  # noqa: B009 - every supported architecture names it mlp
            return mlp
        return layer

    def add_hook(self, point: str | HookPoint, fn: Callable[[torch.Tensor], torch.Tensor | None]) -> RemovableHandle:
        """Call ``fn(x)`` on the activation (batch, seq, d_model) at ``point``; a returned tensor replaces it."""
        hp = self.check(point)
        module = self._module(hp)
        if hp.kind == "resid_pre":

            def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = fn(kwargs["hidden_states"])
                if new is None:
                    return None
                return args, {**kwargs, "hidden_states": new}

            return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def post_hook(_mod: nn.Module, _args: Any, output: Any) -> Any:
            new = fn(_first(output))
            return None if new is None else _replace_first(output, new)

        return module.register_forward_hook(post_hook)

    @torch.no_grad()
    def run_to(
        self, point: str | HookPoint, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Truncated forward: run the model only up to ``point`` and return the activation there."""
        captured: list[torch.Tensor] = []

        def grab(x: torch.Tensor) -> None:
            captured.append(x)
            raise _StopForward

        handle = self.add_hook(point, grab)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise SaesteerError(
                f"hook point {point} was never reached in this model's forward pass; "
                "pick one that `saesteer model info` lists"
            )
        return captured[0]

    @torch.no_grad()
    def run_full(
        self, point: str | HookPoint, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full forward; returns (activation at ``point``, logits)."""
        captured: list[torch.Tensor] = []
        handle = self.add_hook(point, lambda x: captured.append(x.clone()) or None)  # type: ignore[func-returns-value]
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            handle.remove()
        return captured[0], out.logits

    def info(self) -> dict[str, Any]:
        """Architecture, layer count, d_model, vocab size and hook points."""
        return {
            "architecture": self.model_type,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
            "hook_points": [f"blocks.L.hook_{k}" for k in HOOK_KINDS],
            "layers": f"0..{self.n_layers - 1}",
        }
