"""Steering: interventions at a hook point, on chosen positions, optionally gated, over forward hooks.

    steering = Steering(lm.model, sae, [ClampFeature(1234, 10.0)], positions="all")
    with steering.apply():                  # a context manager ...
        lm.model.generate(**enc)
    handle = steering.attach()              # ... or a removable handle
    handle.remove()

Hooks: a forward pre-hook on the model's decoder stack records, per call, the past length and the
padding (see :mod:`saesteer.steering.positions`); the gate's hook scores the prompt; the layer hook
edits the activation (see :mod:`saesteer.steering.operators`). All state lives in the
:class:`SteeringHandle` of one attachment, none in globals, so any number of steered and unsteered
models coexist in one process. Works with ``model.generate`` (KV cache included), plain forward
passes, and any harness that calls the model instance (e.g. lm-eval's ``HFLM(pretrained=model)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from saesteer.errors import SaesteerError
from saesteer.model.adapter import ArchAdapter, HookPoint, check_width
from saesteer.model.rows import current_live
from saesteer.sae.base import SAE
from saesteer.steering.gate import Gate, same_activation
from saesteer.steering.interventions import validate_interventions
from saesteer.steering.operators import Editor
from saesteer.steering.positions import (
    ForwardInfo,
    Positions,
    forward_info,
    position_mask,
    selects_nothing,
)
from saesteer.steering.spec import SteeringSpec, steering_parts

_ORDER = {"resid_pre": 0, "mlp_out": 1, "resid_post": 2}


def _order(hp: HookPoint) -> tuple[int, int]:
    """Execution order of hook points within one forward pass."""
    return hp.layer, _ORDER[hp.kind]


def _decoder_stack(adapter: ArchAdapter) -> nn.Module:
    """The module whose child is the list of decoder layers (sees every forward's inputs)."""
    for module in adapter.model.modules():
        if any(child is adapter.layers for child in module.children()):
            return module
    raise SaesteerError("could not find the module holding the decoder layers; unsupported model layout")


def _as_adapter(model: Any) -> ArchAdapter:
    return model if isinstance(model, ArchAdapter) else ArchAdapter(model)


class Steering:
    """A steering configuration: SAE, interventions, hook point, positions and an optional gate.

    ``hook``: a hook point name (``blocks.12.hook_resid_post``), a layer number (the SAE's hook kind
    at that layer, ``resid_post`` without an SAE), or a list of points (direction-only
    interventions, e.g. directional ablation at every layer). Default: the SAE's ``hook_name``.
    ``keep_error``: keep the SAE's reconstruction error (default; exact, error-preserving edits);
    False replaces the activation by the SAE reconstruction with the edited latents.
    ``topk_exact``: for Top-k SAEs, read ``z_f`` with the full encoder (see operators).
    """

    def __init__(
        self,
        model: Any,
        sae: SAE | None,
        interventions: Sequence[Any],
        hook: str | int | HookPoint | Sequence[str | HookPoint] | None = None,
        positions: str | Positions | torch.Tensor | None = "all",
        gate: Gate | None = None,
        *,
        keep_error: bool = True,
        topk_exact: bool = True,
    ):
        self.adapter = _as_adapter(model)
        self.sae = sae
        self.interventions = list(interventions)
        self.positions = Positions.parse(positions)
        self.gate = gate
        self.keep_error = keep_error
        self.topk_exact = topk_exact
        self.hooks = self._resolve_hooks(hook)
        self._validate(self.adapter)
        self.editor = Editor(sae, self.interventions, keep_error=keep_error, topk_exact=topk_exact)

    @classmethod
    def from_spec(
        cls, model: Any, spec: SteeringSpec, tokenizer: Any = None, system_prompt: str | None = None
    ) -> Steering:
        """A Steering from a parsed :class:`SteeringSpec` (loads the SAE and direction files it names).

        ``tokenizer`` (and the ``system_prompt`` of generation) are needed only to calibrate a gate on
        the spec's ``gate_calibrate`` prompts.
        """
        return cls(model, **steering_parts(model, spec, tokenizer, system_prompt))

    def _resolve_hooks(self, hook: Any) -> list[HookPoint]:
        sae_hook = HookPoint.parse(self.sae.cfg.hook_name) if self.sae is not None and self.sae.cfg.hook_name else None
        if hook is None:
            if sae_hook is None:
                raise SaesteerError("no hook point: pass hook='blocks.L.hook_resid_post' (the SAE names none)")
            return [sae_hook]
        if isinstance(hook, bool):
            raise SaesteerError(f"bad hook {hook!r}; give a layer number or a hook point name")
        if isinstance(hook, int):
            return [HookPoint(sae_hook.kind if sae_hook else "resid_post", hook)]
        if isinstance(hook, (str, HookPoint)):
            return [HookPoint.parse(hook)]
        points = [HookPoint.parse(h) for h in hook]
        if not points:
            raise SaesteerError("empty list of hook points; give at least one")
        return points

    def _validate(self, adapter: ArchAdapter) -> None:
        for hp in self.hooks:
            adapter.check(hp)
        if self.sae is not None:
            check_width(self.sae.d_in, adapter.d_model)
            uses_sae = any(getattr(iv, "features", ()) or getattr(iv, "edits", ()) for iv in self.interventions)
            if uses_sae and len(self.hooks) != 1:
                raise SaesteerError("SAE feature interventions act at one hook point; give a single hook")
            if self.sae.cfg.hook_name:
                sae_hp = HookPoint.parse(self.sae.cfg.hook_name)
                if uses_sae and not same_activation(sae_hp, self.hooks[0]):
                    raise SaesteerError(
                        f"SAE was trained on {sae_hp.name} but steering is at {self.hooks[0].name}; "
                        f"steer at the SAE's hook point (layer {sae_hp.layer})"
                    )
        validate_interventions(self.interventions, adapter.d_model, self.sae.d_sae if self.sae is not None else None)
        if self.gate is not None:
            gate_hp = adapter.check(self.gate.hook)
            self.gate.scorer.validate(adapter.d_model)
            first = min(self.hooks, key=_order)
            if _order(gate_hp) > _order(first):
                raise SaesteerError(
                    f"gate hook {gate_hp.name} comes after steering hook {first.name}; gate at or before the "
                    "steering point so it sees unsteered activations"
                )

    def attach(self, model: Any | None = None) -> SteeringHandle:
        """Install the hooks on ``model`` (default: the model given at construction); returns a handle."""
        adapter = self.adapter if model is None else _as_adapter(model)
        if adapter is not self.adapter:
            self._validate(adapter)
        return SteeringHandle(self, adapter)

    @contextlib.contextmanager
    def apply(self, model: Any | None = None) -> Iterator[SteeringHandle]:
        """Context manager: steer ``model`` inside the ``with`` block, unsteered again afterwards."""
        handle = self.attach(model)
        try:
            yield handle
        finally:
            handle.remove()


class SteeringHandle:
    """One attachment of a :class:`Steering` to a model: its hooks and its per-generation state."""

    def __init__(self, steering: Steering, adapter: ArchAdapter):
        self.steering = steering
        self.adapter = adapter
        self.info: ForwardInfo | None = None  # the forward call in progress
        self.prompt_len = 0  # padded prompt width of the current session (generation)
        self.session_batch = 0
        self.gate_on: torch.Tensor | None = None  # (batch,) bool, decided on the prompt pass
        self.gate_scores: torch.Tensor | None = None  # (batch,) the last prompt's gate scores
        self.gate_any = False  # whether any example of the session is steered (skips the edit if not)
        self._handles: list[RemovableHandle] = []
        stack = _decoder_stack(adapter)
        self._handles.append(stack.register_forward_pre_hook(self._on_forward, with_kwargs=True))
        self._handles.append(stack.register_forward_hook(self._on_forward_end, always_call=True))
        gate = steering.gate
        if gate is not None:
            self._handles.append(adapter.add_hook(gate.hook, self._on_gate))
        for hp in steering.hooks:
            self._handles.append(adapter.add_hook(hp, self._on_layer))

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.info = None

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # --- hooks -------------------------------------------------------------------------------
    def _on_forward(self, _mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        info = forward_info(args, kwargs)
        if info.past == 0:  # a new prompt: a new session
            self.prompt_len = info.seq
            self.session_batch = info.batch
            self.gate_on = None
            self.gate_any = False
        elif (live := current_live()) is not None and len(live) == info.batch:
            pass  # a decoder dropped finished rows of this session (rows.live_rows): _on_layer follows them
        elif self.session_batch != info.batch:
            if self.steering.gate is not None or self.steering.positions.mode != "all":
                raise SaesteerError(
                    f"steering: a cached forward of batch {info.batch} arrived without its prompt pass "
                    f"(last prompt batch {self.session_batch}); run the prompt through the steered model first"
                )
            self.prompt_len, self.session_batch = info.past, info.batch
        self.info = info

    def _on_forward_end(self, _mod: nn.Module, _args: Any, _out: Any) -> None:
        self.info = None

    def _current(self) -> ForwardInfo:
        if self.info is None:
            raise RuntimeError("steering hook ran outside the model's forward; call the model, not its layers")
        return self.info

    def _on_gate(self, x: torch.Tensor) -> None:
        info = self._current()
        gate = self.steering.gate
        if info.past != 0 or gate is None:
            return None
        real = None if info.real is None else info.real.to(x.device)
        scores = gate.scores(x, real)
        self.gate_scores = scores.detach()
        self.gate_on = gate.decide(scores)
        self.gate_any = bool(self.gate_on.any())  # one device sync per prompt, none per decode step
        return None

    def _on_layer(self, x: torch.Tensor) -> torch.Tensor | None:
        info = self._current()
        st = self.steering
        if selects_nothing(st.positions, info, self.prompt_len):
            return None
        if st.gate is not None:
            if self.gate_on is None:
                raise RuntimeError("steering: the gate did not run on the prompt pass")
            if not self.gate_any:
                return None
        sel = position_mask(st.positions, info, self.prompt_len, x.device)
        if st.gate is not None:
            assert self.gate_on is not None
            live = current_live()
            on = self.gate_on if live is None else self.gate_on[list(live)]
            g = on.to(x.device).unsqueeze(1)  # decided on this batch's own prompt pass: its rows
            sel = g.expand(info.batch, info.seq) if sel is None else sel & g
        return st.editor.apply(x, sel, info)
