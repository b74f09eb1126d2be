"""A parsed steering specification: which edits, where, and under which gate.

:class:`SteeringSpec` is plain data (strings, numbers, file paths), so it can come from a config file or
command-line flags; :meth:`saesteer.steering.engine.Steering.from_spec` turns it into a live
:class:`~saesteer.steering.engine.Steering` (loading the SAE and direction files it names).

Feature edits keep the SAE's error term: clamping feature ``F`` to ``c`` maps
``x -> x + (c - z_F) W_dec[F]``; scaling by ``s`` uses ``c = s z_F``; adding uses ``x + a W_dec[F]``;
ablation is ``c = 0``. Direction edits add ``a r`` or remove the projection ``(x . r^) r^``. A gate scores
each prompt (an SAE latent ``z_F`` or the projection on ``r^`` at the gate's hook, reduced over tokens)
and steers only prompts whose score exceeds the threshold; ``--gate-calibrate`` sets the threshold at
the ``gate_fpr`` quantile of harmless prompts' scores.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.sae.base import SAE
from saesteer.steering.direction import RefusalDirection
from saesteer.steering.gate import FeatureScorer, Gate, calibrate, prompt_scores
from saesteer.steering.interventions import AblateFeature, AddFeature, ClampFeature, ScaleFeature
from saesteer.steering.positions import Positions

_GATE_RE = re.compile(r"^\s*(?:feature:(?P<feat>\d+)|(?P<dir>direction))\s*(?:>\s*(?P<thr>\S+))?\s*$")
_PAIR_RE = re.compile(r"\s*(\d+)\s*=\s*(\S+)\s*")


@dataclass
class SteeringSpec:
    """Steering: SAE feature edits or a direction, on chosen positions, optionally gated."""

    sae: str | None = opt(None, "SAE folder (SAELens layout: cfg.json + sae_weights.safetensors)")
    hook: str | None = opt(
        None, "hook point to steer, e.g. blocks.12.hook_resid_post; unset: the SAE's or the direction file's"
    )
    clamp: list[str] = opt([], "clamp SAE features: F=VALUE (error term kept: x + (VALUE - z_F) W_dec[F])")
    scale: list[str] = opt([], "scale SAE features: F=FACTOR")
    add_feature: list[str] = opt([], "add SAE decoder rows: F=COEFF (x + COEFF W_dec[F])")
    ablate_feature: list[int] = opt([], "ablate SAE features: F (x - z_F W_dec[F])")
    direction: str | None = opt(None, "direction file (.safetensors from compute_refusal_direction)")
    add_direction: float | None = opt(None, "activation addition with --direction: x + COEFF * r")
    ablate_direction: bool = opt(False, "directional ablation of --direction: x - (x . r^) r^")
    positions: str = opt("all", "positions to steer: all, prompt or generated (padding is never touched)")
    keep_error: bool = opt(True, "keep the SAE error term (exact edits); --no-keep-error uses the SAE reconstruction")
    topk_exact: bool = opt(
        True, "Top-k SAEs: read z_F with the full encoder (exact); --no-topk-exact reads relu(pre_F) only"
    )
    gate: str | None = opt(
        None,
        "conditional steering: 'feature:F>T' (SAE latent F above T), 'direction>T' (projection on --direction's "
        "unit vector; omit '>T' with --gate-calibrate) or a gate file (.safetensors) from `saesteer fit-gate`",
    )
    gate_sae: str | None = opt(None, "SAE folder for a feature gate; unset: --sae")
    gate_hook: str | None = opt(None, "hook point the gate reads; unset: the gate SAE's or the direction's")
    gate_reduce: str = opt(
        "last", "gate score per prompt: last (token), mean (over tokens) or tail (mean of the last --gate-tail tokens)"
    )
    gate_tail: int = opt(5, "tokens averaged by --gate-reduce tail (e.g. the post-instruction template tokens)")
    gate_calibrate: str | None = opt(
        None, "harmless dev prompts (.txt or .jsonl) to set the gate threshold at --gate-fpr"
    )
    gate_fpr: float = opt(0.05, "target false-positive rate on the --gate-calibrate prompts")

    @property
    def active(self) -> bool:
        """True when the spec asks for at least one edit."""
        return bool(
            self.clamp
            or self.scale
            or self.add_feature
            or self.ablate_feature
            or self.add_direction is not None
            or self.ablate_direction
        )

    def check(self) -> None:
        """Raise on a spec that can never work, before any file or model is loaded."""
        if not self.active:
            if self.sae or self.direction or self.gate:
                raise SaesteerError(
                    "no intervention given; add e.g. --clamp F=V, --add-direction C or --ablate-direction"
                )
            return
        if (self.clamp or self.scale or self.add_feature or self.ablate_feature) and not self.sae:
            raise SaesteerError("feature interventions need an SAE; add --sae DIR")
        if (self.add_direction is not None or self.ablate_direction) and not self.direction:
            raise SaesteerError("--add-direction / --ablate-direction need --direction FILE")
        for flag in ("clamp", "scale", "add_feature"):
            parse_pairs(getattr(self, flag), "--" + flag.replace("_", "-"))
        if self.gate is not None and not _is_gate_file(self.gate):
            _gate_parts(self.gate)
        Positions.parse(self.positions)
        for flag, path, want in (
            ("--sae", self.sae, "a folder with cfg.json and sae_weights.safetensors"),
            ("--gate-sae", self.gate_sae, "a folder with cfg.json and sae_weights.safetensors"),
            ("--direction", self.direction, "a .safetensors file from compute_refusal_direction"),
            ("--gate-calibrate", self.gate_calibrate, "a .txt or .jsonl file of harmless prompts"),
            ("--gate", self.gate if self.gate and _is_gate_file(self.gate) else None, "a gate file from fit-gate"),
        ):
            if path and not Path(path).exists():
                raise SaesteerError(f"{flag} {path} not found; pass {want}")


def parse_pairs(items: Sequence[str], flag: str) -> list[tuple[int, float]]:
    """``["12=3.5", ...]`` -> ``[(12, 3.5), ...]``; a bad item is a one-line error naming ``flag``."""
    out = []
    for item in items:
        m = _PAIR_RE.fullmatch(str(item))
        try:
            if m is None:
                raise ValueError
            out.append((int(m.group(1)), float(m.group(2))))
        except ValueError:
            raise SaesteerError(f"{flag} {item!r}: use FEATURE=NUMBER, e.g. {flag} 1234=10") from None
    return out


def _is_gate_file(text: str) -> bool:
    return text.endswith(".safetensors") or Path(text).is_file()


def _gate_parts(text: str) -> tuple[int | None, float | None]:
    m = _GATE_RE.match(text)
    if m is None:
        raise SaesteerError(f"--gate {text!r}: use feature:F>T or direction>T (e.g. --gate feature:77>3.2)")
    feat = int(m.group("feat")) if m.group("feat") is not None else None
    if m.group("thr") is None:
        return feat, None
    try:
        return feat, float(m.group("thr"))
    except ValueError:
        raise SaesteerError(f"--gate {text!r}: the threshold must be a number") from None


def read_prompt_file(path: str | Path) -> list[Any]:
    """Prompts from a .txt file (one a line) or .jsonl ({'prompt': str} or {'messages': [...]} a line)."""
    p = Path(path)
    if not p.is_file():
        raise SaesteerError(f"prompts file {p} not found; pass an existing .txt or .jsonl file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SaesteerError(
            f"cannot read prompts file {p} ({type(exc).__name__}); pass a readable UTF-8 file"
        ) from None
    if p.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts: list[Any] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise SaesteerError(f"{p}:{n} is not valid JSON; one JSON object per line") from None
        if isinstance(row, dict) and "messages" in row:
            prompts.append(row["messages"])
        elif isinstance(row, dict) and "prompt" in row:
            prompts.append(row["prompt"])
        else:
            raise SaesteerError(f"{p}:{n} has neither 'prompt' nor 'messages'; add one of them")
    return prompts


def _load_sae(path: str, device: torch.device) -> SAE:
    from saesteer.sae.io import load_sae

    return load_sae(path, device=device).eval()


def steering_parts(
    model: Any, spec: SteeringSpec, tokenizer: Any = None, system_prompt: str | None = None
) -> dict[str, Any]:
    """The keyword arguments of :class:`~saesteer.steering.engine.Steering` for ``spec`` (files loaded)."""
    spec.check()
    dev = next(model.parameters()).device
    sae = _load_sae(spec.sae, dev) if spec.sae else None
    direction = RefusalDirection.load(spec.direction) if spec.direction else None
    ivs: list[Any] = [ClampFeature(f, v) for f, v in parse_pairs(spec.clamp, "--clamp")]
    ivs += [ScaleFeature(f, v) for f, v in parse_pairs(spec.scale, "--scale")]
    ivs += [AddFeature(f, v) for f, v in parse_pairs(spec.add_feature, "--add-feature")]
    ivs += [AblateFeature(int(f)) for f in spec.ablate_feature]
    if direction is not None and spec.add_direction is not None:
        ivs.append(direction.add(spec.add_direction))
    if direction is not None and spec.ablate_direction:
        ivs.append(direction.ablate())
    hook: Any = spec.hook or (None if sae is not None else (direction.hook if direction else None))
    gate = _build_gate(model, spec, sae, direction, tokenizer, system_prompt)
    return dict(
        sae=sae,
        interventions=ivs,
        hook=hook,
        positions=spec.positions,
        gate=gate,
        keep_error=spec.keep_error,
        topk_exact=spec.topk_exact,
    )


def _build_gate(
    model: Any,
    spec: SteeringSpec,
    sae: SAE | None,
    direction: RefusalDirection | None,
    tokenizer: Any,
    system_prompt: str | None,
) -> Gate | None:
    if spec.gate is None:
        return None
    if _is_gate_file(spec.gate):  # a fitted gate (threshold, hook and scorer saved by `saesteer fit-gate`)
        from saesteer.steering.gatefile import load_gate

        return load_gate(spec.gate, device=next(model.parameters()).device)
    feat, thr = _gate_parts(spec.gate)
    scorer: Any
    if feat is not None:
        gsae = _load_sae(spec.gate_sae, next(model.parameters()).device) if spec.gate_sae else sae
        if gsae is None:
            raise SaesteerError("--gate feature:F needs an SAE; add --sae DIR or --gate-sae DIR")
        scorer = FeatureScorer(gsae, feat, topk_exact=spec.topk_exact)
        hook = spec.gate_hook or gsae.cfg.hook_name
    else:
        if direction is None:
            raise SaesteerError("--gate direction needs --direction FILE")
        scorer = direction.scorer()
        hook = spec.gate_hook or direction.hook
    if not hook:
        raise SaesteerError("the gate's hook point is unknown; add --gate-hook, e.g. blocks.12.hook_resid_post")
    gate = Gate(scorer, 0.0, hook, spec.gate_reduce, spec.gate_tail)
    if thr is not None:
        return gate.with_threshold(thr)
    if not spec.gate_calibrate:
        raise SaesteerError("--gate needs a threshold ('>T') or --gate-calibrate FILE of harmless prompts")
    if tokenizer is None:
        raise SaesteerError("calibrating a gate needs the model's tokenizer; pass tokenizer= to Steering.from_spec")
    dev_prompts = read_prompt_file(spec.gate_calibrate)
    if not dev_prompts:
        raise SaesteerError(f"--gate-calibrate {spec.gate_calibrate}: no prompts in it; give harmless prompts")
    scores = prompt_scores(model, tokenizer, dev_prompts, gate, system_prompt=system_prompt)
    thr = calibrate(scores, spec.gate_fpr)
    print(
        f"# gate threshold {thr:.4g} (FPR <= {spec.gate_fpr} on {len(dev_prompts)} harmless prompts)", file=sys.stderr
    )
    return gate.with_threshold(thr)
