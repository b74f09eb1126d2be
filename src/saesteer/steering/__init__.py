"""saesteer.steering: SAE feature steering, conditional steering and the refusal-direction baseline.

See :class:`~saesteer.steering.engine.Steering` for the entry point.
"""

from saesteer.steering.direction import RefusalDirection, compute_refusal_direction, post_instruction_tokens
from saesteer.steering.engine import Steering, SteeringHandle
from saesteer.steering.gate import FeatureScorer, Gate, ProjectionScorer, calibrate, fit_probe, prompt_scores
from saesteer.steering.interventions import (
    AblateDirection,
    AblateFeature,
    AddDirection,
    AddFeature,
    ClampFeature,
    ScaleFeature,
)
from saesteer.steering.positions import Positions

__all__ = [
    "AblateDirection",
    "AblateFeature",
    "AddDirection",
    "AddFeature",
    "ClampFeature",
    "FeatureScorer",
    "Gate",
    "Positions",
    "ProjectionScorer",
    "RefusalDirection",
    "ScaleFeature",
    "Steering",
    "SteeringHandle",
    "calibrate",
    "compute_refusal_direction",
    "fit_probe",
    "post_instruction_tokens",
    "prompt_scores",
]
