"""Architecture adapter: the one place that knows where each architecture keeps its parts.

Named hook points follow SAELens' spelling: ``blocks.{L}.hook_resid_pre`` (input of decoder layer L),
``blocks.{L}.hook_resid_post`` (its output) and ``blocks.{L}.hook_mlp_out``. The short forms
``resid_pre.L`` / ``resid_post.L`` / ``mlp_out.L`` are accepted too. With ``h_L`` the residual stream
entering layer L: ``resid_pre.L = h_L``, ``resid_post.L = h_{L+1}`` and ``mlp_out.L`` = the output of layer L's MLP module,
before any post-norm and its residual add (sequential blocks: ``h_{L+1} = h_L + attn + mlp_out``).

Reading activations has one primitive, :meth:`ArchAdapter.record` (a context manager that records the
activation at the named points of every forward run inside it); :meth:`ArchAdapter.run_to` (truncated
forward) and :meth:`ArchAdapter.run_full` (activation + logits) are built on it. Writing activations goes
through :meth:`ArchAdapter.add_hook`.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
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


def check_width(d_in: int, d_model: int, what: str = "SAE") -> None:
    """A one-line error when an SAE (or a gate's SAE) of width ``d_in`` cannot read a model of ``d_model``."""
    if d_in != d_model:
        raise SaesteerError(f"{what} d_in {d_in} != model d_model {d_model}; use an SAE trained on this model")


class StopForward(Exception):
    """Raised inside a recording hook to end a truncated forward pass early (see ``ArchAdapter.record``)."""


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch (as ``generate`` computes them): 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


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
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

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

    def check_sae(self, sae: Any) -> HookPoint:
        """The hook point of an SAE (``d_in``, ``cfg.hook_name``) on this model; a one-line error when it
        does not fit: another width, no hook point named, or a layer this model does not have."""
        check_width(sae.d_in, self.d_model)
        if not sae.cfg.hook_name:
            raise SaesteerError("the SAE names no hook point (cfg.hook_name); set metadata.hook_name in its cfg.json")
        return self.check(sae.cfg.hook_name)

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

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        mask_positions: bool = False,
        last_only: bool = False,
    ) -> torch.Tensor:
        """One forward pass without a KV cache; returns logits (batch, seq, vocab).

        ``mask_positions``: position ids from the attention mask (0 at each row's first real token, as
        ``generate`` numbers left-padded rows) instead of the model's default ``0..seq-1``.
        ``last_only``: logits (batch, vocab) of the last position only, the unembedding computed there only.
        """
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        if mask_positions and attention_mask is not None:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        if last_only and self._keeps_logits:
            kwargs["logits_to_keep"] = 1
        logits: torch.Tensor = self.model(**kwargs).logits
        return logits[:, -1] if last_only else logits

    @contextlib.contextmanager
    def record(
        self, points: Sequence[str | HookPoint], *, clone: bool = True, truncate: bool = False
    ) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Record the activations at ``points`` of every forward pass run inside the ``with`` block.

        Yields ``{hook name: [activation of forward 1, forward 2, ...]}`` (each (batch, seq, d_model),
        detached; ``clone=False`` keeps the model's own tensor). An activation is recorded as the model
        uses it, i.e. after the edits of hooks added before this recording. ``truncate``: each forward
        stops once every point has been recorded (the later layers never run);
        :meth:`forward` then raises ``StopForward``, which :meth:`run_to` catches.
        """
        hps = [self.check(p) for p in points]
        names = list(dict.fromkeys(hp.name for hp in hps))
        got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        seen: set[str] = set()

        def grab(name: str) -> Callable[[torch.Tensor], None]:
            def hook(x: torch.Tensor) -> None:
                got[name].append(x.detach().clone() if clone else x.detach())
                seen.add(name)
                if truncate and len(seen) == len(names):
                    raise StopForward

            return hook

        handles = [self.model.register_forward_pre_hook(lambda *_: seen.clear())]
        handles += [self.add_hook(hp, grab(hp.name)) for hp in {hp.name: hp for hp in hps}.values()]
        try:
            yield got
        finally:
            for h in handles:
                h.remove()

    def _one(self, got: dict[str, list[torch.Tensor]], point: str | HookPoint) -> torch.Tensor:
        acts = got[HookPoint.parse(point).name]
        if not acts:
            raise SaesteerError(
                f"hook point {point} was never reached in this model's forward pass; "
                "pick one that `saesteer model info` lists"
            )
        return acts[0]

    @torch.no_grad()
    def run_to(
        self,
        point: str | HookPoint,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        mask_positions: bool = False,
    ) -> torch.Tensor:
        """Truncated forward: run the model only up to ``point`` and return the activation there."""
        return self.run_to_all([point], input_ids, attention_mask, mask_positions=mask_positions)[0]

    @torch.no_grad()
    def run_to_all(
        self,
        points: Sequence[str | HookPoint],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        mask_positions: bool = False,
    ) -> list[torch.Tensor]:
        """One truncated forward up to the deepest of ``points``; the activation at each, in ``points``' order."""
        with self.record(points, clone=False, truncate=True) as got:
            try:
                self.forward(input_ids, attention_mask, mask_positions=mask_positions)
            except StopForward:
                pass
        return [self._one(got, p) for p in points]

    @torch.no_grad()
    def run_full(
        self,
        point: str | HookPoint,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        mask_positions: bool = False,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full forward; returns (activation at ``point``, logits); the options are :meth:`forward`'s."""
        with self.record([point]) as got:
            logits = self.forward(input_ids, attention_mask, mask_positions=mask_positions, last_only=last_only)
        return self._one(got, point), logits

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
