"""Sparse autoencoders: architectures, SAELens-format files, training and metrics."""

from saesteer.sae.base import SAE, SAE_REGISTRY, JumpReLUSAE, ReLUSAE, SAEConfig, TopKSAE, register_sae

__all__ = ["SAE", "SAE_REGISTRY", "JumpReLUSAE", "ReLUSAE", "SAEConfig", "TopKSAE", "register_sae"]
