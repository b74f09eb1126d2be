"""Interventions: small dataclasses that say how to edit the residual stream at one hook point.

With an SAE, feature edits keep the SAE's reconstruction error, so only the edited feature's
contribution to the residual stream changes. For a clamp to ``c``:

    x' = x + (c - z_f) * W_dec[f]

where ``z_f`` is the feature's latent activation on ``x`` under the SAE's own encoder (ReLU,
JumpReLU or Top-k). Clamping a feature to its own value is therefore an exact no-op.

A value (``value``, ``factor``, ``coeff``) is a number, a tensor of shape ``(batch,)`` (one
setting per example) or ``(batch, seq)`` (one per example and absolute position, counted in the
padded input including generated tokens).

Pluggable: an intervention is any object with ``features`` (SAE latents it reads), ``stage``
(``"add"`` or ``"project"``), ``validate(d_model, d_sae)`` and ``delta(ctx)`` (``"add"``) or
``project(x, ctx)`` (``"project"``); see :class:`EditContext`. All ``"add"`` deltas are computed
from the same unedited activation and summed; ``"project"`` edits (directional ablations) then act
on the result, in the order given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import torch

from saesteer.errors import SaesteerError

Value = float | int | torch.Tensor


def check_value(name: str, value: Value) -> None:
    """Reject NaN/inf and tensors of the wrong rank, with a one-line message."""
    if isinstance(value, torch.Tensor):
        if value.ndim not in (0, 1, 2):
            raise SaesteerError(
                f"{name}: a tensor value must be a scalar, (batch,) or (batch, seq); got shape {tuple(value.shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SaesteerError(f"{name}: value contains NaN or inf; give finite numbers")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SaesteerError(f"{name}: value must be a number or a tensor, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise SaesteerError(f"{name}: value is {value} (NaN or inf); give a finite number")


def check_feature(name: str, feature: int, d_sae: int | None) -> None:
    """Reject feature indices that are not ints or are out of the SAE's range."""
    if isinstance(feature, bool) or not isinstance(feature, int):
        raise SaesteerError(f"{name}: feature index must be an int, got {feature!r}")
    if d_sae is None:
        raise SaesteerError(f"{name}: feature interventions need an SAE; pass sae=... (or --sae DIR)")
    if not 0 <= feature < d_sae:
        raise SaesteerError(f"{name}: feature {feature} out of range; this SAE has features 0..{d_sae - 1}")


def as_direction(name: str, direction: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """A finite 1-D float32 direction on the CPU."""
    d = torch.as_tensor(direction).detach().to("cpu", torch.float32)
    if d.ndim != 1:
        raise SaesteerError(f"{name}: direction must be 1-D (d_model,), got shape {tuple(d.shape)}")
    if not bool(torch.isfinite(d).all()):
        raise SaesteerError(f"{name}: direction contains NaN or inf; recompute it")
    return d


class EditContext(Protocol):
    """What an intervention sees when it computes its edit (one forward step at one hook point)."""

    x: torch.Tensor  # (batch, seq, d_model), float32 copy of the activation

    def z(self, feature: int) -> torch.Tensor:
        """The SAE latent of ``feature`` on the unedited activation, (batch, seq) float32."""
        ...

    def decoder_row(self, feature: int) -> torch.Tensor:
        """``W_dec[feature]`` as float32 (d_model,) on the activation's device."""
        ...

    def value(self, value: Value) -> torch.Tensor | float:
        """A value broadcast to (batch, seq, 1) float32 (a float for numbers)."""
        ...

    def vector(self, key: int, vec: torch.Tensor) -> torch.Tensor:
        """``vec`` as float32 on the activation's device, cached under ``key``."""
        ...


@runtime_checkable
class Intervention(Protocol):
    """The protocol every intervention implements (the dataclasses below, or your own)."""

    stage: str

    @property
    def features(self) -> tuple[int, ...]: ...

    def validate(self, d_model: int, d_sae: int | None) -> None: ...


class _OneFeature:
    """Shared by the edits of one SAE feature: which latent they read, and its range check."""

    feature: int
    verb: ClassVar[str]

    @property
    def features(self) -> tuple[int, ...]:
        return (self.feature,)

    def validate(self, d_model: int, d_sae: int | None) -> None:
        check_feature(self.verb, self.feature, d_sae)


@dataclass(frozen=True)
class ClampFeature(_OneFeature):
    """Set SAE feature ``feature`` to ``value`` (error term kept): x + (value - z_f) W_dec[f]."""

    feature: int
    value: Value
    stage: str = field(default="add", init=False)
    verb: ClassVar[str] = "clamp"

    def __post_init__(self) -> None:
        check_value(f"clamp feature {self.feature}", self.value)

    def delta(self, ctx: EditContext) -> torch.Tensor:
        coef = ctx.value(self.value) - ctx.z(self.feature).unsqueeze(-1)
        return coef * ctx.decoder_row(self.feature)


@dataclass(frozen=True)
class ScaleFeature(_OneFeature):
    """Multiply SAE feature ``feature`` by ``factor`` (error term kept): x + (factor - 1) z_f W_dec[f]."""

    feature: int
    factor: Value
    stage: str = field(default="add", init=False)
    verb: ClassVar[str] = "scale"

    def __post_init__(self) -> None:
        check_value(f"scale feature {self.feature}", self.factor)

    def delta(self, ctx: EditContext) -> torch.Tensor:
        coef = (ctx.value(self.factor) - 1.0) * ctx.z(self.feature).unsqueeze(-1)
        return coef * ctx.decoder_row(self.feature)


@dataclass(frozen=True)
class AddFeature:
    """Add ``coeff * W_dec[feature]`` to the activation (needs no encoder pass)."""

    feature: int
    coeff: Value
    stage: str = field(default="add", init=False)

    def __post_init__(self) -> None:
        check_value(f"add feature {self.feature}", self.coeff)

    @property
    def features(self) -> tuple[int, ...]:
        return ()  # reads no latent; the decoder row is enough

    @property
    def edits(self) -> tuple[int, ...]:
        return (self.feature,)

    def validate(self, d_model: int, d_sae: int | None) -> None:
        check_feature("add-feature", self.feature, d_sae)

    def delta(self, ctx: EditContext) -> torch.Tensor:
        return ctx.value(self.coeff) * ctx.decoder_row(self.feature)


@dataclass(frozen=True)
class AblateFeature(_OneFeature):
    """Remove SAE feature ``feature``'s contribution (error term kept): x - z_f W_dec[f]."""

    feature: int
    stage: str = field(default="add", init=False)
    verb: ClassVar[str] = "ablate"

    def delta(self, ctx: EditContext) -> torch.Tensor:
        return -ctx.z(self.feature).unsqueeze(-1) * ctx.decoder_row(self.feature)


@dataclass(frozen=True, eq=False)
class AddDirection:
    """Activation addition: x + coeff * direction (the direction as given, not normalised)."""

    direction: torch.Tensor
    coeff: Value = 1.0
    stage: str = field(default="add", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direction", as_direction("add-direction", self.direction))
        check_value("add-direction", self.coeff)

    @property
    def features(self) -> tuple[int, ...]:
        return ()

    def validate(self, d_model: int, d_sae: int | None) -> None:
        if self.direction.shape[0] != d_model:
            raise SaesteerError(
                f"add-direction: direction has {self.direction.shape[0]} dims but the model's d_model is {d_model}; "
                "use a direction computed on this model"
            )

    def delta(self, ctx: EditContext) -> torch.Tensor:
        return ctx.value(self.coeff) * ctx.vector(id(self), self.direction)


@dataclass(frozen=True, eq=False)
class AblateDirection:
    """Directional ablation (Arditi et al. 2024): x - (x . r) r with r the unit direction."""

    direction: torch.Tensor
    stage: str = field(default="project", init=False)

    def __post_init__(self) -> None:
        d = as_direction("ablate-direction", self.direction)
        norm = float(d.norm())
        if norm == 0.0:
            raise SaesteerError("ablate-direction: the direction is all zeros; give a non-zero direction")
        object.__setattr__(self, "direction", d / norm)

    @property
    def features(self) -> tuple[int, ...]:
        return ()

    def validate(self, d_model: int, d_sae: int | None) -> None:
        if self.direction.shape[0] != d_model:
            raise SaesteerError(
                f"ablate-direction: direction has {self.direction.shape[0]} dims but the model's d_model is "
                f"{d_model}; use a direction computed on this model"
            )

    def project(self, x: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        r = ctx.vector(id(self), self.direction)
        return x - (x @ r).unsqueeze(-1) * r


def edited_features(iv: object) -> tuple[int, ...]:
    """The SAE features an intervention changes (for the one-edit-per-feature check)."""
    feats: Sequence[int] = getattr(iv, "edits", ()) or getattr(iv, "features", ())
    return tuple(int(f) for f in feats)


def validate_interventions(interventions: Sequence[object], d_model: int, d_sae: int | None) -> None:
    """Check each intervention and that no two of them edit the same feature."""
    if len(interventions) == 0:
        raise SaesteerError("no interventions given; pass at least one, e.g. ClampFeature(feature=123, value=10.0)")
    owner: dict[int, str] = {}
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise SaesteerError(
                f"{iv!r} is not an intervention; use ClampFeature, ScaleFeature, AddFeature, AblateFeature, "
                "AddDirection or AblateDirection"
            )
        if iv.stage not in ("add", "project"):
            raise SaesteerError(f"{type(iv).__name__}: stage must be 'add' or 'project', got {iv.stage!r}")
        iv.validate(d_model, d_sae)
        for f in edited_features(iv):
            if f in owner:
                raise SaesteerError(
                    f"two interventions edit feature {f} ({owner[f]} and {type(iv).__name__}); keep one of them"
                )
            owner[f] = type(iv).__name__
