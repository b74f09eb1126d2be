"""Capability benchmarks on tiny random Qwen2 models with the real tokenizer (and a few real data items)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.evaluation.capability import (
    CapabilityConfig,
    load_capability_data,
    mmlu_prompt,
    run_capability,
    score_mmlu,
    score_truthfulqa,
    truthfulqa_prompt,
)
from saesteer.evaluation.datasets import MathProblem, MCQuestion, TruthfulQAItem, has_data
from saesteer.evaluation.gsm8k import clean_solution, extract_answer, numbers_equal, score_gsm8k
from saesteer.evaluation.loglik import common_prefix_length, encode_pair, loglikelihoods
from saesteer.evaluation.stats import wilson
from tests.conftest import interop_import, tiny_model


@pytest.fixture(scope="module")
def lm(qwen_tokenizer: Any) -> tuple[Any, Any]:
    model = tiny_model("qwen2", vocab_size=len(qwen_tokenizer), seed=1)
    model.generation_config.eos_token_id = qwen_tokenizer.eos_token_id
    model.config.max_position_embeddings = 4096  # real few-shot prompts exceed 256 tokens; rope needs no change
    return model, qwen_tokenizer


def _q(i: int, answer: int, subject: str = "anatomy") -> MCQuestion:
    return MCQuestion(f"q{i}", f"Question number {i}?", ["alpha", "beta", "gamma", "delta"], answer, subject, "t")


def _token(tok: Any, text: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, (text, ids)
    return int(ids[0])


class Force:
    """A forward hook on lm_head that makes the model emit ``tokens`` one per forward pass, then repeat the last."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.step = tokens, 0

    def __call__(self, _mod: Any, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        t = self.tokens[min(self.step, len(self.tokens) - 1)]
        self.step += 1
        forced = torch.full_like(out, -1e4)
        forced[..., t] = 0.0
        return forced


@pytest.fixture
def hooked(lm: tuple[Any, Any]) -> Iterator[Any]:
    handles: list[Any] = []

    def add(fn: Any) -> None:
        handles.append(lm[0].lm_head.register_forward_hook(fn))

    yield add
    for h in handles:
        h.remove()


def test_loglikelihoods_batched_equal_single_unpadded_forwards(lm: tuple[Any, Any]) -> None:
    model, tok = lm
    reqs = [
        ("The capital of France is", " Paris"),
        ("Hello there, my good", " friend of mine, how are you"),
        ("Hello there, my good", " A"),
        ("Hello there, my good", " B"),
        ("x", " y z"),
    ]
    batched = loglikelihoods(model, tok, reqs, batch_size=8)
    for (ctx, cont), got in zip(reqs, batched, strict=True):
        ci, xi = encode_pair(tok, ctx, cont)
        with torch.no_grad():
            lp = model(torch.tensor([ci + xi])).logits.log_softmax(-1)[0]
        want = sum(lp[len(ci) - 1 + j, t].item() for j, t in enumerate(xi))
        assert got == pytest.approx(want, abs=1e-4)
    assert loglikelihoods(model, tok, reqs, batch_size=1) == pytest.approx(batched, abs=1e-4)


def test_shared_prefix_cache_gives_the_same_scores(lm: tuple[Any, Any]) -> None:
    model, tok = lm
    primer = "Q: What is the answer to everything?\nA: Forty-two, as the book says.\n\nQ: "
    reqs = [(primer + "Is water wet?\nA:", " Yes it is."), (primer + "Why?\nA:", " Because."),
            (primer + "Why?\nA:", " B"), (primer + "Why?\nA:", " C")]  # fmt: skip
    plain = loglikelihoods(model, tok, reqs, batch_size=3)
    shared = loglikelihoods(model, tok, reqs, batch_size=3, share_prefix=True)
    assert shared == pytest.approx(plain, abs=1e-4)
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2], [1, 2]]) == 1


def test_encode_pair_moves_trailing_space_and_rejects_empty(lm: tuple[Any, Any]) -> None:
    _, tok = lm
    assert encode_pair(tok, "Answer: ", "A") == encode_pair(tok, "Answer:", " A")
    with pytest.raises(SaesteerError, match="empty context"):
        loglikelihoods(lm[0], tok, [("context", "")])


def test_mmlu_prompt_format_and_shots_dropped_to_fit(lm: tuple[Any, Any]) -> None:
    _, tok = lm
    q, shot = _q(1, 0), _q(2, 3)
    text = mmlu_prompt(q, [shot])
    assert text.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert "Question number 2?\nA. alpha\nB. beta\nC. gamma\nD. delta\nAnswer: D\n\n" in text
    assert text.endswith("Question number 1?\nA. alpha\nB. beta\nC. gamma\nD. delta\nAnswer:")
    shots = {"anatomy": [_q(10 + i, i % 4) for i in range(5)]}
    full = score_mmlu(lm[0], tok, [q], shots, n_shots=5, max_length=4096)
    cut = score_mmlu(lm[0], tok, [q], shots, n_shots=5, max_length=120)
    assert full.records[0]["shots"] == 5 and 0 <= cut.records[0]["shots"] < 5


def test_mmlu_per_subject_prefix_cache_gives_the_same_scores(lm: tuple[Any, Any]) -> None:
    model, tok = lm
    shots = {s: [_q(10 + i, i % 4, s) for i in range(3)] for s in ("anatomy", "astronomy")}
    qs = [_q(1, 2), _q(2, 1, "astronomy"), _q(3, 0), _q(4, 3), _q(5, 2, "astronomy")]
    plain = score_mmlu(model, tok, qs, shots, n_shots=3, batch_size=2)
    shared = score_mmlu(model, tok, qs, shots, n_shots=3, batch_size=2, share_prefix=True)
    for a, b in zip(plain.records, shared.records, strict=True):
        assert a["id"] == b["id"] and a["prediction"] == b["prediction"]
        assert b["loglik"] == pytest.approx(a["loglik"], abs=1e-4)


def test_mmlu_picks_the_planted_answer(lm: tuple[Any, Any], hooked: Any) -> None:
    model, tok = lm
    c_id = _token(tok, " C")

    def plant(_mod: Any, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[..., c_id] += 30.0
        return out

    hooked(plant)
    qs = [_q(1, 2), _q(2, 2), _q(3, 0), _q(4, 1), _q(5, 2, "astronomy")]
    res = score_mmlu(model, tok, qs, batch_size=2)
    assert [r["prediction"] for r in res.records] == [2] * 5
    assert res.n == 5 and res.score == pytest.approx(3 / 5)
    assert (res.ci_low, res.ci_high) == pytest.approx(wilson(3, 5)[1:])


def test_truthfulqa_mc1_mc2_follow_a_planted_answer(qwen_tokenizer: Any) -> None:
    tok = qwen_tokenizer
    model = tiny_model("qwen2", vocab_size=len(tok), seed=2)
    head = torch.nn.Linear(64, len(tok), bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[_token(tok, " Paris")] = 25.0
    model.lm_head = head
    good = TruthfulQAItem("good", "What is the capital of France?", ["Paris.", "Lyon."], [1, 0],
                          ["Paris.", "It is Paris.", "Lyon."], [1, 1, 0], "t")  # fmt: skip
    bad = TruthfulQAItem("bad", "What is the capital of France?", ["Lyon.", "Paris."], [1, 0],
                         ["Lyon.", "Paris."], [1, 0], "t")  # fmt: skip
    mc1, mc2 = score_truthfulqa(model, tok, [good, bad])
    assert [r["mc1_correct"] for r in mc1.records] == [True, False]
    assert mc2.records[0]["mc2_true_mass"] > 0.99 and mc2.records[1]["mc2_true_mass"] < 0.01
    assert mc1.score == 0.5 and mc2.interval == "t" and 0.0 <= mc2.ci_low <= mc2.score <= mc2.ci_high <= 1.0
    assert truthfulqa_prompt("Q?").endswith("Barcelona, Spain.\n\nQ: Q?\nA:")


def test_gsm8k_answer_extraction_and_shot_cleaning() -> None:
    assert extract_answer("so 3 + 4 = 7. The answer is 1,200.") == "1200"
    assert extract_answer("The answer is $18. Then something 5") == "18"
    assert extract_answer("blah\n#### -3") == "-3"
    assert extract_answer("first 3 then 4.5 apples") == "4.5"
    assert extract_answer("no numbers here") is None
    assert numbers_equal("18.0", "18") and not numbers_equal("17", "18") and not numbers_equal(None, "1")
    sol = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert clean_solution(sol) == "Natalia sold 48/2 = 24 clips in May.\nThe answer is 72."


@pytest.mark.parametrize("chat", [True, False])
def test_gsm8k_exact_match_of_forced_answers(lm: tuple[Any, Any], hooked: Any, chat: bool) -> None:
    model, tok = lm
    forced = tok("The answer is 18.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    hooked(Force(forced))
    probs = [MathProblem("a", "How many?", "18", "", "t"), MathProblem("b", "How many more?", "7", "", "t")]
    shots = [MathProblem("s", "What is 2+2?", "4", "2+2=<<2+2=4>>4\n#### 4", "t")]
    res = score_gsm8k(model, tok, probs, shots, chat=chat, max_new_tokens=12, batch_size=8)
    assert [r["prediction"] for r in res.records] == ["18", "18"]
    assert [r["correct"] for r in res.records] == [True, False] and res.score == 0.5
    assert res.records[0]["shots"] == 1 and res.settings["chat"] is chat


def test_bad_capability_config_is_a_one_line_error() -> None:
    with pytest.raises(SaesteerError, match="unknown capability benchmark"):
        load_capability_data(CapabilityConfig(), ["mmlu", "hellaswag"])
    with pytest.raises(SaesteerError, match="mmlu_shots"):
        load_capability_data(CapabilityConfig(mmlu_shots=7), ["mmlu"])


def test_run_capability_on_builtin_suites(lm: tuple[Any, Any], no_data_dir: None) -> None:
    cfg = CapabilityConfig(mmlu_n=3, truthfulqa_n=2, gsm8k_n=2, gsm8k_shots=1, gsm8k_max_new_tokens=3, builtin=True)
    out = run_capability(*lm, cfg)
    assert {k: v.n for k, v in out.items()} == {"mmlu": 3, "truthfulqa_mc1": 2, "truthfulqa_mc2": 2, "gsm8k": 2}
    assert out["gsm8k"].records[0]["shots"] == 1


needs_data = pytest.mark.skipif(
    not all(has_data(n) for n in ("mmlu", "truthfulqa", "gsm8k")), reason="no data directory with capability data"
)


@needs_data
def test_run_capability_on_real_items(lm: tuple[Any, Any]) -> None:
    cfg = CapabilityConfig(mmlu_n=3, mmlu_shots=1, truthfulqa_n=2, gsm8k_n=2, gsm8k_shots=1, gsm8k_max_new_tokens=3)
    out = run_capability(*lm, cfg)
    data = load_capability_data(cfg)
    assert [r["id"] for r in out["mmlu"].records] == [q.id for q in data.mmlu]
    assert all(r["shots"] == 1 for r in out["mmlu"].records)
    assert out["truthfulqa_mc2"].n == 2 and out["gsm8k"].n == 2
    for res in out.values():
        assert 0.0 <= res.ci_low <= res.score <= res.ci_high <= 1.0 and not math.isnan(res.score)


@needs_data
def test_native_mmlu_and_truthfulqa_equal_lm_eval(lm: tuple[Any, Any], tmp_path: Any) -> None:
    interop_import("lm_eval")
    from saesteer.evaluation.lm_eval_bridge import evaluate_tasks, write_mmlu_tasks, write_truthfulqa_tasks

    model, tok = lm
    data = load_capability_data(CapabilityConfig(mmlu_n=2, mmlu_shots=1), ["mmlu"])
    item = TruthfulQAItem("tq", "Is the sky green?", ["No.", "Yes."], [1, 0], ["No.", "It is blue.", "Yes."],
                          [1, 1, 0], "t")  # fmt: skip
    plan: dict[str, tuple[list[str], list[Any]]] = {
        "mmlu": (write_mmlu_tasks(tmp_path, data.mmlu, data.mmlu_shots, 1), list(data.mmlu)),
        "truthfulqa": (write_truthfulqa_tasks(tmp_path, [item]), [item]),
    }
    theirs = evaluate_tasks(model, tok, tmp_path, plan, batch_size=4)
    ours = score_mmlu(model, tok, data.mmlu, data.mmlu_shots, n_shots=1)
    for a, b in zip(ours.records, theirs["mmlu"].records, strict=True):
        assert a["id"] == b["id"] and a["prediction"] == b["prediction"]
        assert a["loglik"] == pytest.approx(b["loglik"], abs=1e-4)
    mc1, mc2 = score_truthfulqa(model, tok, [item])
    assert mc1.records[0]["mc1_loglik"] == pytest.approx(theirs["truthfulqa_mc1"].records[0]["mc1_loglik"], abs=1e-4)
    assert mc2.score == pytest.approx(theirs["truthfulqa_mc2"].score, abs=1e-5)
