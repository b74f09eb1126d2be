"""The study's dev stages: refusal direction, harm probe, feature discovery, and the headline choice.

Everything here reads dev prompts only (see :mod:`saesteer.study.prompts`). The direction is the
difference of mean activations ``r = mean(x | harmful) - mean(x | harmless)`` at the last prompt token;
the harm probe is a logistic regression ``sigmoid(w . pool(x) + b)`` on prompt activations pooled as its
gate pools them. The headline clamp value is the one with the largest dev objective
``gain(harmful refusal) - gain(harmless refusal)`` against the unsteered model; the headline gate is the one
whose gated clamp keeps the most of that objective.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json, config_to_dict
from saesteer.errors import SaesteerError
from saesteer.evaluation.safety import refusal_rate
from saesteer.features.config import FindFeaturesConfig
from saesteer.features.discovery import CODE as DISCOVERY_CODE
from saesteer.features.pipeline import FeaturePrompts, find_features
from saesteer.features.report import FeatureReport
from saesteer.gating import load_gate
from saesteer.gating.fit import FitGateConfig, fit_gate, gate_dev_data
from saesteer.gating.variants import variant_table
from saesteer.model.adapter import HookPoint
from saesteer.model.generation import GenerationConfig
from saesteer.model.loading import LoadedModel
from saesteer.stages import StageRunner
from saesteer.steering.direction import RefusalDirection, compute_refusal_direction
from saesteer.steering.gate import Gate, ProjectionScorer, fit_probe, prompt_activations
from saesteer.study.config import StudyConfig
from saesteer.study.design import SCORING_CODE, Condition
from saesteer.study.prompts import StudyPrompts, digest
from saesteer.study.sae_stages import Corpus, TrainedSAE


def stage_direction(runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, prompts: StudyPrompts) -> RefusalDirection:
    harmful, harmless = prompts.texts("direction", True), prompts.texts("direction", False)

    def run(folder: Path) -> RefusalDirection:
        bs = cfg.generation.batch_size
        d = compute_refusal_direction(lm.model, lm.tokenizer, harmful, harmless, cfg.hook, batch_size=bs)
        d.save(folder / "direction.safetensors")
        return d

    inputs = {"model": lm.spec, "hook": cfg.hook, "prompts": digest(harmful + harmless)}
    return runner.run(
        "direction",
        inputs,
        run,
        lambda f: RefusalDirection.load(f / "direction.safetensors"),
        code=("steering", "model"),
    )


def probe_prompts(prompts: StudyPrompts) -> tuple[list[str], list[str]]:
    """(harmful, harmless) gate prompts the probe is fit on: every harmful one, every other harmless one."""
    return prompts.texts("gate", True), prompts.texts("gate", False)[0::2]


def calibration_prompts(prompts: StudyPrompts) -> list[str]:
    """Harmless gate prompts the probe never saw: the gate thresholds are set on them."""
    return prompts.texts("gate", False)[1::2]


def stage_gate_probe(
    runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, prompts: StudyPrompts, reduce: str
) -> ProjectionScorer:
    """Fit the harm probe of a probe gate on the gate's dev prompts (harmful vs harmless, incl. look-alikes)."""
    harmful, harmless = probe_prompts(prompts)

    def run(folder: Path) -> ProjectionScorer:
        bs = cfg.generation.batch_size
        acts = [
            prompt_activations(lm.model, lm.tokenizer, side, cfg.hook, reduce=reduce, batch_size=bs)
            for side in (harmful, harmless)
        ]
        probe = fit_probe(acts[0], acts[1], l2=1e-2)
        probe.save(folder / "probe.safetensors", {"hook": cfg.hook, "reduce": reduce})
        return probe

    inputs = {"model": lm.spec, "hook": cfg.hook, "reduce": reduce, "prompts": digest(harmful + harmless)}
    return runner.run(
        "gate_probe",
        inputs,
        run,
        lambda f: ProjectionScorer.load(f / "probe.safetensors")[0],
        code=("steering", "model"),
    )


@dataclass(frozen=True)
class FittedGate:
    """saesteer.gating's chosen gate variant and the comparison it won (a report table)."""

    gate: Gate
    name: str
    headers: list[str]
    rows: list[list[str]]


def gate_layers(hook: str) -> list[int]:
    """The layers the gate variants read: half, three quarters of the way to the steering layer, and at it."""
    layer = HookPoint.parse(hook).layer
    return sorted({layer // 2, (3 * layer) // 4, layer})


def stage_gate_fit(
    runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, prompts: StudyPrompts, trained: TrainedSAE
) -> FittedGate:
    """Compare saesteer.gating's gate variants on the gate's dev prompts; keep the best (threshold set on dev)."""
    data = gate_dev_data(cfg.data_dir, n=cfg.dev.probe_n, seed=cfg.seed, registry=prompts.registry)
    fcfg = FitGateConfig(layers=gate_layers(cfg.hook), judge=False, batch_size=cfg.generation.batch_size)
    specs = fcfg.specs(trained.sae.cfg.hook_name)

    def run(folder: Path) -> FittedGate:
        res = fit_gate(lm.model, lm.tokenizer, data, specs, out=folder / "gate.safetensors", objective=fcfg.objective(),
                       sae=trained.sae, sae_dir=trained.folder, model_name=lm.spec, batch_size=fcfg.batch_size)  # fmt: skip
        headers, rows = variant_table(res.results)
        atomic_write_json(
            folder / "comparison.json", {"chosen": res.chosen.spec.name, "headers": headers, "rows": rows}
        )
        return load(folder)

    def load(folder: Path) -> FittedGate:
        import json

        d = json.loads((folder / "comparison.json").read_text())
        gate = load_gate(folder / "gate.safetensors", sae=trained.sae)
        return FittedGate(gate, d["chosen"], d["headers"], d["rows"])

    inputs = {"model": lm.spec, "sae": str(trained.folder), "specs": [sp.name for sp in specs],
              "prompts": digest(data.harmful + data.hard + data.alpaca), "objective": [fcfg.lam_hard, fcfg.lam_alpaca]}  # fmt: skip
    return runner.run("gate_fit", inputs, run, load, code=("gating", "steering", "model"))


def features_config(cfg: StudyConfig, trained: TrainedSAE, corpus: Corpus) -> FindFeaturesConfig:
    """The discovery config: the study's SAE, seed and data, and the control checked at the strongest clamp."""
    return replace(
        cfg.features,
        sae=str(trained.folder),
        data_dir=cfg.data_dir,
        seed=trained.seed,
        corpus=None if corpus.real else corpus.path,
        control_multiple=max(cfg.sweep.clamp_values),
    )


def feature_prompts(prompts: StudyPrompts) -> FeaturePrompts:
    """The screen's and the rankers' dev prompts, as the split registry drew them."""
    return FeaturePrompts(
        screen_harmful=prompts.prompts("screen", True),
        screen_harmless=prompts.prompts("screen", False),
        rank_harmful=prompts.prompts("rankers", True),
        rank_harmless=prompts.prompts("rankers", False),
    )


def stage_features(
    runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, trained: TrainedSAE, corpus: Corpus, prompts: StudyPrompts
) -> FeatureReport:
    """Refusal-feature discovery on dev prompts: rank, screen, choose; pick and verify a neutral control."""
    fcfg = features_config(cfg, trained, corpus)
    given = feature_prompts(prompts)
    if trained.seed == cfg.seed:  # archetypes and topic prompts are dev texts the registry did not hand out
        prompts.registry.record("features:archetypes", "rankers", fcfg.archetypes)
        prompts.registry.record("features:topic_prompts", "screen", fcfg.topic_prompts)

    def run(folder: Path) -> FeatureReport:
        out = replace(fcfg, out=str(folder))
        try:
            return find_features(lm.model, lm.tokenizer, trained.sae, out, model_name=lm.spec, strict=False,
                                 prompts=given)  # fmt: skip
        except SaesteerError as exc:
            if not out.require_refusal:
                raise
            # a model that refuses no archetype (small or random): read its plain responses instead
            print(f"saesteer: warning: {exc}; using the archetypes' responses without requiring refusals")
            out = replace(out, require_refusal=False)
            return find_features(lm.model, lm.tokenizer, trained.sae, out, model_name=lm.spec, strict=False,
                                 prompts=given)  # fmt: skip

    name = "features" if trained.seed == cfg.seed else f"features_seed{trained.seed}"
    inputs = {k: v for k, v in config_to_dict(fcfg).items() if k != "out"}
    inputs["prompts"] = {k: digest([p.text for p in v]) for k, v in vars(given).items()}
    return runner.run(name, inputs, run, lambda f: FeatureReport.load(f / "features.json"), code=DISCOVERY_CODE)


@dataclass(frozen=True)
class Choice:
    """The headline conditions, chosen on dev prompts: the clamp, and the gated clamp (None without gates)."""

    clamp: str
    gate: str | None
    dev: dict[str, dict[str, float]]  # condition -> {"harmful": rate, "harmless": rate, "objective": ...}

    def to_dict(self) -> dict[str, Any]:
        return {"clamp": self.clamp, "gate": self.gate, "dev": self.dev}


def stage_choice(
    runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, prompts: StudyPrompts, grid: list[Condition], steer: Any
) -> Choice:
    """Pick the headline clamp, then the headline gate at that clamp, on the choice prompts (dev).

    ``steer(condition)`` builds a condition's steering (or None). Objective: harmful refusal gain minus harmless
    refusal gain against the unsteered model, both judged on generations.
    """
    harmful, harmless = prompts.prompts("clamp_choice", True), prompts.prompts("clamp_choice", False)
    gen = GenerationConfig(max_new_tokens=cfg.generation.max_new_tokens, batch_size=cfg.generation.batch_size)

    def measure(cond: Condition) -> dict[str, float]:
        steering = steer(cond)
        out = {}
        for name, ps in (("harmful", harmful), ("harmless", harmless)):
            if steering is None:
                out[name] = refusal_rate(lm.model, lm.tokenizer, ps, cfg.safety.judge, gen, set_name=name).rate
            else:
                with steering.apply(lm.model):
                    out[name] = refusal_rate(lm.model, lm.tokenizer, ps, cfg.safety.judge, gen, set_name=name).rate
        return out

    def run(folder: Path) -> Choice:
        rates = {c.name: measure(c) for c in grid if c.kind in ("baseline", "refusal_feature")}
        clamp = best_clamp(grid, with_objective(rates))
        rates |= {c.name: measure(c) for c in grid if c.kind == "conditional" and c.unconditional == clamp}
        rates = with_objective(rates)
        gated = [c.name for c in grid if c.kind == "conditional" and c.unconditional == clamp]
        choice = Choice(clamp, max(gated, key=lambda n: rates[n]["objective"]) if gated else None, rates)
        atomic_write_json(folder / "choice.json", choice.to_dict())
        return choice

    inputs = {
        "grid": [c.to_dict() for c in grid if c.kind in ("baseline", "refusal_feature", "conditional")],
        "prompts": digest([p.text for p in harmful + harmless]),
        "gen": config_to_dict(gen),
        "judge": cfg.safety.judge,
    }
    return runner.run("choice", inputs, run, _load_choice, code=SCORING_CODE)


def with_objective(rates: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    base = rates["baseline"]
    return {
        name: {**r, "objective": (r["harmful"] - base["harmful"]) - (r["harmless"] - base["harmless"])}
        for name, r in rates.items()
    }


def best_clamp(grid: list[Condition], rates: dict[str, dict[str, float]]) -> str:
    """The refusal clamp with the best dev objective (ties: the weaker clamp)."""
    clamps = [c for c in grid if c.kind == "refusal_feature"]
    return max(clamps, key=lambda c: (rates[c.name]["objective"], -(c.value or 0.0))).name


def test_grid(grid: list[Condition], choice: Choice, unchosen: bool = True) -> list[Condition]:
    """The conditions scored on test: all but the gated clamps of values the dev choice did not pick and the
    controls clamped at other values than the chosen clamp's (the control is clamped the same way as the headline
    clamp: the same multiple of its own max); with ``unchosen`` off, also not the clamp values and gates it did
    not pick."""
    label = next(c.label for c in grid if c.name == choice.clamp)
    kept = [
        c
        for c in grid
        if (c.kind != "conditional" or c.unconditional == choice.clamp) and (c.kind != "control" or c.label == label)
    ]
    if unchosen:
        return kept
    return [
        c for c in kept if c.name in (choice.clamp, choice.gate) or c.kind not in ("refusal_feature", "conditional")
    ]


def _load_choice(folder: Path) -> Choice:
    import json

    d = json.loads((folder / "choice.json").read_text())
    return Choice(d["clamp"], d.get("gate"), d["dev"])
