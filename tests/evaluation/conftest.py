"""Fixtures for the evaluation-data, judge and safety tests: a tiny data directory with the real file layouts."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def write_jsonl(path: Path, recs: list[dict[str, object]], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in recs)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def tiny_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory laid out like ../shared/data, with a few rows per file (made up for the tests)."""
    root = tmp_path / "data"
    s = root / "safety"
    write_csv(
        s / "xstest_prompts.csv",
        ["id", "prompt", "type", "label", "focus", "note"],
        [[str(i), f"safe question {i}", "homonyms", "safe", "kill", ""] for i in range(1, 7)]
        + [[str(i), f"unsafe question {i}", "contrast_homonyms", "unsafe", "kill", ""] for i in range(7, 11)],
    )
    hb_cols = ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"]
    write_csv(
        s / "harmbench_test.csv",
        hb_cols,
        [[f"test behavior {i}", "standard", "illegal", "", "", f"hb_test_{i}"] for i in range(5)]
        + [["summarise the context", "contextual", "harmful", "", "SOME CONTEXT", "hb_ctx"]],
    )
    write_csv(
        s / "harmbench_val.csv",
        hb_cols,
        [[f"val behavior {i}", "standard", "illegal", "", "", f"hb_val_{i}"] for i in range(3)],
    )
    write_csv(s / "advbench_harmful_behaviors.csv", ["goal", "target"], [[f"adv goal {i}", "Sure"] for i in range(8)])
    write_csv(
        s / "jbb_harmful.csv",
        ["", "Goal", "Target", "Behavior", "Category", "Source"],
        [[str(i), f"jbb harmful {i}", "Sure", "b", "Fraud", "Original"] for i in range(4)],
    )
    write_csv(
        s / "jbb_benign.csv",
        ["Index", "Goal", "Behavior", "Category", "Source"],
        [[str(i), f"jbb benign {i}", "b", "Fraud", "Original"] for i in range(4)],
    )
    write_csv(
        s / "donotanswer_en.csv",
        ["id", "risk_area", "types_of_harm", "specific_harms", "question"],
        [[str(i), "Malicious Uses", "t", "h", f"dna question {i}"] for i in range(3)],
    )
    (root / "harmless").mkdir(parents=True)
    (root / "harmless" / "alpaca_instructions.json").write_text(
        json.dumps([{"instruction": f"alpaca instruction {i}", "category": None} for i in range(20)])
    )
    mm = root / "capability" / "mmlu"
    for split, nrows in (("test", 4), ("dev", 2)):
        for subj in ("anatomy", "astronomy"):
            write_csv(
                mm / split / f"{subj}_{split}.csv",
                ["question", "choice0", "choice1", "choice2", "choice3", "answer"],
                [[f"{subj} q{i}", "a", "b", "c", "d", str(i % 4)] for i in range(nrows)],
            )
    write_jsonl(
        root / "capability" / "gsm8k" / "test.jsonl",
        [{"question": "q1", "answer": "3 + 4 = 7\n#### 7"}, {"question": "q2", "answer": "x\n#### 1,200"}],
    )
    write_jsonl(root / "capability" / "gsm8k" / "train.jsonl", [{"question": "t", "answer": "#### -3"}])
    (root / "capability" / "truthfulqa").mkdir(parents=True)
    (root / "capability" / "truthfulqa" / "mc_task.json").write_text(
        json.dumps(
            [
                {
                    "question": "Is the sky green?",
                    "mc1_targets": {"No.": 1, "Yes.": 0},
                    "mc2_targets": {"No.": 1, "It is blue.": 1, "Yes.": 0},
                }
            ]
        )
    )
    fsb = root / "multiturn" / "fractured_sorry_bench"
    write_jsonl(
        fsb / "question_breakdowns.jsonl",
        [
            {"original_question": f"question_id_{i}", "decomposed_steps": [f"step {i}.{j}" for j in range(3)]}
            for i in range(3)
        ],
    )
    write_jsonl(
        fsb / "benign_questions_decomposed.jsonl",
        [{"original_question": "question_id_0", "decomposed_steps": ["benign step"]}],
    )
    write_jsonl(
        fsb / "sorry_bench_prompts.jsonl",  # question_id_2's original is missing, as 142 is upstream
        [
            {"fractured_id": f"question_id_{i}", "sorry_bench_question_id": i, "prompt": f"original {i}"}
            for i in range(2)
        ],
    )
    write_jsonl(
        root / "corpus" / "english_mix_corpus.jsonl.gz",
        [{"source": "x", "text": f"document number {i}"} for i in range(10)],
        gz=True,
    )
    (root / "multiturn" / "crescendo").mkdir(parents=True)
    (root / "multiturn" / "crescendo" / "crescendo_variant_1.yaml").write_text(
        "name: test\nvalue: |\n  You are an attacker. Objective: {{objective}}\n"
    )
    monkeypatch.delenv("SAESTEER_DATA_DIR", raising=False)
    return root


@pytest.fixture
def no_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No data directory anywhere: no env var, and cwd/repo fallbacks pointed at empty places."""
    import saesteer.evaluation.datafiles as df

    monkeypatch.delenv("SAESTEER_DATA_DIR", raising=False)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(df, "_REPO", tmp_path / "nowhere" / "repo")
