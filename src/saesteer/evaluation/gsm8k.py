"""GSM8K: few-shot greedy generation and exact match of the final number, on a (steered) model.

Shots are GSM8K train problems with short solutions (picked under a seed), calculator annotations (``<<48/2=24>>``)
removed and the ``#### N`` line turned into ``"The answer is N."``. ``chat=True`` (default) puts each shot as an
earlier user/assistant turn of the model's chat template -- how a chat model is used and steered --;
``chat=False`` is a plain ``"Question: ...\nAnswer: ..."`` prompt continued until the next ``"Question:"``
(the format of lm-evaluation-harness's gsm8k task; :mod:`saesteer.evaluation.lm_eval_bridge` runs it there). The
prediction is the number after the last ``"The answer is"``, else after ``####``, else the last number.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import torch

from saesteer.errors import SaesteerError
from saesteer.evaluation.benchmark import BenchmarkResult, fit_shots, rate_result
from saesteer.evaluation.loglik import context_limit
from saesteer.evaluation.records import MathProblem
from saesteer.model.generation import GenerationConfig, decode_batch, encode_chats, generate
from saesteer.stages import deal

_NUMBER = r"-?[$]?\d[\d,]*(?:\.\d+)?"


def clean_solution(solution: str) -> str:
    """A GSM8K train solution without ``<<a*b=c>>`` annotations, ending ``"The answer is N."``."""
    body, _, final = solution.partition("####")
    body = re.sub(r"<<[^>]*>>", "", body).strip()
    return f"{body}\nThe answer is {final.strip()}." if final else body


def extract_answer(text: str) -> str | None:
    """The final number of a completion: after the last ``"The answer is"``, else after ``####``, else the last
    number in the text; commas, ``$`` and a trailing ``.`` removed. None when there is no number."""
    for pat in (rf"[Tt]he (?:final )?answer is:?\s*\**\s*({_NUMBER})", rf"####\s*({_NUMBER})"):
        hits = re.findall(pat, text)
        if hits:
            return _norm_number(hits[-1])
    nums = re.findall(_NUMBER, text)
    return _norm_number(nums[-1]) if nums else None


def _norm_number(s: str) -> str:
    return s.replace(",", "").replace("$", "").rstrip(".")


def numbers_equal(pred: str | None, target: str) -> bool:
    if pred is None:
        return False
    try:
        return math.isclose(float(pred), float(_norm_number(target)), rel_tol=0, abs_tol=1e-9)
    except ValueError:
        return False


def pick_gsm8k_shots(train: Sequence[MathProblem], k: int, seed: int, max_chars: int = 400) -> list[MathProblem]:
    """``k`` train problems with short question + solution, chosen under ``seed`` (prompts stay short on CPU)."""
    short = [p for p in train if len(p.question) + len(clean_solution(p.solution)) <= max_chars]
    if len(short) < k:
        raise SaesteerError(f"only {len(short)} short GSM8K train problems for {k} shots; lower gsm8k_shots")
    return random.Random(f"gsm8k-shots:{seed}").sample(short, k)


def gsm8k_chat(q: MathProblem, shots: Sequence[MathProblem]) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    for s in shots:
        msgs += [
            {"role": "user", "content": f"Question: {s.question}"},
            {"role": "assistant", "content": clean_solution(s.solution)},
        ]
    return [*msgs, {"role": "user", "content": f"Question: {q.question}"}]


def gsm8k_plain(q: MathProblem, shots: Sequence[MathProblem]) -> str:
    return (
        "".join(f"Question: {s.question}\nAnswer: {clean_solution(s.solution)}\n\n" for s in shots)
        + f"Question: {q.question}\nAnswer:"
    )


@torch.no_grad()
def _generate_plain(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int, progress: bool
) -> list[str]:
    """Greedy continuations of plain-text prompts, stopped at the next ``"Question:"``."""
    from tqdm.auto import tqdm

    cfg = GenerationConfig(max_new_tokens=max_new_tokens)
    old, tokenizer.padding_side = tokenizer.padding_side, "left"

    def run(batch: Sequence[str]) -> list[str]:
        enc = tokenizer(list(batch), return_tensors="pt", padding=True, add_special_tokens=False)
        ids = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        new = decode_batch(model, tokenizer, ids, cfg, ["Question:"])
        return list(tokenizer.batch_decode(new, skip_special_tokens=True))

    batches = [prompts[s : s + batch_size] for s in range(0, len(prompts), batch_size)]
    try:  # batches split over the ranks of a collective stage (saesteer.stages.deal)
        rounds = tqdm(deal(batches, run), desc="gsm8k", disable=not progress, unit="round")
        return [text for done in rounds for _, texts in done for text in texts]
    finally:
        tokenizer.padding_side = old


def score_gsm8k(
    model: Any,
    tokenizer: Any,
    problems: Sequence[MathProblem],
    shots: Sequence[MathProblem] = (),
    chat: bool = True,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    max_length: int = 2048,
    system_prompt: str | None = None,
    progress: bool = False,
) -> BenchmarkResult:
    """Exact match of the final number of greedy few-shot answers (see the module docstring for the formats)."""
    if not problems:
        raise SaesteerError("no GSM8K problems to score; raise gsm8k_n")
    t0 = time.perf_counter()
    max_length = context_limit(model, max_length)
    if chat:
        convs, used = [], []
        for q in problems:
            k = len(shots)
            while (
                k > 0
                and encode_chats(tokenizer, [gsm8k_chat(q, shots[:k])], system_prompt)["input_ids"].shape[1]
                + max_new_tokens
                > max_length
            ):
                k -= 1
            convs.append(gsm8k_chat(q, shots[:k]))
            used.append(k)
        gcfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, system_prompt=system_prompt)
        outs = generate(model, tokenizer, convs, gcfg, progress=progress, desc="gsm8k")
    else:
        prompts, used = [], []
        for q in problems:
            text, k = fit_shots(
                tokenizer, lambda k, q=q: gsm8k_plain(q, shots[:k]), len(shots), max_length - max_new_tokens
            )
            prompts.append(text)
            used.append(k)
        outs = _generate_plain(model, tokenizer, prompts, max_new_tokens, batch_size, progress)
    correct, recs = [], []
    for q, out, k in zip(problems, outs, used, strict=True):
        out = out.split("Question:")[0].strip()
        pred = extract_answer(out)
        ok = numbers_equal(pred, q.answer)
        correct.append(ok)
        recs.append({"id": q.id, "answer": q.answer, "prediction": pred, "correct": ok, "completion": out, "shots": k})
    settings = {"shots": len(shots), "chat": chat, "max_new_tokens": max_new_tokens, "decoding": "greedy"}
    return rate_result("gsm8k", correct, time.perf_counter() - t0, settings, recs)
