"""SAE base class and the architecture registry.

Weights follow SAELens' names and shapes: ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae), ``W_dec``
(d_sae, d_in), ``b_dec`` (d_in); JumpReLU adds ``threshold`` (d_sae). Each SAE names the hook point
it reads (``cfg.hook_name``, e.g. ``blocks.12.hook_resid_post``).

Encoding: ``pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc``, then the architecture's
activation (ReLU; Top-k of the ReLU; JumpReLU). Decoding: ``z @ W_dec + b_dec``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from saesteer.errors import SaesteerError


@dataclass
class SAEConfig:
    """Shape and provenance of an SAE."""

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    hook_name: str = ""
    model_name: str = ""
    apply_b_dec_to_input: bool = False
    dtype: str = "float32"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def hook_layer(self) -> int:
        """The layer of ``hook_name`` (-1 if it names none)."""
        parts = self.hook_name.split(".")
        return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else -1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SAE_REGISTRY: dict[str, type[SAE]] = {}


def register_sae(name: str) -> Callable[[type[SAE]], type[SAE]]:
    """Class decorator: make an SAE architecture available by name."""

    def wrap(cls: type[SAE]) -> type[SAE]:
        SAE_REGISTRY[name] = cls
        cls.architecture = name
        return cls

    return wrap


class SAE(nn.Module):
    """A sparse autoencoder over one hook point."""

    architecture: ClassVar[str] = ""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.d_in < 1 or cfg.d_sae < 1:
            raise SaesteerError(f"SAE needs d_in, d_sae >= 1 (got {cfg.d_in}, {cfg.d_sae})")
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        nn.init.kaiming_uniform_(self.W_dec)
        with torch.no_grad():
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.T)

    @classmethod
    def from_config(cls, cfg: SAEConfig) -> SAE:
        """Build the registered architecture ``cfg.architecture``."""
        if cfg.architecture not in SAE_REGISTRY:
            raise SaesteerError(
                f"unknown SAE architecture {cfg.architecture!r}; known: {', '.join(sorted(SAE_REGISTRY))}"
            )
        return SAE_REGISTRY[cfg.architecture](cfg)

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations (..., d_sae)."""
        if x.shape[-1] != self.cfg.d_in:
            raise SaesteerError(
                f"activation width {x.shape[-1]} != SAE d_in {self.cfg.d_in}; use an SAE trained for this model"
            )
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """The architecture's nonlinearity on pre-activations (dense output)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations (..., d_sae), dense with zeros."""
        return self.activation(self.pre_acts(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction (..., d_in) from dense latents."""
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


@register_sae("relu")
class ReLUSAE(SAE):
    """Standard ReLU SAE."""

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)


@register_sae("topk")
class TopKSAE(SAE):
    """Top-k SAE: keep the k largest ReLU pre-activations per token."""

    def __init__(self, cfg: SAEConfig):
        if cfg.k is None or not 1 <= cfg.k <= cfg.d_sae:
            raise SaesteerError(f"Top-k SAE needs 1 <= k <= d_sae (got k={cfg.k}, d_sae={cfg.d_sae})")
        super().__init__(cfg)

    @property
    def k(self) -> int:
        assert self.cfg.k is not None
        return self.cfg.k

    def topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices) of the k active latents per token, values >= 0."""
        vals, idx = self.pre_acts(x).topk(self.k, dim=-1, sorted=False)
        return torch.relu(vals), idx

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Reconstruction from (values, indices), gathering only the k decoder rows."""
        flat_v = vals.reshape(-1, vals.shape[-1]).to(self.W_dec.dtype)
        flat_i = idx.reshape(-1, idx.shape[-1])
        out = torch.nn.functional.embedding_bag(flat_i, self.W_dec, per_sample_weights=flat_v, mode="sum")
        return (out + self.b_dec).reshape(*vals.shape[:-1], self.cfg.d_in)


@register_sae("jumprelu")
class JumpReLUSAE(SAE):
    """JumpReLU SAE (Gemma Scope): keep pre-activations above a learned per-latent threshold."""

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold) * (pre > 0)
