"""Steering options for ``saesteer generate``: base and steered completions side by side.

Examples::

    saesteer generate "How do I pick a lock?" --sae runs/sae --clamp 1234=10 --positions all
    saesteer generate --prompts-file p.txt --sae runs/sae --clamp 1234=10 --gate feature:77>3.2
    saesteer generate "Write a poem" --direction refusal.safetensors --add-direction 4.0
    saesteer generate --prompts-file p.txt --direction r.safetensors --ablate-direction --hook resid_pre.12
    saesteer generate --prompts-file p.txt --sae runs/sae --clamp 1234=10 --gate direction \\
        --direction r.safetensors --gate-calibrate harmless_dev.txt --gate-fpr 0.05
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from saesteer.cli.common import config_from_args
from saesteer.config import add_dataclass_args, opt
from saesteer.errors import SaesteerError
from saesteer.model.generation import GenerationConfig, generate
from saesteer.sae.base import SAE
from saesteer.steering.direction import RefusalDirection
from saesteer.steering.engine import Steering
from saesteer.steering.gate import FeatureScorer, Gate, calibrate, prompt_scores
from saesteer.steering.interventions import AblateFeature, AddFeature, ClampFeature, ScaleFeature

_GATE_RE = re.compile(r"^\s*(?:feature:(?P<feat>\d+)|(?P<dir>direction))\s*(?:>\s*(?P<thr>\S+))?\s*$")


@dataclass
class SteeringOptions:
    """Steering options of ``saesteer generate`` (any intervention option turns steering on)."""

    sae: str | None = opt(None, "SAE folder (SAELens layout: cfg.json + sae_weights.safetensors)")
    hook: str | None = opt(
        None, "hook point to steer, e.g. blocks.12.hook_resid_post; unset: the SAE's or the direction file's"
    )
    clamp: list[str] = opt(
        [], "clamp SAE features: F=VALUE ... (error term kept: x + (VALUE - z_F) W_dec[F])", cli=False
    )
    scale: list[str] = opt([], "scale SAE features: F=FACTOR ...", cli=False)
    add_feature: list[str] = opt([], "add SAE decoder rows: F=COEFF ... (x + COEFF W_dec[F])", cli=False)
    ablate_feature: list[int] = opt([], "ablate SAE features: F ... (x - z_F W_dec[F])", cli=False)
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
        "conditional steering: 'feature:F>T' (SAE latent F above T) or 'direction>T' (projection on --direction's unit vector); omit '>T' with --gate-calibrate",
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
    layout: str = opt("columns", "output layout: columns (side by side) or stacked")


def add_steering_args(parser: argparse.ArgumentParser) -> None:
    """Add the steering options (documented in ``--help``) to a parser."""
    group = parser.add_argument_group(
        "steering",
        "Steer with SAE features or a direction; prints base and steered completions side by side. "
        "Example: --sae DIR --clamp 1234=10 --gate feature:77>3.2",
    )
    add_dataclass_args(group, SteeringOptions)  # type: ignore[arg-type]
    for f in dataclasses.fields(SteeringOptions):  # list options: repeatable, values accumulate
        if f.metadata.get("cli") is False:
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                action="extend",
                nargs="+",
                default=None,
                type=int if f.name == "ablate_feature" else str,
                metavar="F" if f.name == "ablate_feature" else "F=V",
                help=f.metadata["help"] + " (repeatable)",
            )


def _pairs(items: Sequence[str], flag: str) -> list[tuple[int, float]]:
    out = []
    for item in items:
        m = re.fullmatch(r"\s*(\d+)\s*=\s*(\S+)\s*", item)
        try:
            if m is None:
                raise ValueError
            out.append((int(m.group(1)), float(m.group(2))))
        except ValueError:
            raise SaesteerError(f"{flag} {item!r}: use FEATURE=NUMBER, e.g. {flag} 1234=10") from None
    return out


def wants_steering(o: SteeringOptions) -> bool:
    return bool(
        o.clamp or o.scale or o.add_feature or o.ablate_feature or o.add_direction is not None or o.ablate_direction
    )


def _load_sae(path: str, device: torch.device) -> SAE:
    try:
        from saesteer.sae.io import load_sae
    except ModuleNotFoundError:
        raise SaesteerError("loading an SAE needs saesteer.sae.io, which this build lacks") from None
    sae = load_sae(path, device=device)
    return sae.eval()


def build_steering(lm: Any, o: SteeringOptions, gen_cfg: GenerationConfig | None = None) -> Steering:
    """A :class:`Steering` from parsed options (loads the SAE and direction files)."""
    dev = lm.device
    sae = _load_sae(o.sae, dev) if o.sae else None
    direction = RefusalDirection.load(o.direction) if o.direction else None
    ivs: list[Any] = [ClampFeature(f, v) for f, v in _pairs(o.clamp, "--clamp")]
    ivs += [ScaleFeature(f, v) for f, v in _pairs(o.scale, "--scale")]
    ivs += [AddFeature(f, v) for f, v in _pairs(o.add_feature, "--add-feature")]
    ivs += [AblateFeature(int(f)) for f in o.ablate_feature]
    if ivs and sae is None:
        raise SaesteerError("feature interventions need an SAE; add --sae DIR")
    if (o.add_direction is not None or o.ablate_direction) and direction is None:
        raise SaesteerError("--add-direction / --ablate-direction need --direction FILE")
    if direction is not None and o.add_direction is not None:
        ivs.append(direction.add(o.add_direction))
    if direction is not None and o.ablate_direction:
        ivs.append(direction.ablate())
    hook: Any = o.hook or (None if sae is not None else (direction.hook if direction else None))
    gate = _build_gate(lm, o, sae, direction, gen_cfg)
    return Steering(
        lm.model,
        sae,
        ivs,
        hook=hook,
        positions=o.positions,
        gate=gate,
        keep_error=o.keep_error,
        topk_exact=o.topk_exact,
    )


def _build_gate(
    lm: Any, o: SteeringOptions, sae: SAE | None, direction: RefusalDirection | None, gen_cfg: GenerationConfig | None
) -> Gate | None:
    if o.gate is None:
        return None
    m = _GATE_RE.match(o.gate)
    if m is None:
        raise SaesteerError(f"--gate {o.gate!r}: use feature:F>T or direction>T (e.g. --gate feature:77>3.2)")
    scorer: Any
    if m.group("feat") is not None:
        gsae = _load_sae(o.gate_sae, lm.device) if o.gate_sae else sae
        if gsae is None:
            raise SaesteerError("--gate feature:F needs an SAE; add --sae DIR or --gate-sae DIR")
        scorer = FeatureScorer(gsae, int(m.group("feat")), topk_exact=o.topk_exact)
        hook = o.gate_hook or gsae.cfg.hook_name
    else:
        if direction is None:
            raise SaesteerError("--gate direction needs --direction FILE")
        scorer = direction.scorer()
        hook = o.gate_hook or direction.hook
    if not hook:
        raise SaesteerError("the gate's hook point is unknown; add --gate-hook, e.g. blocks.12.hook_resid_post")
    gate = Gate(scorer, 0.0, hook, o.gate_reduce, o.gate_tail)
    if m.group("thr") is not None:
        try:
            return gate.with_threshold(float(m.group("thr")))
        except ValueError:
            raise SaesteerError(f"--gate {o.gate!r}: the threshold must be a number") from None
    if not o.gate_calibrate:
        raise SaesteerError("--gate needs a threshold ('>T') or --gate-calibrate FILE of harmless prompts")
    from saesteer.cli.generate_cmd import read_prompts

    dev_prompts = read_prompts(argparse.Namespace(prompts=[], prompts_file=o.gate_calibrate))
    sys_prompt = gen_cfg.system_prompt if gen_cfg else None
    scores = prompt_scores(lm.model, lm.tokenizer, dev_prompts, gate, system_prompt=sys_prompt)
    thr = calibrate(scores, o.gate_fpr)
    print(f"# gate threshold {thr:.4g} (FPR <= {o.gate_fpr} on {len(dev_prompts)} harmless prompts)", file=sys.stderr)
    return gate.with_threshold(thr)


def _columns(left: str, right: str, width: int) -> list[str]:
    col = max((width - 3) // 2, 20)

    def wrap(text: str) -> list[str]:
        lines: list[str] = []
        for para in text.splitlines() or [""]:
            lines.extend(textwrap.wrap(para, col, replace_whitespace=False) or [""])
        return lines

    return [f"{a:<{col}} | {b}".rstrip() for a, b in itertools.zip_longest(wrap(left), wrap(right), fillvalue="")]


def steered_generate(lm: Any, prompts: Sequence[Any], gen_cfg: GenerationConfig, args: argparse.Namespace) -> bool:
    """Print base and steered completions when steering options are set; False when none is."""
    o = config_from_args(SteeringOptions, args)
    if not wants_steering(o):
        if o.sae or o.direction or o.gate:
            raise SaesteerError("no intervention given; add e.g. --clamp F=V, --add-direction C or --ablate-direction")
        return False
    if o.layout not in ("columns", "stacked"):
        raise SaesteerError(f"unknown --layout {o.layout!r}; use columns or stacked")
    steering = build_steering(lm, o, gen_cfg)
    progress = len(prompts) > gen_cfg.batch_size
    base = generate(lm.model, lm.tokenizer, prompts, gen_cfg, progress=progress, desc="base")
    with steering.apply():
        steered = generate(lm.model, lm.tokenizer, prompts, gen_cfg, progress=progress, desc="steered")
    gated: list[bool | None] = [None] * len(prompts)
    scores: list[float | None] = [None] * len(prompts)
    if steering.gate is not None:
        s = prompt_scores(lm.model, lm.tokenizer, prompts, steering.gate, gen_cfg.batch_size, gen_cfg.system_prompt)
        scores = [float(v) for v in s]
        gated = [bool(v) for v in steering.gate.decide(s)]
    width = shutil.get_terminal_size((160, 24)).columns
    for i, prompt in enumerate(prompts):
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        if getattr(args, "json", False):
            row = {"prompt": prompt, "base": base[i], "steered": steered[i]}
            if steering.gate is not None:
                row.update(gate_score=scores[i], gate_fired=gated[i])
            print(json.dumps(row))
            continue
        gate_note = (
            "" if gated[i] is None else f"  [gate score {scores[i]:.3g}: {'steered' if gated[i] else 'not steered'}]"
        )
        print(f"### prompt: {text}{gate_note}")
        if o.layout == "columns":
            print("\n".join(_columns("--- base", "--- steered", width)))
            print("\n".join(_columns(base[i], steered[i], width)))
        else:
            print(f"--- base\n{base[i]}\n--- steered\n{steered[i]}")
        print()
    sys.stdout.flush()
    return True
