"""The app's configuration: what it serves and the limits it enforces (the fields are ``saesteer app --help``)."""

from __future__ import annotations

from dataclasses import dataclass

from saesteer.config import opt
from saesteer.errors import SaesteerError

MAX_NEW_TOKENS_LIMIT = 512


@dataclass
class AppConfig:
    """``saesteer app``: a local feature browser, steering playground and results viewer."""

    sae: str = opt("", "SAE folder (saesteer or SAELens layout: cfg.json + sae_weights.safetensors)")
    features: str | None = opt(None, "features.json from `saesteer find-features` (labels, screen results)")
    gate: str | None = opt(
        None,
        "default gate of the playground: 'feature:F>T' (SAE latent F above T) or a gate file from `saesteer fit-gate`",
    )
    gate_reduce: str = opt("last", "gate score per prompt: last (token), mean or tail")
    study: str | None = opt(None, "a `saesteer reproduce` output folder (or its report/) for the results viewer")
    host: str = opt("127.0.0.1", "address to serve on; anything but loopback exposes the model to your network")
    port: int = opt(8765, "port to serve on (0: any free port)")
    acts_cache: str | None = opt(
        None, "where the activation cache is stored (default: $SAESTEER_CACHE/app or ~/.cache/saesteer/app)"
    )
    corpus: str | None = opt(None, "corpus file (.txt/.jsonl(.gz)) for the activation cache; default: data dir's")
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data; none: built-in)")
    n_windows: int = opt(96, "corpus windows in the activation cache")
    context_len: int = opt(64, "tokens per corpus window")
    chat_prompts: int = opt(32, "built-in chat prompts (harmful + harmless) added to the activation cache")
    batch_size: int = opt(8, "windows per forward pass while building the cache")
    max_queue: int = opt(8, "generation requests waiting or running at once; more get HTTP 503")
    max_prompt_chars: int = opt(4000, "longest prompt (all chat messages together), in characters")
    max_prompt_tokens: int = opt(1024, "longest prompt after the chat template, in tokens")
    value_multiple: float = opt(
        10.0, "clamp values are bounded by +- this many times the feature's observed max activation"
    )
    value_bound: float = opt(1000.0, "bound on |clamp value| while the feature's range is unknown (cache building)")
    seed: int = opt(0, "seed of the corpus sample")

    def validate(self) -> None:
        if not self.sae:
            raise SaesteerError("no SAE given; pass --sae DIR (a folder with cfg.json + sae_weights.safetensors)")
        if not 0 <= self.port < 65536:
            raise SaesteerError(f"--port {self.port} out of range; use 0..65535")
        for name in ("n_windows", "context_len", "batch_size", "max_queue", "max_prompt_chars", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise SaesteerError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.chat_prompts < 0:
            raise SaesteerError(f"--chat-prompts must be >= 0, got {self.chat_prompts}")
        if not self.value_multiple > 0 or not self.value_bound > 0:
            raise SaesteerError("--value-multiple and --value-bound must be > 0")
        if self.gate_reduce not in ("last", "mean", "tail"):
            raise SaesteerError(f"--gate-reduce {self.gate_reduce!r}: use last, mean or tail")
