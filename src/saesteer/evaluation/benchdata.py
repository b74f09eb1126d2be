"""Capability and multi-turn data: MMLU, GSM8K, TruthfulQA, FRACTURED-SORRY-Bench, the text corpus, Crescendo.

Each loader reads its file under the data directory (see :mod:`saesteer.evaluation.datafiles`), checks its
columns or keys, and returns plain dataclasses; ``n`` draws a deterministic subsample under ``seed``. The
capability loaders take ``builtin=True`` to use the small suites shipped with the package instead. All of them
are re-exported by :mod:`saesteer.evaluation.datasets`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.evaluation.builtin import builtin_gsm8k, builtin_mmlu, builtin_truthfulqa
from saesteer.evaluation.datafiles import data_dir_or_error, read_csv, read_json, read_jsonl, require_file, subsample
from saesteer.evaluation.records import FracturedItem, MathProblem, MCQuestion, TruthfulQAItem

# --- capability data -------------------------------------------------------------------------------------------

_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def gsm8k_final_answer(answer: str) -> str:
    """The number after ``####`` in a GSM8K answer, commas and ``$`` removed (``"1,200"`` -> ``"1200"``)."""
    tail = answer.rsplit("####", 1)[-1] if "####" in answer else answer
    m = _NUM.search(tail.replace(",", "").replace("$", ""))
    if m is None:
        raise SaesteerError(f"GSM8K answer has no final number after '####': {answer[-80:]!r}; use the upstream file")
    return m.group(0)


def load_mmlu(
    n: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    subjects: Sequence[str] | None = None,
    builtin: bool = False,
) -> list[MCQuestion]:
    """MMLU questions from ``capability/mmlu/{split}/SUBJECT_{split}.csv`` (split test or dev), optionally of some
    subjects only, subsampled to ``n`` under ``seed``. ``builtin=True``: the built-in 20-question suite instead."""
    if builtin:
        return subsample(builtin_mmlu(), n, seed, "builtin_mc")
    if split not in ("test", "dev"):
        raise SaesteerError(f"MMLU split {split!r} unknown; use test or dev")
    root = data_dir_or_error("mmlu", f"capability/mmlu/{split}/", data_dir)
    folder = root / "capability" / "mmlu" / split
    files = sorted(folder.glob(f"*_{split}.csv"))
    if not files:
        raise SaesteerError(f"dataset 'mmlu': no *_{split}.csv files in {folder}; put the MMLU CSVs there")
    by_subject = {f.name[: -len(f"_{split}.csv")]: f for f in files}
    if subjects:
        unknown = [s for s in subjects if s not in by_subject]
        if unknown:
            raise SaesteerError(f"unknown MMLU subject(s) {', '.join(unknown)}; known: {', '.join(by_subject)}")
        by_subject = {s: by_subject[s] for s in subjects}
    out = []
    cols = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    for subject, f in by_subject.items():
        for i, r in enumerate(read_csv(f, cols, "mmlu")):
            ans = r["answer"].strip()
            if ans not in ("0", "1", "2", "3"):
                raise SaesteerError(f"dataset 'mmlu': {f} row {i} has answer {ans!r}; expected 0-3")
            out.append(
                MCQuestion(
                    f"mmlu-{subject}-{split}-{i}",
                    r["question"],
                    [r[f"choice{j}"] for j in range(4)],
                    int(ans),
                    subject,
                    "mmlu",
                )
            )
    return subsample(out, n, seed, f"mmlu:{split}")


def load_gsm8k(
    n: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    builtin: bool = False,
) -> list[MathProblem]:
    """GSM8K problems from ``capability/gsm8k/{split}.jsonl`` (test or train; train serves few-shot examples).
    ``builtin=True``: the built-in 10-problem suite instead."""
    if builtin:
        return subsample(builtin_gsm8k(), n, seed, "builtin_math")
    if split not in ("test", "train"):
        raise SaesteerError(f"GSM8K split {split!r} unknown; use test or train")
    path = require_file("gsm8k", f"capability/gsm8k/{split}.jsonl", data_dir)
    recs = read_jsonl(path, ["question", "answer"], "gsm8k")
    out = [
        MathProblem(f"gsm8k-{split}-{i}", r["question"], gsm8k_final_answer(r["answer"]), r["answer"], "gsm8k")
        for i, r in enumerate(recs)
    ]
    return subsample(out, n, seed, f"gsm8k:{split}")


def _targets(rec: dict[str, Any], key: str, path: Path) -> tuple[list[str], list[int]]:
    t = rec.get(key)
    if not isinstance(t, dict) or not t:
        raise SaesteerError(f"dataset 'truthfulqa': {path} item lacks a {key} mapping; use the upstream mc_task.json")
    return list(t.keys()), [int(v) for v in t.values()]


def load_truthfulqa(
    n: int | None = None, seed: int = 0, data_dir: str | os.PathLike[str] | None = None, builtin: bool = False
) -> list[TruthfulQAItem]:
    """TruthfulQA MC items from ``capability/truthfulqa/mc_task.json``. ``builtin=True``: the built-in 10 items."""
    if builtin:
        return subsample(builtin_truthfulqa(), n, seed, "builtin_truthfulqa")
    path = require_file("truthfulqa", "capability/truthfulqa/mc_task.json", data_dir)
    data = read_json(path, "truthfulqa")
    if not isinstance(data, list):
        raise SaesteerError(f"dataset 'truthfulqa': {path} must be a list of {{question, mc1_targets, mc2_targets}}")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or "question" not in rec:
            raise SaesteerError(f"dataset 'truthfulqa': {path} item {i} lacks 'question'; use the upstream file")
        c1, l1 = _targets(rec, "mc1_targets", path)
        c2, l2 = _targets(rec, "mc2_targets", path)
        out.append(TruthfulQAItem(f"truthfulqa-{i}", rec["question"], c1, l1, c2, l2, "truthfulqa"))
    return subsample(out, n, seed, "truthfulqa")


def load_fractured(
    n: int | None = None, seed: int = 0, data_dir: str | os.PathLike[str] | None = None, benign: bool = False
) -> list[FracturedItem]:
    """FRACTURED-SORRY-Bench escalations. Harmful items carry the original SORRY-Bench request (items whose
    original is missing upstream are dropped); ``benign=True`` gives the benign control decompositions."""
    base = "multiturn/fractured_sorry_bench/"
    fname = "benign_questions_decomposed.jsonl" if benign else "question_breakdowns.jsonl"
    recs = read_jsonl(
        require_file("fractured_sorry_bench", base + fname, data_dir),
        ["original_question", "decomposed_steps"],
        "fractured_sorry_bench",
    )
    originals: dict[str, str] = {}
    if not benign:
        prompts = read_jsonl(
            require_file("fractured_sorry_bench", base + "sorry_bench_prompts.jsonl", data_dir),
            ["fractured_id", "prompt"],
            "fractured_sorry_bench",
        )
        originals = {str(p["fractured_id"]): str(p["prompt"]) for p in prompts}
    out = []
    for r in recs:
        fid = str(r["original_question"])
        steps = r["decomposed_steps"]
        if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
            raise SaesteerError(f"dataset 'fractured_sorry_bench': {fid} decomposed_steps must be a list of strings")
        if not benign and fid not in originals:
            continue
        out.append(
            FracturedItem(
                f"fsb-{'benign-' if benign else ''}{fid}",
                list(steps),
                originals.get(fid),
                benign,
                "fractured_sorry_bench",
            )
        )
    return subsample(out, n, seed, f"fractured:{benign}")


def load_corpus_texts(
    n: int | None = None, seed: int = 0, data_dir: str | os.PathLike[str] | None = None, min_chars: int = 1
) -> list[str]:
    """Document texts of ``corpus/english_mix_corpus.jsonl.gz`` (at least ``min_chars`` long), subsampled."""
    path = require_file("corpus", "corpus/english_mix_corpus.jsonl.gz", data_dir)
    texts = [str(r["text"]) for r in read_jsonl(path, ["text"], "corpus") if len(str(r["text"])) >= min_chars]
    return subsample(texts, n, seed, "corpus")


def load_crescendo_prompt(data_dir: str | os.PathLike[str] | None = None) -> str:
    """The Crescendo attacker system-prompt template (``value`` of crescendo_variant_1.yaml)."""
    import yaml

    path = require_file("crescendo", "multiturn/crescendo/crescendo_variant_1.yaml", data_dir)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SaesteerError(f"dataset 'crescendo': {path} is not valid YAML ({exc}); use the upstream file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("value"), str):
        raise SaesteerError(f"dataset 'crescendo': {path} lacks a 'value' text; use the upstream file")
    return str(doc["value"])
