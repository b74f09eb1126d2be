"""Sparse autoencoders: architectures, SAELens-format files, training and metrics."""

from saesteer.sae.base import SAE, SAE_REGISTRY, JumpReLUSAE, ReLUSAE, SAEConfig, TopKSAE, register_sae
from saesteer.sae.io import load_sae, save_sae

__all__ = [
    "SAE",
    "SAE_REGISTRY",
    "JumpReLUSAE",
    "ReLUSAE",
    "SAEConfig",
    "TopKSAE",
    "load_sae",
    "register_sae",
    "save_sae",
]
