"""HumanEval harness: the sandbox's limits, code extraction, and the problems' own solutions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from saesteer.evaluation.humaneval import build_program, check_solution, extract_code, load_humaneval
from saesteer.evaluation.sandbox import netns_available, run_python

PROBLEMS = load_humaneval()


def test_sandbox_kills_an_infinite_loop() -> None:
    t0 = time.perf_counter()
    r = run_python("import os\nos.fork()\nwhile True:\n    pass\n", timeout_s=2)
    assert r.status == "timeout"
    assert time.perf_counter() - t0 < 10


def test_sandbox_stops_a_memory_bomb() -> None:
    r = run_python("x = bytearray(16 * 1024 ** 3)\nprint('allocated')\n", timeout_s=10, memory_mb=512)
    assert r.status == "failed" and "MemoryError" in r.stderr_tail


def test_sandbox_refuses_network() -> None:
    r = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", timeout_s=5)
    assert r.status == "failed" and "network access is disabled" in r.stderr_tail
    r = run_python("import socket\ns = socket.socket()\n", timeout_s=5)
    assert r.status == "failed"
    if netns_available():  # below the socket patch: a network namespace with no interface but loopback
        prog = (
            "import sys\nrows = open('/proc/self/net/dev').read().splitlines()[2:]\n"
            "names = sorted(r.split(':')[0].strip() for r in rows)\nsys.exit(0 if names == ['lo'] else 3)\n"
        )
        assert run_python(prog, timeout_s=5).passed


def test_sandbox_runs_in_a_temporary_folder_and_leaves_nothing() -> None:
    r = run_python(
        "import os, sys\nopen('out.txt', 'w').write('x')\nsys.exit(0 if 'saesteer-sandbox-' in os.getcwd() else 5)\n"
    )
    assert r.passed


def test_all_canonical_solutions_pass_and_a_wrong_one_fails() -> None:
    assert len(PROBLEMS) == 164
    for p in PROBLEMS[:40]:  # the rest in test_all_canonical_solutions (slow)
        assert check_solution(p, p.canonical_solution) == "passed", p.task_id
    assert check_solution(PROBLEMS[0], "    return not True\n") == "failed"
    assert check_solution(PROBLEMS[2], "    return number\n") == "failed"


@pytest.mark.slow
def test_all_canonical_solutions() -> None:
    bad = [p.task_id for p in PROBLEMS if check_solution(p, p.canonical_solution) != "passed"]
    assert bad == []


def test_extraction_handles_restated_signatures_and_prose() -> None:
    p = PROBLEMS[0]
    full = p.prompt + p.canonical_solution
    answer = f"Sure! Here is the function:\n\n```python\n{full}```\n\nIt compares every pair of numbers."
    assert check_solution(p, extract_code(answer)) == "passed"
    # the restated function without the prompt's imports still runs: the prompt's header stays in the program
    bare = full.replace("from typing import List\n", "")
    assert check_solution(p, extract_code(f"```python\n{bare}\n```")) == "passed"
    # a body-only answer (no fence) is indented under the prompt
    body = "\n".join(line[4:] for line in p.canonical_solution.splitlines())
    assert check_solution(p, extract_code(body)) == "passed"
    assert "check(has_close_elements)" in build_program(p, p.canonical_solution)
    assert extract_code("```\nx = 1\n```") == "x = 1\n"


def test_extraction_drops_example_calls_and_a_cut_off_tail() -> None:
    p = PROBLEMS[0]
    full = p.prompt + p.canonical_solution
    # a wrong example call after the function, and an answer cut off at the token limit mid-statement
    answer = f"```python\n{full}\n# Example usage:\nprint(has_close_elements(None))\nprint(has_close_elements([1.0, 2"
    code = extract_code(answer)
    assert "print(" not in code and "def has_close_elements" in code
    assert check_solution(p, code) == "passed"
    main = f"```python\n{full}\nif __name__ == '__main__':\n    raise SystemExit(1)\n```"
    assert check_solution(p, extract_code(main)) == "passed"


def test_sandbox_cannot_write_outside_its_folder(tmp_path: Path) -> None:
    if not netns_available():
        pytest.skip("no unprivileged namespaces on this kernel: the sandbox cannot make file systems read-only")
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    r = run_python(f"import os\nos.remove({str(target)!r})\n", timeout_s=5)
    assert r.status == "failed" and "Read-only file system" in r.stderr_tail
    assert target.read_text() == "keep me"


@pytest.mark.slow
def test_default_model_solves_easy_problems(default_model_dir: Path) -> None:
    """The harness end to end on the real default model: prompt format, stop strings and extraction together.
    Three short problems the model solves (greedy, bf16); a harness bug fails all of them."""
    from saesteer.evaluation.humaneval import score_humaneval
    from saesteer.model.loading import load

    lm = load(str(default_model_dir), dtype="bfloat16", device="cpu")
    probs = [p for p in PROBLEMS if p.task_id in ("HumanEval/22", "HumanEval/30", "HumanEval/162")]
    res = score_humaneval(lm.model, lm.tokenizer, probs, max_new_tokens=256, batch_size=3)
    assert res.n == 3 and sum(r["correct"] for r in res.records) >= 2, [r["answer"] for r in res.records]
