"""saesteer.gating: fit, compare and save the gates of conditional steering.

A gate decides per prompt whether to steer (:class:`saesteer.steering.gate.Gate`). This package
reads prompts at chosen hooks and positions (:mod:`~saesteer.steering.readout`), fits gate variants
on dev data and measures each on held-out dev prompts (:mod:`~saesteer.gating.compare`), picks a
threshold by an objective that trades the refusal gain kept against over-refusal
(:mod:`~saesteer.gating.threshold`), and saves the chosen gate as one file
(:mod:`~saesteer.steering.gatefile`): ``load_gate(path)`` returns a Gate for ``Steering(..., gate=)``.
"""

from saesteer.gating.compare import best_variant, compare_variants
from saesteer.gating.fit import FitResult, fit_gate, gate_dev_data
from saesteer.gating.threshold import Objective, auroc, best_under_budget, choose_threshold
from saesteer.gating.variants import GateData, VariantResult, VariantSpec, default_specs, variant_table
from saesteer.steering.gatefile import load_gate, read_gate_header, save_gate
from saesteer.steering.readout import RULES, PositionRule, position_rule, position_rules, readouts

__all__ = [
    "RULES",
    "FitResult",
    "GateData",
    "Objective",
    "PositionRule",
    "VariantResult",
    "VariantSpec",
    "auroc",
    "best_under_budget",
    "best_variant",
    "choose_threshold",
    "compare_variants",
    "default_specs",
    "fit_gate",
    "gate_dev_data",
    "load_gate",
    "position_rule",
    "position_rules",
    "read_gate_header",
    "readouts",
    "save_gate",
    "variant_table",
]
