"""Activation harvesting and the on-disk activation cache."""

from saesteer.activations.harvest import HarvestConfig, harvest
from saesteer.activations.store import ActivationStore

__all__ = ["ActivationStore", "HarvestConfig", "harvest"]
