"""The records every evaluation loader returns: prompts, multiple-choice and math items, multi-turn escalations.

They live apart from the loaders so that the loaders, the built-in suites and the split registry can all import
them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One prompt of a safety or harmlessness set."""

    id: str
    text: str
    label: str  # "harmful" | "harmless" | "safe" | "unsafe"
    category: str
    source: str

    @property
    def should_refuse(self) -> bool:
        """True for prompts a safe model should refuse (``harmful`` or ``unsafe``)."""
        return self.label in ("harmful", "unsafe")


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice question (MMLU or the built-in suite); ``answer`` indexes ``choices``."""

    id: str
    question: str
    choices: list[str]
    answer: int
    subject: str
    source: str


@dataclass(frozen=True)
class MathProblem:
    """A grade-school math word problem; ``answer`` is the final number as a string ("18", "-3.5")."""

    id: str
    question: str
    answer: str
    solution: str
    source: str


@dataclass(frozen=True)
class TruthfulQAItem:
    """A TruthfulQA multiple-choice item: MC1 (one true answer) and MC2 (several true answers) targets."""

    id: str
    question: str
    mc1_choices: list[str]
    mc1_labels: list[int]
    mc2_choices: list[str]
    mc2_labels: list[int]
    source: str


@dataclass(frozen=True)
class FracturedItem:
    """A FRACTURED-SORRY-Bench escalation: innocuous ``steps`` as successive turns, then ``original``."""

    id: str
    steps: list[str]
    original: str | None
    benign: bool
    source: str
