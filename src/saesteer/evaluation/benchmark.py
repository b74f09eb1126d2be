"""A benchmark score with its n and 95% interval, and the few-shot fitting every prompt-building benchmark shares.

Accuracy-type scores (``k`` correct of ``n``) carry the Wilson score interval (:func:`saesteer.evaluation.stats.wilson`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from saesteer.evaluation.stats import wilson


@dataclass
class BenchmarkResult:
    """A benchmark score with its sample size, 95% interval and the per-item records behind it."""

    benchmark: str
    n: int
    score: float
    ci_low: float
    ci_high: float
    interval: str  # "wilson" (accuracy) or "t" (mean of a continuous score)
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """``"mmlu: 45.0% [30.7, 60.2] (n=40, 1.2 s/item)"``."""
        per = self.seconds / self.n if self.n else math.nan
        return (
            f"{self.benchmark}: {100 * self.score:.1f}% [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}] "
            f"(n={self.n}, {per:.2f} s/item)"
        )


def rate_result(
    benchmark: str, correct: list[bool], seconds: float, settings: dict[str, Any], records: list[dict[str, Any]]
) -> BenchmarkResult:
    p, lo, hi = wilson(sum(correct), len(correct))
    return BenchmarkResult(benchmark, len(correct), p, lo, hi, "wilson", seconds, settings, records)


def fit_shots(tokenizer: Any, build: Any, n_shots: int, max_length: int) -> tuple[str, int]:
    """The prompt ``build(k)`` with the most shots ``k <= n_shots`` that fits ``max_length`` tokens (or k = 0)."""
    for k in range(n_shots, -1, -1):
        text = build(k)
        if k == 0 or len(tokenizer(text, add_special_tokens=False)["input_ids"]) < max_length:
            return text, k
    raise AssertionError("unreachable")
