"""Build a gate from dev data: the dev prompts of the split registry, the variant comparison, one file.

Dev data (purpose ``gate`` of :class:`~saesteer.evaluation.splits.SplitRegistry`, so never a test
prompt): harmful = HarmBench val + AdvBench dev + JBB-harmful dev + XSTest-unsafe dev (questions, the contrast set of
the look-alikes: without them a probe learns the imperative style of the behaviour sets); look-alikes = XSTest-safe dev +
JBB-benign dev; Alpaca dev. Do-Not-Answer is left out on purpose: it stays unseen by every gate, for
the generalisation check. Without a data directory the built-in suites stand in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.gating.compare import best_variant, compare_variants
from saesteer.gating.threshold import Objective
from saesteer.gating.variants import GateData, VariantResult, VariantSpec, default_specs
from saesteer.steering.gatefile import save_gate

DEV_SETS = {
    "harmful": ["harmbench", "advbench", "jbb:harmful", "xstest:unsafe"],
    "hard": ["xstest:safe", "jbb:benign"],
    "alpaca": ["alpaca"],
}
BUILTIN_DEV_SETS = {"harmful": ["builtin_harmful"], "hard": ["builtin_xsafe"], "alpaca": ["builtin_harmless"]}


@dataclass
class FitGateConfig:
    """How ``saesteer fit-gate`` builds a gate."""

    out: str = opt("gate.safetensors", "gate file to write (one safetensors file; the comparison goes next to it)")
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data; none: built-in)")
    n: int = opt(128, "dev prompts per role (harmful, look-alikes, Alpaca), half to fit and half to calibrate")
    seed: int = opt(0, "seed of the dev-prompt draw")
    layers: list[int] = opt([6, 9, 12], "layers to read (the gate must read at or before the steering layer)")
    hook_kind: str = opt("resid_post", "hook kind at those layers: resid_post, resid_pre or mlp_out")
    variants: list[str] = opt(
        [], "variants KIND@LAYER:RULE to compare (e.g. probe@12:instruction judge); empty: the default grid"
    )
    variant: str = opt("best", "the variant to save: best (by the objective) or a name from the comparison")
    sae: str | None = opt(None, "SAE folder: adds sparse probes on its latents (latent_probe variants)")
    judge: bool = opt(True, "also measure the model as its own judge (not saved: it runs outside the hooks)")
    lam_hard: float = opt(2.0, "objective: cost of one look-alike firing, in missed harmful prompts")
    lam_alpaca: float = opt(4.0, "objective: cost of one Alpaca firing, in missed harmful prompts")
    batch_size: int = opt(16, "prompts per forward pass")
    system_prompt: str | None = opt(None, "system prompt (default: the chat template's)")

    def objective(self) -> Objective:
        return Objective(self.lam_hard, self.lam_alpaca)

    def specs(self, sae_hook: str | None = None) -> list[VariantSpec]:
        if not self.layers:
            raise SaesteerError("no layers to read; pass --layers, e.g. --layers 6 9 12")
        hook = f"blocks.{max(self.layers)}.hook_{self.hook_kind}"
        if self.variants:
            return [VariantSpec.parse(v, hook) for v in self.variants]
        specs = default_specs(sorted(self.layers), self.hook_kind, sae_hook)
        return [s for s in specs if self.judge or s.kind != "judge"]


def gate_dev_data(
    data_dir: str | os.PathLike[str] | None = None, n: int = 128, seed: int = 0, registry: Any = None
) -> GateData:
    """``n`` dev prompts per role (fewer where the dev parts are smaller), spread evenly over each role's sets.

    ``registry``: the study's :class:`SplitRegistry` (the draw is recorded under purpose ``gate``)."""
    from saesteer.evaluation.datafiles import data_dir as resolve
    from saesteer.evaluation.splits import SplitRegistry

    reg = registry if registry is not None else SplitRegistry(data_dir)
    sets = DEV_SETS if resolve(data_dir) is not None else BUILTIN_DEV_SETS
    roles: dict[str, list[Any]] = {}
    for role, names in sets.items():
        texts: list[Any] = []
        pools = {name: reg.part(name, "dev") for name in names}
        share, left = n, len(names)
        for name in sorted(names, key=lambda k: len(pools[k])):  # small sets first; the rest fill up
            k = min(len(pools[name]), share // left)
            texts += [p.text for p in reg.take(name, "gate", n=k, seed=seed)]
            share, left = share - k, left - 1
        roles[role] = texts
    return GateData(roles["harmful"], roles["hard"], roles["alpaca"], sources={r: list(v) for r, v in sets.items()})


@dataclass
class FitResult:
    """The chosen variant (its gate is the one saved), every measured variant, and the provenance written."""

    chosen: VariantResult
    results: list[VariantResult]
    provenance: dict[str, Any] = field(default_factory=dict)


def fit_gate(
    model: Any,
    tokenizer: Any,
    data: GateData,
    specs: Sequence[VariantSpec],
    out: str | os.PathLike[str] | None = None,
    variant: str = "best",
    objective: Objective | None = None,
    sae: Any = None,
    sae_dir: str | os.PathLike[str] | None = None,
    model_name: str = "",
    batch_size: int = 16,
    system_prompt: str | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> FitResult:
    """Measure ``specs`` on ``data``; keep ``variant`` (a spec name, or ``best`` by the objective) and write
    it to ``out`` (one safetensors file, see :mod:`saesteer.steering.gatefile`)."""
    obj = objective or Objective()
    results = compare_variants(model, tokenizer, data, specs, obj, sae=sae, batch_size=batch_size,
                               system_prompt=system_prompt, log=log)  # fmt: skip
    if variant == "best":
        chosen = best_variant(results)
    else:
        named = [r for r in results if r.spec.name == variant]
        if not named:
            raise SaesteerError(
                f"gate variant {variant!r} was not measured; measured: {', '.join(r.spec.name for r in results)}"
            )
        chosen = named[0]
        if chosen.gate is None:
            raise SaesteerError(
                f"{variant!r} is not a steering-hook gate (the judge runs outside); pick a probe or direction"
            )
    prov = {
        "model": model_name,
        "data": data.provenance(),
        "objective": obj.describe(),
        "split": "fit/calibration halves of the dev prompts by text sha256; threshold and metrics on calibration",
        "dev_metrics": chosen.to_dict(),
        "system_prompt": system_prompt,
    }
    if out is not None:
        save_gate(Path(out), chosen.gate, position_rule=chosen.spec.rule, variant=chosen.spec.name,
                  sae_dir=sae_dir, provenance=prov)  # fmt: skip
    return FitResult(chosen, results, prov)
