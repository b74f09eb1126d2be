"""Printing completions: plain, or base and steered side by side (with the gate's decision)."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from saesteer.model.generation import GenerationConfig
from saesteer.steering.gate import Gate, prompt_scores


def _text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def print_plain(prompts: Sequence[Any], outs: Sequence[str], as_json: bool) -> None:
    for prompt, out in zip(prompts, outs, strict=True):
        if as_json:
            print(json.dumps({"prompt": prompt, "completion": out}))
        else:
            print(f"### prompt: {_text(prompt)}\n{out}\n")
    sys.stdout.flush()


def _columns(left: str, right: str, width: int) -> list[str]:
    col = max((width - 3) // 2, 20)

    def wrap(text: str) -> list[str]:
        lines: list[str] = []
        for para in text.splitlines() or [""]:
            lines.extend(textwrap.wrap(para, col, replace_whitespace=False) or [""])
        return lines

    return [f"{a:<{col}} | {b}".rstrip() for a, b in itertools.zip_longest(wrap(left), wrap(right), fillvalue="")]


def print_steered(
    lm: Any,
    prompts: Sequence[Any],
    base: Sequence[str],
    steered: Sequence[str],
    gate: Gate | None,
    gen: GenerationConfig,
    as_json: bool,
    layout: str,
) -> None:
    """Print each prompt's base and steered completions (and the gate's score and decision)."""
    scores: list[float | None] = [None] * len(prompts)
    fired: list[bool | None] = [None] * len(prompts)
    if gate is not None:
        s = prompt_scores(lm.model, lm.tokenizer, prompts, gate, gen.batch_size, gen.system_prompt)
        scores, fired = [float(v) for v in s], [bool(v) for v in gate.decide(s)]
    width = shutil.get_terminal_size((160, 24)).columns
    for i, prompt in enumerate(prompts):
        if as_json:
            row: dict[str, Any] = {"prompt": prompt, "base": base[i], "steered": steered[i]}
            if gate is not None:
                row.update(gate_score=scores[i], gate_fired=fired[i])
            print(json.dumps(row))
            continue
        note = "" if fired[i] is None else f"  [gate score {scores[i]:.3g}: {'steered' if fired[i] else 'not steered'}]"
        print(f"### prompt: {_text(prompt)}{note}")
        if layout == "columns":
            print("\n".join(_columns("--- base", "--- steered", width)))
            print("\n".join(_columns(base[i], steered[i], width)))
        else:
            print(f"--- base\n{base[i]}\n--- steered\n{steered[i]}")
        print()
    sys.stdout.flush()
