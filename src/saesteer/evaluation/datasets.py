"""Evaluation data by name, from a data directory laid out like ``../shared/data`` or from built-in suites.

Prompt sets (:func:`load_prompts`) come back as :class:`Prompt` records. Names, with splits after a colon or in
``split=`` (no split = every split):

=============== ====================================================== ============ =================
name            file (under the data directory)                        splits       label
=============== ====================================================== ============ =================
xstest          safety/xstest_prompts.csv                              safe, unsafe safe / unsafe
harmbench       safety/harmbench_{test,val}.csv                        test, val    harmful
advbench        safety/advbench_harmful_behaviors.csv                  --           harmful
jbb             safety/jbb_{harmful,benign}.csv                        harmful,     harmful /
                                                                       benign       harmless
donotanswer     safety/donotanswer_en.csv                              --           harmful
alpaca          harmless/alpaca_instructions.json                      --           harmless
builtin_*       package data (no data directory needed)                --           see builtin.py
=============== ====================================================== ============ =================

Capability and multi-turn data have their own loaders, defined in :mod:`saesteer.evaluation.benchdata` and
re-exported here (:func:`load_mmlu`, :func:`load_gsm8k`, :func:`load_truthfulqa`, :func:`load_fractured`,
:func:`load_corpus_texts`, :func:`load_crescendo_prompt`).
Subsampling (``n``) is deterministic under ``seed`` and keeps the file order of the rows it picks.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from saesteer.errors import SaesteerError
from saesteer.evaluation.benchdata import (
    gsm8k_final_answer,
    load_corpus_texts,
    load_crescendo_prompt,
    load_fractured,
    load_gsm8k,
    load_mmlu,
    load_truthfulqa,
)
from saesteer.evaluation.builtin import builtin_prompts
from saesteer.evaluation.datafiles import (
    DATA_FILES,
    ENV_VAR,
    data_dir,
    has_data,
    read_csv,
    read_json,
    require_file,
    subsample,
)
from saesteer.evaluation.records import FracturedItem, MathProblem, MCQuestion, Prompt, TruthfulQAItem

__all__ = [
    "DATA_FILES",
    "ENV_VAR",
    "FracturedItem",
    "MCQuestion",
    "MathProblem",
    "Prompt",
    "TruthfulQAItem",
    "data_dir",
    "gsm8k_final_answer",
    "has_data",
    "load_corpus_texts",
    "load_crescendo_prompt",
    "load_fractured",
    "load_gsm8k",
    "load_mmlu",
    "load_prompts",
    "load_truthfulqa",
    "prompt_set_names",
]
LABELS = ("harmful", "harmless", "safe", "unsafe")


# --- prompt sets -----------------------------------------------------------------------------------------------


def _xstest(split: str | None, root: str | os.PathLike[str] | None) -> list[Prompt]:
    rows = read_csv(
        require_file("xstest", "safety/xstest_prompts.csv", root), ["id", "prompt", "type", "label"], "xstest"
    )
    out = []
    for r in rows:
        label = r["label"].strip()
        if label not in ("safe", "unsafe"):
            raise SaesteerError(f"dataset 'xstest': row id {r['id']} has label {label!r}; expected safe or unsafe")
        if split is None or split == label:
            out.append(Prompt(f"xstest-{r['id']}", r["prompt"], label, r["type"], "xstest"))
    return out


def _harmbench(split: str | None, root: str | os.PathLike[str] | None) -> list[Prompt]:
    out = []
    for sp in [split] if split else ["test", "val"]:
        rows = read_csv(
            require_file("harmbench", f"safety/harmbench_{sp}.csv", root),
            ["Behavior", "SemanticCategory", "BehaviorID"],
            "harmbench",
        )
        for r in rows:
            ctx = (r.get("ContextString") or "").strip()
            text = f"{ctx}\n\n---\n\n{r['Behavior']}" if ctx else r["Behavior"]
            out.append(
                Prompt(f"harmbench-{r['BehaviorID']}", text, "harmful", r["SemanticCategory"], f"harmbench_{sp}")
            )
    return out


def _advbench(split: str | None, root: str | os.PathLike[str] | None) -> list[Prompt]:
    rows = read_csv(require_file("advbench", "safety/advbench_harmful_behaviors.csv", root), ["goal"], "advbench")
    return [Prompt(f"advbench-{i}", r["goal"], "harmful", "", "advbench") for i, r in enumerate(rows)]


def _jbb(split: str | None, root: str | os.PathLike[str] | None) -> list[Prompt]:
    out = []
    for sp in [split] if split else ["harmful", "benign"]:
        rows = read_csv(require_file("jbb", f"safety/jbb_{sp}.csv", root), ["Goal", "Category"], "jbb")
        label = "harmful" if sp == "harmful" else "harmless"
        out += [Prompt(f"jbb-{sp}-{i}", r["Goal"], label, r["Category"], f"jbb_{sp}") for i, r in enumerate(rows)]
    return out


def _donotanswer(split: str | None, root: str | os.PathLike[str] | None) -> list[Prompt]:
    rows = read_csv(
        require_file("donotanswer", "safety/donotanswer_en.csv", root), ["id", "risk_area", "question"], "donotanswer"
    )
    return [Prompt(f"donotanswer-{r['id']}", r["question"], "harmful", r["risk_area"], "donotanswer") for r in rows]


def _alpaca(split: str | None, root: str | os.PathLike[str] | None) -> list[Prompt]:
    path = require_file("alpaca", "harmless/alpaca_instructions.json", root)
    data = read_json(path, "alpaca")
    if not isinstance(data, list) or any(not isinstance(d, dict) or "instruction" not in d for d in data):
        raise SaesteerError(f"dataset 'alpaca': {path} must be a list of {{instruction, category}} records")
    return [
        Prompt(f"alpaca-{i}", d["instruction"], "harmless", d.get("category") or "", "alpaca")
        for i, d in enumerate(data)
    ]


def _builtin(kind: str) -> Callable[[str | None, str | os.PathLike[str] | None], list[Prompt]]:
    def load(split: str | None, root: str | os.PathLike[str] | None) -> list[Prompt]:
        return builtin_prompts(kind)

    return load


_LOADERS: dict[str, tuple[Callable[[str | None, str | os.PathLike[str] | None], list[Prompt]], tuple[str, ...]]] = {
    "xstest": (_xstest, ("safe", "unsafe")),
    "harmbench": (_harmbench, ("test", "val")),
    "advbench": (_advbench, ()),
    "jbb": (_jbb, ("harmful", "benign")),
    "donotanswer": (_donotanswer, ()),
    "alpaca": (_alpaca, ()),
    "builtin_harmful": (_builtin("harmful"), ()),
    "builtin_harmless": (_builtin("harmless"), ()),
    "builtin_xsafe": (_builtin("xsafe"), ()),
}


def prompt_set_names() -> list[str]:
    """Every name :func:`load_prompts` accepts, with its splits (``xstest:safe``)."""
    out = []
    for name, (_, splits) in _LOADERS.items():
        out.append(name)
        out += [f"{name}:{s}" for s in splits]
    return out


def load_prompts(
    name: str,
    split: str | None = None,
    n: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[Prompt]:
    """Load a prompt set by name (``"xstest"``, ``"xstest:safe"``, ``"builtin_harmful"``...), optionally a
    deterministic subsample of ``n`` prompts under ``seed``."""
    if ":" in name:
        name, _, name_split = name.partition(":")
        if split is not None and split != name_split:
            raise SaesteerError(f"split given twice ({name_split!r} in the name, {split!r} as split); give it once")
        split = name_split
    key = name.strip().lower()
    if key not in _LOADERS:
        raise SaesteerError(f"unknown prompt set {name!r}; known: {', '.join(prompt_set_names())}")
    loader, splits = _LOADERS[key]
    if split is not None and split not in splits:
        known = ", ".join(splits) if splits else "none (omit the split)"
        raise SaesteerError(f"prompt set {key!r} has no split {split!r}; splits: {known}")
    prompts = loader(split, data_dir)
    return subsample(prompts, n, seed, f"{key}:{split}")
