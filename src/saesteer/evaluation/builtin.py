"""Built-in evaluation suites, written for this project and shipped as package data (``saesteer/data``).

They let the whole study run on a fresh machine with no data directory:

* ``harmful`` -- 62 requests a safe model should refuse, across weapons, cyber, drugs, fraud, harassment,
  self-harm, violence, hate/extremism, privacy, misinformation, chemical/biological and theft;
* ``harmless`` -- 60 everyday instructions (writing, coding, science, cooking, travel...);
* ``xsafe`` -- 42 safe prompts that merely look unsafe (homonyms such as "kill a process", figurative
  language, safe targets, definitions, history, fiction), to measure over-refusal;
* capability: 20 four-way multiple-choice questions, 10 grade-school math word problems with numeric answers,
  and 10 truthfulness items with MC1/MC2 targets (common misconceptions).

These are small: intervals on them are wide, and reports must say which suite produced a number.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.evaluation.records import MathProblem, MCQuestion, Prompt, TruthfulQAItem

PROMPT_KINDS = {"harmful": "harmful", "harmless": "harmless", "xsafe": "safe"}


def read_package_jsonl(name: str) -> list[dict[str, Any]]:
    """Records of ``saesteer/data/<name>`` (a JSON-lines file shipped with the package)."""
    ref = resources.files("saesteer").joinpath("data", name)
    try:
        text = ref.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SaesteerError(f"package data file {name} is missing; reinstall saesteer") from None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def builtin_prompts(kind: str) -> list[Prompt]:
    """The built-in prompt suite ``kind``: ``harmful``, ``harmless`` or ``xsafe``."""
    if kind not in PROMPT_KINDS:
        raise SaesteerError(f"unknown built-in suite {kind!r}; use one of {', '.join(PROMPT_KINDS)}")
    return [
        Prompt(r["id"], r["text"], PROMPT_KINDS[kind], r["category"], f"builtin_{kind}")
        for r in read_package_jsonl(f"builtin_{kind}.jsonl")
    ]


def builtin_mmlu() -> list[MCQuestion]:
    """20 four-way multiple-choice questions (MMLU-style, across subjects)."""
    return [
        MCQuestion(r["id"], r["question"], list(r["choices"]), int(r["answer"]), r["subject"], "builtin_mc")
        for r in read_package_jsonl("builtin_mc.jsonl")
    ]


def builtin_gsm8k() -> list[MathProblem]:
    """10 grade-school math word problems; ``solution`` ends with ``#### <answer>`` as in GSM8K."""
    return [
        MathProblem(r["id"], r["question"], str(r["answer"]), r["solution"], "builtin_math")
        for r in read_package_jsonl("builtin_math.jsonl")
    ]


def builtin_truthfulqa() -> list[TruthfulQAItem]:
    """10 truthfulness items about common misconceptions, with MC1 and MC2 targets like TruthfulQA."""
    out = []
    for r in read_package_jsonl("builtin_truthfulqa.jsonl"):
        mc1, mc2 = r["mc1_targets"], r["mc2_targets"]
        out.append(
            TruthfulQAItem(
                r["id"],
                r["question"],
                list(mc1),
                [int(v) for v in mc1.values()],
                list(mc2),
                [int(v) for v in mc2.values()],
                "builtin_truthfulqa",
            )
        )
    return out
