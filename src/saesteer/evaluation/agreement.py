"""Agreement of a refusal judge with hand labels, and the hand-labelled sample shipped with the package.

``saesteer/data/refusal_labels.jsonl`` holds 160 greedy 48-token outputs of the default model on HarmBench
(val/test), JBB (harmful/benign), XSTest (safe/unsafe) and Alpaca prompts, each read and labelled by hand
(``label_refusal``, with a ``note`` on borderline cases) and assigned to a ``tune`` or held-out ``test`` half.
:func:`judge_agreement` builds a judge from its spec (``keyword``, ``llm:MODEL@BASE_URL``, ``hf:PATH_OR_ID``) and
scores it on the held-out half: what a report states next to every refusal rate that judge produced.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError
from saesteer.evaluation.builtin import read_package_jsonl
from saesteer.evaluation.datasets import load_prompts
from saesteer.evaluation.judges import Judge, get_judge
from saesteer.evaluation.stats import wilson


def load_refusal_labels(path: str | os.PathLike[str] | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """The hand-labelled outputs (package data ``refusal_labels.jsonl`` unless ``path``), optionally one split
    (``tune``: used to tune the keyword list; ``test``: held out)."""
    if path is None:
        recs = read_package_jsonl("refusal_labels.jsonl")
    else:
        p = Path(path)
        if not p.is_file():
            raise SaesteerError(
                f"label file {p} not found; pass a JSON-lines file of {{prompt, completion, label_refusal}}"
            )
        recs = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    _attach_prompts(recs)
    for i, r in enumerate(recs):
        if not all(k in r for k in ("prompt", "completion", "label_refusal")):
            raise SaesteerError(f"label record {i} lacks prompt, completion or label_refusal; fix the label file")
    return [r for r in recs if split is None or r.get("split") == split]


def _attach_prompts(recs: list[dict[str, Any]]) -> None:
    """Fill ``prompt`` from the data directory for records that reference a prompt by set and id.

    The packaged labels store only (prompt_set, prompt_id) and the model's completion, not the upstream
    prompt text; without a data directory the prompt stays empty (the judges read the completion).
    """
    texts: dict[str, dict[str, str]] = {}
    for r in recs:
        if "prompt" in r or "prompt_set" not in r:
            continue
        name = r["prompt_set"]
        if name not in texts:
            try:
                texts[name] = {p.id: p.text for p in load_prompts(name)}
            except SaesteerError:
                texts[name] = {}
        r["prompt"] = texts[name].get(r.get("prompt_id", ""), "")


def agreement(judge: Judge, labels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Agreement of ``judge`` with hand labels: accuracy (with Wilson 95% CI), Cohen's kappa, precision and recall
    for refusals, confusion counts (tp = both say refusal), and the indices of disagreements."""
    if not labels:
        raise SaesteerError("no labels to compare against; pass a non-empty label list")
    pred = judge.judge([str(r["prompt"]) for r in labels], [str(r["completion"]) for r in labels])
    gold = [bool(r["label_refusal"]) for r in labels]
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    tn = sum(not p and not g for p, g in zip(pred, gold, strict=True))
    fp = sum(p and not g for p, g in zip(pred, gold, strict=True))
    fn = sum(not p and g for p, g in zip(pred, gold, strict=True))
    n = len(gold)
    acc, lo, hi = wilson(tp + tn, n)
    p_yes = ((tp + fp) / n) * ((tp + fn) / n)
    p_no = ((tn + fn) / n) * ((tn + fp) / n)
    pe = p_yes + p_no
    kappa = (acc - pe) / (1 - pe) if pe < 1 else math.nan
    return {
        "judge": judge.name,
        "n": n,
        "accuracy": acc,
        "accuracy_lo": lo,
        "accuracy_hi": hi,
        "kappa": kappa,
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "disagreements": [i for i, (p, g) in enumerate(zip(pred, gold, strict=True)) if p != g],
    }


JUDGES = ("keyword", "llm:MODEL@BASE_URL", "hf:PATH_OR_HUB_ID")


def judge_agreement(spec: str | Judge = "keyword", split: str | None = "test") -> dict[str, Any]:
    """The judge ``spec`` names (one of :data:`JUDGES`) scored against the hand labels (default: the held-out
    ``test`` half), plus its spec, so a report can print which judge produced its refusal rates and how well it
    agrees with people."""
    judge = get_judge(spec)
    out = agreement(judge, load_refusal_labels(split=split))
    out["spec"] = spec if isinstance(spec, str) else judge.name
    out["labels"] = f"saesteer/data/refusal_labels.jsonl ({split or 'all'} split)"
    return out
