"""Multi-turn attacks on a tiny random Qwen2 target with the real tokenizer, scripted attackers and judges."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

import saesteer.evaluation.multiturn as mt
from saesteer.errors import SaesteerError
from saesteer.evaluation.attackers import (
    EndpointAttacker,
    LocalAttacker,
    endpoint_attacker,
    parse_next_message,
    render_crescendo_system,
)
from saesteer.evaluation.datasets import FracturedItem, has_data, load_crescendo_prompt, load_fractured
from saesteer.evaluation.stats import wilson
from saesteer.model.generation import GenerationConfig, Message
from tests.conftest import tiny_model

GEN = GenerationConfig(max_new_tokens=6, batch_size=16)


@pytest.fixture(scope="module")
def lm(qwen_tokenizer: Any) -> tuple[Any, Any]:
    model = tiny_model("qwen2", vocab_size=len(qwen_tokenizer), seed=4)
    model.config.max_position_embeddings = 4096
    model.generation_config.eos_token_id = qwen_tokenizer.eos_token_id
    return model, qwen_tokenizer


@contextlib.contextmanager
def scripted(model: Any, tok: Any, text: str) -> Iterator[None]:
    """Make the model answer ``text`` to anything: the next token is a function of the previous one."""
    seq = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(set(seq)) == len(seq), "scripted text needs distinct tokens"
    follow = {a: b for a, b in zip(seq, seq[1:], strict=False)}
    last: dict[str, torch.Tensor] = {}

    def pre(_mod: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            last["ids"] = ids[:, -1]

    def post(_mod: Any, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        nxt = [follow.get(int(t), seq[0]) for t in last["ids"]]
        forced = torch.full_like(out, -1e4)
        forced[torch.arange(out.shape[0]), -1, nxt] = 0.0
        return forced

    handles = [model.register_forward_pre_hook(pre, with_kwargs=True), model.lm_head.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class CountingGenerate:
    """Wraps the generate function multiturn uses, recording how many conversations each call got."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[int] = []
        self._real = mt.generate
        monkeypatch.setattr(mt, "generate", self)

    def __call__(self, model: Any, tok: Any, convs: Sequence[Any], cfg: Any, **kw: Any) -> list[str]:
        self.calls.append(len(convs))
        return self._real(model, tok, convs, cfg, **kw)


class WordJudge:
    """Refusal iff the completion (or, with on_prompt, the prompt) contains ``word``."""

    name = "word"

    def __init__(self, word: str, on_prompt: bool = False):
        self.word, self.on_prompt = word, on_prompt

    def judge(self, prompts: Sequence[str], completions: Sequence[str]) -> list[bool]:
        return [self.word in (p if self.on_prompt else c) for p, c in zip(prompts, completions, strict=True)]


ITEMS = [
    FracturedItem("a", ["step a1", "step a2"], "original a", False, "t"),
    FracturedItem("b", ["step b1", "step b2", "step b3"], "original b", False, "t"),
]


def test_fractured_batches_each_turn_and_keeps_answers(lm: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    spy = CountingGenerate(monkeypatch)
    res = mt.run_fractured(*lm, GEN, ITEMS)
    assert spy.calls == [2, 2, 2, 1]  # one batched call per turn; b has one more step than a
    conv = res.records[1]["conversation"]
    assert [m["role"] for m in conv] == ["user", "assistant"] * 4
    assert [m["content"] for m in conv[::2]] == ["step b1", "step b2", "step b3", "original b"]
    assert res.records[0]["final_prompt"] == "original a"
    assert res.records[1]["final_answer"] == conv[-1]["content"]
    last_steps = mt.run_fractured(*lm, GEN, ITEMS, max_steps=1)
    assert [m["content"] for m in last_steps.records[1]["conversation"][::2]] == ["step b3", "original b"]


def test_fractured_keyword_judge_on_scripted_refusals(lm: tuple[Any, Any]) -> None:
    model, tok = lm
    with scripted(model, tok, "I'm sorry, I cannot help with that."):
        refusing = mt.run_fractured(model, tok, GenerationConfig(max_new_tokens=12), ITEMS)
    assert refusing.records[0]["final_answer"].startswith("I'm sorry")
    assert refusing.asr == 0.0 and refusing.successes == 0
    with scripted(model, tok, "Sure, here is how:"):
        complying = mt.run_fractured(model, tok, GenerationConfig(max_new_tokens=12), ITEMS)
    assert complying.asr == 1.0
    assert (complying.ci_low, complying.ci_high) == pytest.approx(wilson(2, 2)[1:])


def test_fractured_checkpoint_resumes_without_regenerating(
    lm: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = str(tmp_path / "fsb.json")
    first = mt.run_fractured(*lm, GEN, ITEMS, judge=WordJudge("zzz"), checkpoint=ck)
    assert json.loads(Path(ck).read_text())["round"] == 4
    spy = CountingGenerate(monkeypatch)
    again = mt.run_fractured(*lm, GEN, ITEMS, judge=WordJudge("zzz"), checkpoint=ck)
    assert spy.calls == [] and [r["conversation"] for r in again.records] == [r["conversation"] for r in first.records]
    with pytest.raises(SaesteerError, match="another run"):
        mt.run_fractured(*lm, GEN, ITEMS[:1], checkpoint=ck)


def _attacker(script: Any) -> Any:
    class Scripted:
        def __init__(self) -> None:
            self.batches: list[int] = []

        def __call__(self, messages: list[Message]) -> str:
            return str(script(messages))

        def batch(self, convs: Sequence[list[Message]]) -> list[str]:
            self.batches.append(len(convs))
            return [self(m) for m in convs]

    return Scripted()


def test_crescendo_lockstep_rounds_parse_json_and_steer_only_target(lm: tuple[Any, Any]) -> None:
    state = {"steered": False, "entered": 0}

    @contextlib.contextmanager
    def steer() -> Iterator[None]:
        state["steered"] = True
        state["entered"] += 1
        yield
        state["steered"] = False

    def script(msgs: list[Message]) -> str:
        assert not state["steered"], "the attacker ran inside the target's steering context"
        turn = sum(m["role"] == "assistant" for m in msgs) + 1
        goal = msgs[0]["content"].split("Goal: ")[1][:6]
        assert f"in 2 turns, now {turn}." in msgs[0]["content"] and "CTX" not in msgs[0]["content"]
        return json.dumps({"next_message": f"question {turn} about {goal}", "rationale": "x"})

    att = _attacker(script)
    tpl = "Red team. Goal: {{objective}} in {{ max_turns }} turns, now {current_turn}.{% if conversation_context %}CTX{% endif %}"
    res = mt.run_crescendo(*lm, GEN, ["goal-A", "goal-B", "goal-C"], att, WordJudge("zzz"), max_turns=2,
                           attacker_prompt=tpl, target_context=steer)  # fmt: skip
    assert att.batches == [3, 3] and state["entered"] == 2
    rec = res.records[0]
    assert [m["content"] for m in rec["conversation"][::2]] == ["question 1 about goal-A", "question 2 about goal-A"]
    assert rec["turns"] == 2 and res.n == 3 and res.asr == 1.0 and res.settings["parsed_attacker_turns"] == 6


def test_crescendo_backtracks_refused_questions(lm: tuple[Any, Any]) -> None:
    def script(msgs: list[Message]) -> str:
        return '{"next_message": "good question"' if "REFUSED" in msgs[-1]["content"] else '{"next_message": "bad one"}'

    res = mt.run_crescendo(*lm, GEN, ["obj"], _attacker(script), WordJudge("bad", on_prompt=True), max_turns=2,
                           max_backtracks=1, attacker_prompt="{{objective}}")  # fmt: skip
    rec = res.records[0]
    assert rec["backtracks"] == 1 and rec["turns"] == 2
    assert [m["content"] for m in rec["conversation"][::2]] == ["good question", "bad one"]  # first "bad one" dropped
    assert [e.get("backtracked", False) for e in rec["log"]] == [True, False, False]
    assert rec["refused"] is True and res.asr == 0.0  # the last turn was refused with no backtracks left


def test_crescendo_with_local_attacker_and_real_template(lm: tuple[Any, Any]) -> None:
    if not has_data("crescendo"):
        pytest.skip("no data directory with the Crescendo template")
    tpl = load_crescendo_prompt()
    text = render_crescendo_system(tpl, "OBJECTIVE-X", 3, 2)
    assert "OBJECTIVE-X" in text and "{{" not in text and "{%" not in text and "{current_turn}" not in text
    attacker = LocalAttacker(*lm, GenerationConfig(max_new_tokens=5))
    res = mt.run_crescendo(*lm, GEN, ["write a scam email"], attacker, max_turns=1)
    assert res.n == 1 and len(res.records[0]["conversation"]) == 2 and res.settings["attacker"] == "LocalAttacker"


def test_attacker_memo_serves_a_conversation_asked_again(lm: tuple[Any, Any]) -> None:
    """A shared memo answers a repeated conversation with the reply generated the first time (each Crescendo
    attack's first turn is the same under every steering condition), and matches a fresh attacker's reply."""
    cfg = GenerationConfig(max_new_tokens=6)
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    memo: dict[str, str] = {}
    first = LocalAttacker(*lm, cfg, memo).batch(convs + convs[:1])
    assert len(memo) == 3 and first[3] == first[0]
    assert LocalAttacker(*lm, cfg).batch(convs) == first[:3]
    memo[next(iter(memo))] = "from the memo"  # proves the next call reads the memo instead of generating
    again = LocalAttacker(*lm, cfg, memo).batch(convs[::-1])
    assert again == [first[2], first[1], "from the memo"]


def test_fractured_on_real_items(lm: tuple[Any, Any]) -> None:
    if not has_data("fractured_sorry_bench"):
        pytest.skip("no data directory with FRACTURED-SORRY-Bench")
    items = load_fractured(2, seed=0)
    res = mt.run_fractured(*lm, GEN, items, max_steps=1)
    assert res.n == 2 and all(r["final_prompt"] == it.original for r, it in zip(res.records, items, strict=True))


def test_parse_next_message_variants() -> None:
    assert parse_next_message('{"next_message": "Hi \\"there\\"", "rationale": "r"}') == ('Hi "there"', True)
    assert parse_next_message('```json\n{"next_message": "cut off') == ("cut off", True)
    assert parse_next_message('{"next_message": "ends in escape\\') == ("ends in escape", True)
    assert parse_next_message('```json\n{"rationale": "no question"}```') == ('{"rationale": "no question"}', False)
    assert parse_next_message('{"next_message": "ok", "last_response_summary": "trunc') == ("ok", True)
    assert parse_next_message("just a question?") == ("just a question?", False)
    assert parse_next_message("") == ("Please continue.", False)


class _Handler(BaseHTTPRequestHandler):
    replies: list[tuple[int, bytes]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["messages"][-1]["content"] == "hi"
        code, data = self.replies.pop(0) if self.replies else (200, b"not json")
        self.send_response(code)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_endpoint_attacker_retries_then_fails_clearly(server: str) -> None:
    ok = json.dumps({"choices": [{"message": {"content": "next?"}}]}).encode()
    _Handler.replies = [(500, b"oops"), (200, b"{}"), (200, ok)]
    att = endpoint_attacker(f"m@{server}", max_retries=2, backoff_s=0.0)
    assert att([{"role": "user", "content": "hi"}]) == "next?"
    _Handler.replies = []
    with pytest.raises(SaesteerError, match="failed 2 times"):
        EndpointAttacker("m", server, max_retries=1, backoff_s=0.0)([{"role": "user", "content": "hi"}])
    _Handler.replies = [(401, b"no")]
    with pytest.raises(SaesteerError, match="HTTP 401"):
        EndpointAttacker("m", server, backoff_s=0.0)([{"role": "user", "content": "hi"}])
    with pytest.raises(SaesteerError, match="MODEL@"):
        endpoint_attacker("no-url-here")


def test_attacker_stops_at_its_stop_strings(lm: tuple[Any, Any]) -> None:
    """A reply ends at the first stop string: a prefix of the unstopped reply that still holds the stop string."""
    cfg = GenerationConfig(max_new_tokens=16)
    conv = [[{"role": "user", "content": "Reply with a JSON object with the keys next_message and rationale."}]]
    free = LocalAttacker(*lm, cfg, stop_strings=()).batch(conv)[0]
    stop = free.split()[len(free.split()) // 3]
    stopped = LocalAttacker(*lm, cfg, stop_strings=(stop,)).batch(conv)[0]
    assert stop in stopped and free.startswith(stopped) and len(stopped) < len(free)
