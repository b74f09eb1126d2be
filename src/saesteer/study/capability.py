"""The study's capability side: which benchmark items it scores, and the cheap divergence measure.

Test items (MMLU, TruthfulQA, GSM8K, HumanEval) come from the split registry's test parts and few-shot
examples from the dev parts (MMLU dev, GSM8K train), so ``splits.json`` records every text the model is
shown. The divergence measure needs no generation under steering: the unsteered model's own greedy
responses to harmless dev prompts are scored teacher-forced under each condition, giving per answer token
``KL(p_unsteered || p_steered)`` and the cross-entropy increase ``CE_steered - CE_unsteered``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json
from saesteer.evaluation.benchdata import load_gsm8k, load_mmlu
from saesteer.evaluation.capability import CapabilityData
from saesteer.evaluation.divergence import base_responses
from saesteer.evaluation.gsm8k import pick_gsm8k_shots
from saesteer.evaluation.splits import item_texts
from saesteer.model.loading import LoadedModel
from saesteer.stages import StageRunner
from saesteer.study.config import StudyConfig
from saesteer.study.prompts import StudyPrompts, digest


def capability_data(cfg: StudyConfig, prompts: StudyPrompts, real: bool) -> CapabilityData:
    """The capability test items and few-shot examples, drawn through (and recorded by) the split registry."""
    reg, c, seed = prompts.registry, cfg.capability, cfg.seed
    if not real:
        return CapabilityData(
            mmlu=reg.take_items("builtin_mc", "test", c.mmlu_n, seed),
            truthfulqa=reg.take_items("builtin_truthfulqa", "test", c.truthfulqa_n, seed),
            gsm8k=reg.take_items("builtin_math", "test", c.gsm8k_n, seed),
            gsm8k_shots=reg.take_items("builtin_math", "fewshot", c.gsm8k_shots, seed) if c.gsm8k_shots else [],
        )
    per = cfg.evaluate.mmlu_per_subject

    def take(name: str, n: int | None, **kw: Any) -> list[Any]:  # sized 0: not drawn, not recorded
        return reg.take_items(name, "test", n, seed, **kw) if n != 0 else []

    mmlu = take("mmlu", None, per_group=per) if per else take("mmlu", c.mmlu_n)
    data = CapabilityData(mmlu=mmlu, truthfulqa=take("truthfulqa", c.truthfulqa_n), gsm8k=take("gsm8k", c.gsm8k_n))
    if c.mmlu_shots and mmlu:
        subjects = sorted({q.subject for q in mmlu})
        for q in load_mmlu(None, 0, cfg.data_dir, split="dev", subjects=subjects):
            shots = data.mmlu_shots.setdefault(q.subject, [])
            if len(shots) < c.mmlu_shots:
                shots.append(q)
        reg.record("mmlu", "fewshot", [t for qs in data.mmlu_shots.values() for q in qs for t in item_texts(q)])
    if c.gsm8k_shots and data.gsm8k:
        data.gsm8k_shots = pick_gsm8k_shots(load_gsm8k(None, 0, cfg.data_dir, split="train"), c.gsm8k_shots, seed)
        reg.record("gsm8k", "fewshot", [t for p in data.gsm8k_shots for t in item_texts(p)])
    return data


def humaneval_problems(cfg: StudyConfig, prompts: StudyPrompts) -> list[Any]:
    n = cfg.evaluate.humaneval_n
    return prompts.registry.take_items("humaneval", "test", n, cfg.seed) if n > 0 else []


def divergence_prompts(cfg: StudyConfig, prompts: StudyPrompts) -> list[str]:
    """Harmless dev prompts of the clamp choice: the unsteered model's responses to them are the KL/CE text."""
    return prompts.texts("clamp_choice", False)[: cfg.evaluate.divergence_n]


def stage_base_responses(
    runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, prompts: StudyPrompts
) -> tuple[list[str], list[str]]:
    """(prompts, the unsteered model's greedy responses), generated once."""
    texts = divergence_prompts(cfg, prompts)
    n_tokens = cfg.evaluate.divergence_max_new_tokens

    def run(folder: Path) -> tuple[list[str], list[str]]:
        bs = cfg.generation.batch_size
        responses = base_responses(lm.model, lm.tokenizer, texts, max_new_tokens=n_tokens, batch_size=bs)
        atomic_write_json(folder / "responses.json", {"prompts": texts, "responses": responses})
        return texts, responses

    def load(folder: Path) -> tuple[list[str], list[str]]:
        d = json.loads((folder / "responses.json").read_text())
        return list(d["prompts"]), list(d["responses"])

    inputs = {"model": lm.spec, "prompts": digest(texts), "max_new_tokens": n_tokens}
    return runner.run("base_responses", inputs, run, load, code=("evaluation", "model"))
