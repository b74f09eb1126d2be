"""What one app process holds: the model, the SAE, the browser, the activation cache, the queue, the gate."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saesteer.app.browser import FeatureBrowser
from saesteer.app.cache import ActivationCache
from saesteer.app.config import AppConfig
from saesteer.app.results import StudyResults
from saesteer.errors import SaesteerError
from saesteer.sae.base import SAE
from saesteer.steering.gate import FeatureScorer, Gate

_FEATURE_GATE = re.compile(r"^\s*feature:(\d+)\s*>\s*(\S+)\s*$")


class RequestQueue:
    """Counts generation requests waiting or running; refuses past ``limit`` (the caller answers 503)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.active = max(0, self.active - 1)


@dataclass
class GateDefault:
    """The playground's default gate and its ``saesteer generate --gate`` spelling (None for probe files)."""

    gate: Gate
    spec: str | None
    description: str


def feature_gate(sae: SAE, feature: int, threshold: float, reduce: str) -> GateDefault:
    gate = Gate(FeatureScorer(sae, feature), float(threshold), sae.cfg.hook_name, reduce)
    spec = f"feature:{feature}>{threshold:g}"
    return GateDefault(gate, spec, f"SAE feature {feature} > {threshold:g} ({reduce} token)")


def parse_gate(cfg: AppConfig, sae: SAE) -> GateDefault | None:
    """``--gate feature:F>T`` or a gate file written by ``saesteer fit-gate``."""
    if not cfg.gate:
        return None
    m = _FEATURE_GATE.match(cfg.gate)
    if m is not None:
        try:
            thr = float(m.group(2))
        except ValueError:
            raise SaesteerError(f"--gate {cfg.gate!r}: the threshold must be a number") from None
        return feature_gate(sae, int(m.group(1)), thr, cfg.gate_reduce)
    path = Path(cfg.gate)
    if not path.is_file():
        raise SaesteerError(f"--gate {cfg.gate!r}: use feature:F>T (e.g. feature:77>3.2) or a gate file from fit-gate")
    from saesteer.steering.gatefile import load_gate

    gate = load_gate(path, device=sae.W_dec.device)
    kind = type(gate.scorer).__name__
    return GateDefault(gate, str(path), f"{path.name}: {kind} > {gate.threshold:.4g} at {gate.hook} ({gate.reduce})")


def read_features_json(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    p = Path(path)
    if p.is_dir():
        p = p / "features.json"
    if not p.is_file():
        raise SaesteerError(f"--features {path}: no features.json there; pass the file `saesteer find-features` wrote")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SaesteerError(f"{p} is not valid JSON ({exc}); pass the features.json of find-features") from None
    if not isinstance(data, dict) or not str(data.get("format", "")).startswith("saesteer.features"):
        raise SaesteerError(f"{p} is not a saesteer features.json (no 'format': 'saesteer.features.v1')")
    return data


@dataclass
class AppState:
    """Everything the endpoints share. ``model_lock`` serialises every use of the model (hooks are global)."""

    model: Any
    tokenizer: Any
    model_name: str
    sae: SAE
    cfg: AppConfig
    features_json: dict[str, Any] | None = None
    gate: GateDefault | None = None
    model_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.queue = RequestQueue(self.cfg.max_queue)
        self.browser = FeatureBrowser(self.model, self.tokenizer, self.sae, self.cfg, self.features_json)
        self.cache = ActivationCache(self.model, self.tokenizer, self.sae, self.cfg, self.model_lock, self.model_name)
        self.cache.on_ready.append(self.browser.attach_store)
        self.results = StudyResults(self.cfg.study, self.cfg.data_dir)

    @classmethod
    def build(cls, model: Any, tokenizer: Any, model_name: str, sae: SAE, cfg: AppConfig) -> AppState:
        """Check the SAE fits the model, read features.json and the gate; the cache is started separately."""
        from saesteer.model.adapter import ArchAdapter

        cfg.validate()
        ad = ArchAdapter(model)
        ad.check_sae(sae)
        fj = read_features_json(cfg.features)
        if fj is not None and (fj.get("sae") or {}).get("d_sae") not in (None, sae.d_sae):
            raise SaesteerError(f"{cfg.features} belongs to an SAE with {fj['sae']['d_sae']} features, not {sae.d_sae}")
        return cls(model, tokenizer, model_name, sae, cfg, fj, parse_gate(cfg, sae))
