"""Capability benchmarks on any Hugging Face causal LM, steered or not: MMLU, TruthfulQA MC1/MC2, GSM8K.

Every score goes through ``model(...)`` or ``model.generate(...)``, so forward hooks the caller registered on the
model (SAE-feature clamping, a direction ablation) are active while it is measured.

* **MMLU** -- log-likelihood multiple choice in the standard format (``"The following are multiple choice questions
  (with answers) about SUBJECT."``, then ``"Question\\nA. ...\\nD. ...\\nAnswer:"``), ``k`` shots from the subject's
  dev split in file order (as lm-evaluation-harness does); the prediction is the argmax of ``log p(" A" | prompt)``
  over the letters: one forward pass per question, batched.
* **TruthfulQA** -- the QA-primer prompt of Lin et al. (2022), ``log p(" " + answer | prompt)`` for every answer.
  MC1: the single true answer has the highest log-likelihood. MC2: the normalised probability mass on true answers.
* **GSM8K** -- ``k`` worked examples from the train split (calculator annotations removed, ending in
  ``"The answer is N."``), greedy decoding, exact match of the final number. ``chat=True`` (default) renders the shots
  as earlier user/assistant turns of the model's chat template, the way a chat model is steered and used;
  ``chat=False`` uses a plain ``"Question: ...\\nAnswer:"`` prompt (closest to lm-evaluation-harness); see
  :mod:`saesteer.evaluation.gsm8k`.

* **HumanEval** (on request) -- pass@1 of greedy chat completions run in a sandbox; see
  :mod:`saesteer.evaluation.humaneval`.

Steering: hooks the caller set apply; or pass ``steering`` to :func:`run_capability`. A gated steering makes one
decision per question from the chat-formatted question, shared by all its options (:mod:`saesteer.evaluation.gated`).
Log-likelihoods come from :func:`saesteer.evaluation.loglik.loglikelihoods` (batched, lm-eval's tokenisation).
Prompts longer than ``max_length`` lose few-shot examples first, then tokens from the left. ``builtin=True`` scores
the package's small built-in suites instead (no data directory): 0-shot MMLU-style questions, GSM8K shots taken from
the built-in problems not in the sample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.evaluation.benchdata import load_gsm8k, load_mmlu, load_truthfulqa
from saesteer.evaluation.benchmark import BenchmarkResult, fit_shots, rate_result
from saesteer.evaluation.gated import score_gated
from saesteer.evaluation.gsm8k import pick_gsm8k_shots, score_gsm8k
from saesteer.evaluation.humaneval import HumanEvalProblem, chat_prompt, load_humaneval, score_humaneval
from saesteer.evaluation.loglik import context_limit, loglikelihoods
from saesteer.evaluation.records import MathProblem, MCQuestion, TruthfulQAItem
from saesteer.evaluation.stats import mean_ci

LETTERS = "ABCDEFGHIJ"

# The QA primer of the TruthfulQA paper (Lin et al., 2022), the standard few-shot context for its MC tasks.
TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


@dataclass
class CapabilityConfig:
    """Which capability benchmarks to run and how big (sizes are CPU budgets; every result reports its n)."""

    mmlu_n: int = opt(40, "MMLU test questions, sampled across all subjects under --seed")
    mmlu_shots: int = opt(5, "MMLU few-shot examples from each subject's dev split (0 = zero-shot, at most 5)")
    truthfulqa_n: int = opt(40, "TruthfulQA MC questions (scored for MC1 and MC2)")
    gsm8k_n: int = opt(10, "GSM8K test problems (greedy generation: the slow one)")
    gsm8k_shots: int = opt(4, "GSM8K worked examples from the train split (short ones, picked under --seed)")
    gsm8k_chat: bool = opt(True, "GSM8K through the chat template (shots as earlier turns); off: plain prompt")
    gsm8k_max_new_tokens: int = opt(256, "GSM8K tokens generated per answer")
    humaneval_n: int | None = opt(None, "HumanEval problems (None: all 164), when humaneval is among the benchmarks")
    humaneval_max_new_tokens: int = opt(512, "HumanEval tokens generated per answer")
    batch_size: int = opt(8, "sequences per forward pass or generate batch")
    generate_batch_size: int | None = opt(
        None,
        "GSM8K and HumanEval answers generated per batch (None: batch_size); long, uneven answers gain from more, "
        "since rows that ended leave the batch (bench/drop_finished.py)",
    )
    max_length: int = opt(
        2048,
        "longest prompt in tokens (capped by the model's context); longer prompts drop "
        "few-shot examples, then tokens from the left",
    )
    seed: int = opt(0, "seed of the question samples and the GSM8K shot choice")
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data)")
    builtin: bool = opt(False, "score the built-in suites instead of the data directory (smaller, no files needed)")
    share_prefix: bool = opt(
        False,
        "TruthfulQA: run the QA primer all answers share once and reuse its KV cache (~2x faster); MMLU: the same "
        "per subject (header and shots); same scores (up to bf16 rounding) under per-position steering, not under "
        "a gate that judges the whole prompt",
    )


# --- MMLU ------------------------------------------------------------------------------------------------------


def mc_block(q: MCQuestion) -> str:
    """``"Question\\nA. ...\\nB. ...\\nAnswer:"``."""
    opts = "".join(f"\n{LETTERS[j]}. {c}" for j, c in enumerate(q.choices))
    return f"{q.question.strip()}{opts}\nAnswer:"


def mmlu_prompt(q: MCQuestion, shots: Sequence[MCQuestion] = ()) -> str:
    """The standard MMLU prompt: subject header, solved shots, then the question ending in ``"Answer:"``."""
    head = f"The following are multiple choice questions (with answers) about {q.subject.replace('_', ' ')}.\n\n"
    return head + "".join(f"{mc_block(s)} {LETTERS[s.answer]}\n\n" for s in shots) + mc_block(q)


def score_mmlu(
    model: Any,
    tokenizer: Any,
    questions: Sequence[MCQuestion],
    shots: Mapping[str, Sequence[MCQuestion]] | None = None,
    n_shots: int = 0,
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = False,
    share_prefix: bool = False,
) -> BenchmarkResult:
    """Accuracy of ``argmax_letter log p(" letter" | prompt)``; ``shots[subject]`` gives the first ``n_shots``.
    ``share_prefix``: per subject, the token prefix its prompts share (header and shots) runs once and its KV cache
    is reused (see :func:`saesteer.evaluation.loglik.loglikelihoods`)."""
    if not questions:
        raise SaesteerError("no MMLU questions to score; raise mmlu_n")
    t0 = time.perf_counter()
    max_length = context_limit(model, max_length)
    prompts, used = [], []
    for q in questions:
        pool = list((shots or {}).get(q.subject, []))[:n_shots]
        text, k = fit_shots(tokenizer, lambda k, q=q, pool=pool: mmlu_prompt(q, pool[:k]), len(pool), max_length)
        prompts.append(text)
        used.append(k)
    reqs = [(p, f" {LETTERS[j]}") for p, q in zip(prompts, questions, strict=True) for j in range(len(q.choices))]
    if share_prefix:  # a subject's header and shots run once, its questions continue their KV cache
        by_subject: dict[str, list[int]] = {}
        i = 0
        for q in questions:
            by_subject.setdefault(q.subject, []).extend(range(i, i + len(q.choices)))
            i += len(q.choices)
        lls = [0.0] * len(reqs)
        for idx in by_subject.values():
            part = loglikelihoods(model, tokenizer, [reqs[j] for j in idx], batch_size, max_length, False, "mmlu", True)
            for j, v in zip(idx, part, strict=True):
                lls[j] = v
    else:
        lls = loglikelihoods(model, tokenizer, reqs, batch_size, max_length, progress, "mmlu")
    records, correct, i = [], [], 0
    for q, k in zip(questions, used, strict=True):
        ll = lls[i : i + len(q.choices)]
        i += len(q.choices)
        pred = max(range(len(ll)), key=ll.__getitem__)
        correct.append(pred == q.answer)
        records.append(
            {
                "id": q.id,
                "subject": q.subject,
                "answer": q.answer,
                "prediction": pred,
                "correct": pred == q.answer,
                "loglik": ll,
                "shots": k,
            }
        )
    settings = {"shots": n_shots, "format": "lm-eval mmlu (letters, log-likelihood)"}
    return rate_result("mmlu", correct, time.perf_counter() - t0, settings, records)


# --- TruthfulQA ------------------------------------------------------------------------------------------------


def truthfulqa_prompt(question: str) -> str:
    return f"{TRUTHFULQA_PRIMER}\n\nQ: {question}\nA:"


def score_truthfulqa(
    model: Any,
    tokenizer: Any,
    items: Sequence[TruthfulQAItem],
    batch_size: int = 8,
    max_length: int = 2048,
    progress: bool = False,
    share_prefix: bool = False,
) -> tuple[BenchmarkResult, BenchmarkResult]:
    """(MC1, MC2) results; each answer is scored once even when it appears in both target lists.
    ``share_prefix``: see :func:`saesteer.evaluation.loglik.loglikelihoods`."""
    if not items:
        raise SaesteerError("no TruthfulQA items to score; raise truthfulqa_n")
    t0 = time.perf_counter()
    index: dict[tuple[str, str], int] = {}
    for it in items:
        for ans in (*it.mc1_choices, *it.mc2_choices):
            index.setdefault((truthfulqa_prompt(it.question), " " + ans), len(index))
    lls = loglikelihoods(model, tokenizer, list(index), batch_size, max_length, progress, "truthfulqa", share_prefix)
    mc1, mc2, recs = [], [], []
    for it in items:
        ctx = truthfulqa_prompt(it.question)
        l1 = [lls[index[(ctx, " " + a)]] for a in it.mc1_choices]
        l2 = [lls[index[(ctx, " " + a)]] for a in it.mc2_choices]
        if sum(it.mc1_labels) != 1:
            raise SaesteerError(f"TruthfulQA item {it.id} has {sum(it.mc1_labels)} true MC1 answers; expected 1")
        ok = it.mc1_labels[max(range(len(l1)), key=l1.__getitem__)] == 1
        top = max(l2)
        probs = [math.exp(v - top) for v in l2]
        mass = sum(p for p, lab in zip(probs, it.mc2_labels, strict=True) if lab) / sum(probs)
        mc1.append(ok)
        mc2.append(mass)
        recs.append({"id": it.id, "mc1_correct": ok, "mc2_true_mass": mass, "mc1_loglik": l1, "mc2_loglik": l2})
    sec = time.perf_counter() - t0
    settings = {"format": "TruthfulQA QA primer, answers scored by summed log-likelihood"}
    r1 = rate_result("truthfulqa_mc1", mc1, sec, settings, recs)
    m, lo, hi = mean_ci(mc2) if len(mc2) > 1 else (mc2[0], math.nan, math.nan)
    r2 = BenchmarkResult("truthfulqa_mc2", len(mc2), m, max(0.0, lo), min(1.0, hi), "t", sec, settings, recs)
    return r1, r2


# --- all together ----------------------------------------------------------------------------------------------

BENCHMARKS = ("mmlu", "truthfulqa", "gsm8k")
#: every benchmark :func:`run_capability` knows; humaneval (generation + sandboxed execution) runs when asked
KNOWN_BENCHMARKS = (*BENCHMARKS, "humaneval")


@dataclass
class CapabilityData:
    """The samples one run scores (the native and the lm-eval engines score the same ones)."""

    mmlu: list[MCQuestion] = field(default_factory=list)
    mmlu_shots: dict[str, list[MCQuestion]] = field(default_factory=dict)
    truthfulqa: list[TruthfulQAItem] = field(default_factory=list)
    gsm8k: list[MathProblem] = field(default_factory=list)
    gsm8k_shots: list[MathProblem] = field(default_factory=list)
    humaneval: list[HumanEvalProblem] = field(default_factory=list)


def load_capability_data(cfg: CapabilityConfig, benchmarks: Sequence[str] = BENCHMARKS) -> CapabilityData:
    """Load the question samples and few-shot examples ``cfg`` names (data directory or built-in suites)."""
    unknown = set(benchmarks) - set(KNOWN_BENCHMARKS)
    if unknown:
        raise SaesteerError(
            f"unknown capability benchmark(s) {', '.join(sorted(unknown))}; use {', '.join(KNOWN_BENCHMARKS)}"
        )
    if not 0 <= cfg.mmlu_shots <= 5:
        raise SaesteerError(f"mmlu_shots={cfg.mmlu_shots}; MMLU dev splits hold 5 examples, use 0-5")
    d = CapabilityData()
    if "mmlu" in benchmarks:
        d.mmlu = load_mmlu(cfg.mmlu_n, cfg.seed, cfg.data_dir, builtin=cfg.builtin)
        if cfg.mmlu_shots and not cfg.builtin:
            subjects = sorted({q.subject for q in d.mmlu})
            for q in load_mmlu(None, 0, cfg.data_dir, split="dev", subjects=subjects):
                d.mmlu_shots.setdefault(q.subject, []).append(q)
    if "truthfulqa" in benchmarks:
        d.truthfulqa = load_truthfulqa(cfg.truthfulqa_n, cfg.seed, cfg.data_dir, builtin=cfg.builtin)
    if "gsm8k" in benchmarks:
        d.gsm8k = load_gsm8k(cfg.gsm8k_n, cfg.seed, cfg.data_dir, builtin=cfg.builtin)
        if cfg.gsm8k_shots:
            if cfg.builtin:
                taken = {p.id for p in d.gsm8k}
                d.gsm8k_shots = [p for p in load_gsm8k(None, 0, builtin=True) if p.id not in taken][: cfg.gsm8k_shots]
            else:
                train = load_gsm8k(None, 0, cfg.data_dir, split="train")
                d.gsm8k_shots = pick_gsm8k_shots(train, cfg.gsm8k_shots, cfg.seed)
    if "humaneval" in benchmarks:
        d.humaneval = load_humaneval(cfg.humaneval_n, cfg.seed)
    return d


def run_capability(
    model: Any,
    tokenizer: Any,
    cfg: CapabilityConfig | None = None,
    benchmarks: Sequence[str] = BENCHMARKS,
    system_prompt: str | None = None,
    progress: bool = False,
    steering: Any | None = None,
    data: CapabilityData | None = None,
) -> dict[str, BenchmarkResult]:
    """Score ``benchmarks`` on the samples ``cfg`` names (or ``data``); keys: mmlu, truthfulqa_mc1, truthfulqa_mc2,
    gsm8k. ``system_prompt`` applies to GSM8K in chat mode (None: the chat template's default).

    ``steering`` (a :class:`~saesteer.steering.engine.Steering`): applied while scoring; a gated one decides once
    per question from the chat-formatted question (:mod:`saesteer.evaluation.gated`) and each result records the
    firing rate in ``settings["gate"]``. None: whatever hooks the caller set on ``model`` apply."""
    cfg = cfg or CapabilityConfig()
    d = data if data is not None else load_capability_data(cfg, benchmarks)
    bs, ml = cfg.batch_size, cfg.max_length
    gbs = cfg.generate_batch_size or bs

    def mmlu(qs: Sequence[MCQuestion]) -> dict[str, BenchmarkResult]:
        return {
            "mmlu": score_mmlu(model, tokenizer, qs, d.mmlu_shots, cfg.mmlu_shots, bs, ml, progress, cfg.share_prefix)
        }

    def truthfulqa(items: Sequence[TruthfulQAItem]) -> dict[str, BenchmarkResult]:
        mc1, mc2 = score_truthfulqa(model, tokenizer, items, bs, ml, progress, cfg.share_prefix)
        return {"truthfulqa_mc1": mc1, "truthfulqa_mc2": mc2}

    def gsm8k(qs: Sequence[MathProblem]) -> dict[str, BenchmarkResult]:
        r = score_gsm8k(
            model,
            tokenizer,
            qs,
            d.gsm8k_shots,
            cfg.gsm8k_chat,
            cfg.gsm8k_max_new_tokens,
            gbs,
            ml,
            system_prompt,
            progress,
        )
        return {"gsm8k": r}

    def humaneval(ps: Sequence[HumanEvalProblem]) -> dict[str, BenchmarkResult]:
        return {"humaneval": score_humaneval(model, tokenizer, ps, cfg.humaneval_max_new_tokens, gbs)}

    jobs: list[tuple[Sequence[Any], Callable[[Any], str], Callable[[Any], dict[str, BenchmarkResult]]]] = []
    if "mmlu" in benchmarks:
        jobs.append((d.mmlu, mc_block, mmlu))
    if "truthfulqa" in benchmarks:
        jobs.append((d.truthfulqa, lambda it: it.question, truthfulqa))
    if "gsm8k" in benchmarks:
        jobs.append((d.gsm8k, lambda q: q.question, gsm8k))
    if "humaneval" in benchmarks:
        jobs.append((d.humaneval, chat_prompt, humaneval))
    out: dict[str, BenchmarkResult] = {}
    for items, question, score in jobs:
        if steering is not None and steering.gate is not None:
            out.update(score_gated(model, tokenizer, steering, items, question, _item_id, score, bs, system_prompt))
        else:
            with steering.apply(model) if steering is not None else nullcontext():
                out.update(score(items))
    return out


def _item_id(item: Any) -> str:
    return str(getattr(item, "id", None) or item.task_id)
