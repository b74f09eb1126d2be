"""The capability benchmarks through lm-evaluation-harness, on the caller's (steered) model and local data.

lm-evaluation-harness (``pip install lm-eval``; optional) wraps the model instance itself
(``HFLM(pretrained=model, tokenizer=tokenizer)``), so forward hooks registered on it -- the steering -- stay active.
Its tasks normally download from the Hugging Face hub; here every task is a YAML written into a temporary (or given)
folder, with ``dataset_path: json`` and ``data_files`` pointing at JSON converted from the data directory, so the
run is offline. The question samples are the same as :func:`saesteer.evaluation.capability.run_capability` draws
(same loaders, same seed), so the two engines can be compared item by item.

* MMLU: one task per subject, ``include``-ing lm-eval's own ``mmlu/default/_default_template_yaml`` (its prompt),
  shots = the first ``k`` rows of the subject's dev split (lm-eval's ``first_n`` sampler), exactly as the native
  scorer; native and lm-eval log-likelihoods agree to float precision (see tests/evaluation/test_capability.py).
* TruthfulQA: ``include``-s lm-eval's ``truthfulqa_mc1.yaml`` / ``truthfulqa_mc2.yaml`` (QA primer, MC2 scoring);
  the true MC1 answer is moved first because those tasks assume it (``doc_to_target: 0``).
* GSM8K: a plain ``"Question: ...\\nAnswer:"`` generate-until task with the same cleaned shots as the native scorer's
  ``chat=False`` mode (lm-eval's ``gsm8k`` task would use the raw ``<<...>>``/``####`` solutions); its extraction
  takes the first number after ``"The answer is"``, the native one the last, which can differ on rambling outputs.

What lm-eval cannot serve: it pads batches on the right and gives hooks no attention mask, so steering that needs
to know which positions are padding (e.g. a condition averaged over the prompt) sees pad positions; causal attention
keeps real tokens unaffected, so per-position hooks are exact.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json, atomic_write_text
from saesteer.errors import SaesteerError
from saesteer.evaluation.benchmark import BenchmarkResult, rate_result
from saesteer.evaluation.capability import LETTERS, CapabilityConfig, load_capability_data
from saesteer.evaluation.datasets import MathProblem, MCQuestion, TruthfulQAItem
from saesteer.evaluation.gsm8k import clean_solution
from saesteer.evaluation.stats import mean_ci


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _require_lm_eval() -> Path:
    try:
        import lm_eval
    except ImportError:
        raise SaesteerError(
            "lm-evaluation-harness is not installed; pip install lm-eval (or use the native capability scorers)"
        ) from None
    return Path(lm_eval.__file__).parent / "tasks"


def _yaml(path: Path, cfg: dict[str, Any]) -> None:
    import yaml

    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def write_mmlu_tasks(
    folder: Path, questions: Sequence[MCQuestion], shots: Mapping[str, Sequence[MCQuestion]], n_shots: int
) -> list[str]:
    """One lm-eval task per subject of ``questions``; returns the task names."""
    tasks_dir = _require_lm_eval()
    names = []
    for subject in sorted({q.subject for q in questions}):
        data = {"test": folder / f"mmlu_{subject}_test.json", "dev": folder / f"mmlu_{subject}_dev.json"}
        rows: list[dict[str, Any]] = [
            {"id": q.id, "question": q.question, "choices": q.choices, "answer": q.answer, "subject": subject}
            for q in questions
            if q.subject == subject
        ]
        if any(len(r["choices"]) != 4 for r in rows):
            raise SaesteerError(f"lm-eval's MMLU template needs 4 choices; subject {subject} has other counts")
        atomic_write_json(data["test"], rows)
        dev = list(shots.get(subject, []))[:n_shots]
        atomic_write_json(
            data["dev"], [{"question": d.question, "choices": d.choices, "answer": d.answer} for d in dev] or rows[:1]
        )
        name = f"saesteer_mmlu_{subject}"
        _yaml(
            folder / f"{name}.yaml",
            {
                "include": str(tasks_dir / "mmlu" / "default" / "_default_template_yaml"),
                "task": name,
                "tag": ["saesteer_local"],
                "dataset_path": "json",
                "dataset_name": None,
                "dataset_kwargs": {"data_files": {k: str(v) for k, v in data.items()}},
                "description": f"The following are multiple choice questions (with answers) about "
                f"{subject.replace('_', ' ')}.\n\n",
                "num_fewshot": min(n_shots, len(dev)),
            },
        )
        names.append(name)
    return names


def write_truthfulqa_tasks(folder: Path, items: Sequence[TruthfulQAItem]) -> list[str]:
    """``saesteer_truthfulqa_mc1`` and ``_mc2`` over ``items``."""
    tasks_dir = _require_lm_eval()
    rows = []
    for it in items:
        true1 = [c for c, lab in zip(it.mc1_choices, it.mc1_labels, strict=True) if lab]
        rest1 = [c for c, lab in zip(it.mc1_choices, it.mc1_labels, strict=True) if not lab]
        rows.append(
            {
                "id": it.id,
                "question": it.question,
                "mc1_targets": {"choices": true1 + rest1, "labels": [1] * len(true1) + [0] * len(rest1)},
                "mc2_targets": {"choices": it.mc2_choices, "labels": it.mc2_labels},
            }
        )
    data = folder / "truthfulqa_mc.json"
    atomic_write_json(data, rows)
    names = []
    for mc in ("mc1", "mc2"):
        name = f"saesteer_truthfulqa_{mc}"
        _yaml(
            folder / f"{name}.yaml",
            {
                "include": str(tasks_dir / "truthfulqa" / f"truthfulqa_{mc}.yaml"),
                "task": name,
                "tag": ["saesteer_local"],
                "dataset_path": "json",
                "dataset_name": None,
                "dataset_kwargs": {"data_files": {"validation": str(data)}},
                "validation_split": "validation",
            },
        )
        names.append(name)
    return names


def write_gsm8k_task(
    folder: Path, problems: Sequence[MathProblem], shots: Sequence[MathProblem], max_new_tokens: int
) -> list[str]:
    """``saesteer_gsm8k``: plain few-shot prompts with the cleaned shots, greedy, until ``"Question:"``."""
    test, train = folder / "gsm8k_test.json", folder / "gsm8k_shots.json"
    atomic_write_json(test, [{"id": p.id, "question": p.question, "target": p.answer} for p in problems])
    atomic_write_json(
        train,
        [{"question": s.question, "target": clean_solution(s.solution)} for s in shots]
        or [{"question": "1+1?", "target": "The answer is 2."}],
    )
    _yaml(
        folder / "saesteer_gsm8k.yaml",
        {
            "task": "saesteer_gsm8k",
            "tag": ["saesteer_local"],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(test), "train": str(train)}},
            "output_type": "generate_until",
            "test_split": "test",
            "fewshot_split": "train",
            "fewshot_config": {"sampler": "first_n"},
            "num_fewshot": len(shots),
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{target}}",
            "target_delimiter": " ",
            "fewshot_delimiter": "\n\n",
            "generation_kwargs": {"until": ["Question:"], "do_sample": False, "max_gen_toks": max_new_tokens},
            "filter_list": [
                {
                    "name": "answer",
                    "filter": [
                        {"function": "regex", "regex_pattern": r"The answer is \$?(-?[0-9.,]+)"},
                        {"function": "take_first"},
                    ],
                }
            ],
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "regexes_to_ignore": [",", r"\$", r"\.$"],
                }
            ],
        },
    )
    return ["saesteer_gsm8k"]


def _samples(res: dict[str, Any], task: str) -> list[dict[str, Any]]:
    return sorted(res.get("samples", {}).get(task, []), key=lambda s: s["doc_id"])


def _ll(sample: dict[str, Any]) -> list[float]:
    return [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in sample["filtered_resps"]]


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    cfg: CapabilityConfig | None = None,
    benchmarks: Sequence[str] = ("mmlu", "truthfulqa", "gsm8k"),
    batch_size: int | None = None,
    work_dir: str | Path | None = None,
) -> dict[str, BenchmarkResult]:
    """Score ``benchmarks`` with lm-evaluation-harness on the given model instance (hooks active).

    Same samples and result keys as :func:`saesteer.evaluation.capability.run_capability`; ``work_dir`` keeps the
    task YAMLs and JSON for inspection (default: a temporary folder, deleted afterwards).
    """
    _require_lm_eval()
    cfg = cfg or CapabilityConfig()
    d = load_capability_data(cfg, benchmarks)
    tmp = None if work_dir is not None else tempfile.TemporaryDirectory(prefix="saesteer-lmeval-")
    folder = Path(work_dir if work_dir is not None else tmp.name)  # type: ignore[union-attr]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        plan: dict[str, tuple[list[str], list[Any]]] = {}
        if "mmlu" in benchmarks:
            plan["mmlu"] = (write_mmlu_tasks(folder, d.mmlu, d.mmlu_shots, cfg.mmlu_shots), d.mmlu)
        if "truthfulqa" in benchmarks:
            plan["truthfulqa"] = (write_truthfulqa_tasks(folder, d.truthfulqa), d.truthfulqa)
        if "gsm8k" in benchmarks:
            names = write_gsm8k_task(folder, d.gsm8k, d.gsm8k_shots, cfg.gsm8k_max_new_tokens)
            plan["gsm8k"] = (names, d.gsm8k)
        return evaluate_tasks(model, tokenizer, folder, plan, batch_size or cfg.batch_size)
    finally:
        if tmp is not None:
            tmp.cleanup()


def evaluate_tasks(
    model: Any, tokenizer: Any, folder: Path, plan: dict[str, tuple[list[str], list[Any]]], batch_size: int
) -> dict[str, BenchmarkResult]:
    """Run the task YAMLs of ``folder`` named in ``plan`` (benchmark -> (task names, items)) and collect results."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    tm = TaskManager(include_path=str(folder), include_defaults=False)
    out: dict[str, BenchmarkResult] = {}
    for bench, (names, items) in plan.items():
        t0 = time.perf_counter()
        res = lm_eval.simple_evaluate(
            model=lm, tasks=names, task_manager=tm, log_samples=True, bootstrap_iters=0, verbosity="ERROR"
        )
        if res is None:
            raise SaesteerError("lm-eval returned no results; run it in the main process (rank 0)")
        sec = time.perf_counter() - t0
        settings = {"engine": f"lm-eval {lm_eval.__version__}", "tasks": names}
        if bench == "mmlu":
            by_id = {s["doc"]["id"]: s for n in names for s in _samples(res, n)}
            recs = []
            for q in items:
                ll = _ll(by_id[q.id])
                pred = max(range(len(ll)), key=ll.__getitem__)
                recs.append(
                    {
                        "id": q.id,
                        "subject": q.subject,
                        "answer": q.answer,
                        "prediction": pred,
                        "correct": pred == q.answer,
                        "loglik": ll,
                        "letters": LETTERS[: len(ll)],
                    }
                )
            out["mmlu"] = rate_result("mmlu", [r["correct"] for r in recs], sec, settings, recs)
        elif bench == "truthfulqa":
            s1, s2 = _samples(res, names[0]), _samples(res, names[1])
            r1 = [{"id": s["doc"]["id"], "mc1_correct": bool(s["acc"]), "mc1_loglik": _ll(s)} for s in s1]
            out["truthfulqa_mc1"] = rate_result("truthfulqa_mc1", [r["mc1_correct"] for r in r1], sec, settings, r1)
            mass = [float(s["acc"]) for s in s2]
            m, lo, hi = mean_ci(mass) if len(mass) > 1 else (mass[0], math.nan, math.nan)
            r2 = [{"id": s["doc"]["id"], "mc2_true_mass": float(s["acc"]), "mc2_loglik": _ll(s)} for s in s2]
            out["truthfulqa_mc2"] = BenchmarkResult(
                "truthfulqa_mc2", len(mass), m, max(0.0, lo), min(1.0, hi), "t", sec, settings, r2
            )
        else:
            ss = _samples(res, names[0])
            recs = [
                {
                    "id": s["doc"]["id"],
                    "answer": s["doc"]["target"],
                    "prediction": s["filtered_resps"][0],
                    "correct": bool(s["exact_match"]),
                    "completion": s["resps"][0][0],
                }
                for s in ss
            ]
            out["gsm8k"] = rate_result("gsm8k", [r["correct"] for r in recs], sec, settings, recs)
    return out


def dump_results(results: dict[str, BenchmarkResult], path: str | Path) -> None:
    """Write results as JSON (atomic)."""
    atomic_write_json(path, {k: v.to_dict() for k, v in results.items()})
