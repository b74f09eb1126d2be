"""saesteer: steer a chat model's refusals with sparse-autoencoder features, and measure the cost."""

from saesteer.errors import SaesteerError

__version__ = "0.1.0"
__all__ = ["SaesteerError", "__version__"]
