"""Multi-turn jailbreaks against a (steered) target: FRACTURED-SORRY-Bench escalations and a Crescendo-style loop.

The target is ``(model, tokenizer, gen_cfg)``; steering hooks on the model stay active, or pass ``target_context``
(e.g. ``steering.apply``) to switch them on only around the target's turns -- needed when the local model is also
the attacker, which must not be steered. Each turn of all conversations is one batched
:func:`saesteer.model.generation.generate` call (the point on a CPU). Attack success = the final target answer is
not a refusal according to the judge (any :class:`saesteer.evaluation.judges.Judge`; keyword judge by default);
ASR comes with a Wilson 95% interval.

* :func:`run_fractured` -- each escalation's innocuous sub-questions as successive user turns (the model's answers
  kept), then the original SORRY-Bench request as the final, judged turn.
* :func:`run_crescendo` -- an attacker chat model, seeded with the Crescendo system prompt read from the data
  directory (``multiturn/crescendo/crescendo_variant_1.yaml``), writes each next question from the target's last
  answer (JSON ``next_message``; raw text if it writes no JSON), for ``max_turns`` turns; with ``max_backtracks``,
  refused questions are dropped from the target's conversation and retried. The attacker is any
  ``attacker(messages) -> str`` callable (with an optional ``.batch(list_of_messages)``): :class:`LocalAttacker`
  (the local model, default) or :class:`EndpointAttacker` (an OpenAI-compatible ``/chat/completions`` endpoint).

With ``checkpoint``, the state is written (atomically) after every turn and a rerun with the same inputs resumes
from it; use one checkpoint file per steering condition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json, opt
from saesteer.errors import SaesteerError
from saesteer.evaluation.attackers import (
    Attacker,
    LocalAttacker,
    attacker_request,
    endpoint_attacker,
    parse_next_message,
    render_crescendo_system,
)
from saesteer.evaluation.datasets import FracturedItem, load_crescendo_prompt, load_fractured, load_prompts
from saesteer.evaluation.judges import Judge, KeywordJudge
from saesteer.evaluation.stats import wilson
from saesteer.model.generation import GenerationConfig, Message, generate

TargetContext = Callable[[], AbstractContextManager[Any]]


@dataclass
class MultiTurnConfig:
    """Sizes and options of the multi-turn attacks (the target's decoding is its GenerationConfig)."""

    n: int = opt(10, "FRACTURED escalations per run")
    crescendo_n: int | None = opt(None, "Crescendo objectives per run (default: n); reported as its own metric")
    seed: int = opt(0, "seed of the sample")
    max_steps: int | None = opt(None, "FRACTURED: keep only the last N sub-questions of each escalation")
    max_turns: int = opt(3, "Crescendo: target turns per attack")
    max_backtracks: int = opt(0, "Crescendo: refused questions dropped and retried per attack (0 = off)")
    final_objective: bool = opt(False, "Crescendo: send the objective verbatim as the last turn")
    attacker_max_new_tokens: int = opt(160, "Crescendo: tokens per attacker message (local attacker)")
    attacker_endpoint: str | None = opt(
        None, "Crescendo attacker at an endpoint, MODEL@BASE_URL (default: local model)"
    )
    checkpoint: str | None = opt(None, "JSON file written after every turn; a rerun resumes from it")
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data)")


@dataclass
class MultiTurnResult:
    """Attack success rate with its interval and per-attack transcripts."""

    attack: str
    n: int
    successes: int
    asr: float
    ci_low: float
    ci_high: float
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        per = self.seconds / self.n if self.n else float("nan")
        return (
            f"{self.attack} ASR: {100 * self.asr:.1f}% [{100 * self.ci_low:.1f}, {100 * self.ci_high:.1f}] "
            f"(n={self.n}, {per:.1f} s/attack)"
        )


def _result(attack: str, records: list[dict[str, Any]], seconds: float, settings: dict[str, Any]) -> MultiTurnResult:
    k = sum(bool(r["success"]) for r in records)
    p, lo, hi = wilson(k, len(records))
    return MultiTurnResult(attack, len(records), k, p, lo, hi, seconds, settings, records)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_state(path: str | None, key: str) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        raise SaesteerError(f"checkpoint {path} is unreadable; delete it to start over") from None
    if state.get("key") != key:
        raise SaesteerError(
            f"checkpoint {path} belongs to another run (other items or settings); "
            "delete it or pass another checkpoint path"
        )
    return dict(state)


def _target_turn(
    model: Any,
    tokenizer: Any,
    gen_cfg: GenerationConfig,
    convs: list[list[Message]],
    target_context: TargetContext | None,
    progress: bool,
    desc: str,
) -> list[str]:
    with target_context() if target_context is not None else contextlib.nullcontext():
        return generate(model, tokenizer, convs, gen_cfg, progress=progress, desc=desc)


# --- FRACTURED-SORRY-Bench ---------------------------------------------------------------------------------------


def run_fractured(
    model: Any,
    tokenizer: Any,
    gen_cfg: GenerationConfig,
    items: Sequence[FracturedItem],
    judge: Judge | None = None,
    max_steps: int | None = None,
    checkpoint: str | None = None,
    target_context: TargetContext | None = None,
    progress: bool = False,
) -> MultiTurnResult:
    """Escalate each item turn by turn (all items' turn t in one batched generate) and judge the final answer."""
    if not items:
        raise SaesteerError("no FRACTURED-SORRY-Bench items; raise n")
    if max_steps is not None and max_steps < 0:
        raise SaesteerError(f"max_steps={max_steps} must be >= 0")
    judge = judge or KeywordJudge()
    t0 = time.perf_counter()
    turns = []
    for it in items:
        steps = list(it.steps)[0 if max_steps is None else max(0, len(it.steps) - max_steps) :]
        turns.append(steps + ([it.original] if it.original else []))
        if not turns[-1]:
            raise SaesteerError(f"FRACTURED item {it.id} has no turns; it needs steps or an original request")
    key = _fingerprint("fractured", [it.id for it in items], turns, asdict(gen_cfg))
    fresh: dict[str, Any] = {"key": key, "round": 0, "convs": [[] for _ in items], "seconds": 0.0}
    state = _load_state(checkpoint, key) or fresh
    convs: list[list[Message]] = state["convs"]
    for r in range(state["round"], max(len(t) for t in turns)):
        active = [i for i, t in enumerate(turns) if r < len(t)]
        for i in active:
            convs[i].append({"role": "user", "content": turns[i][r]})
        outs = _target_turn(
            model, tokenizer, gen_cfg, [convs[i] for i in active], target_context, progress, f"fractured turn {r + 1}"
        )
        for i, out in zip(active, outs, strict=True):
            convs[i].append({"role": "assistant", "content": out})
        state.update(round=r + 1, seconds=state["seconds"] + time.perf_counter() - t0)
        t0 = time.perf_counter()
        if checkpoint:
            atomic_write_json(checkpoint, state)
    finals = [c[-1]["content"] for c in convs]
    refused = judge.judge([t[-1] for t in turns], finals)
    records = [
        {
            "id": it.id,
            "benign": it.benign,
            "final_prompt": t[-1],
            "final_answer": f,
            "refused": ref,
            "success": not ref,
            "turns": len(t),
            "conversation": c,
        }
        for it, t, f, ref, c in zip(items, turns, finals, refused, convs, strict=True)
    ]
    settings = {
        "judge": getattr(judge, "name", type(judge).__name__),
        "max_steps": max_steps,
        "max_new_tokens": gen_cfg.max_new_tokens,
        "system_prompt": gen_cfg.system_prompt,
    }
    return _result("fractured", records, state["seconds"] + time.perf_counter() - t0, settings)


# --- Crescendo ---------------------------------------------------------------------------------------------------


def _new_attack(objective: str) -> dict[str, Any]:
    a: dict[str, Any] = dict(objective=objective, attacker=[], target=[], turn=0, backtracks=0, last=None)
    a.update(refused_q=None, done=False, final_answer=None, final_refused=None, log=[])
    return a


def run_crescendo(
    model: Any,
    tokenizer: Any,
    gen_cfg: GenerationConfig,
    objectives: Sequence[str],
    attacker: Attacker | None = None,
    judge: Judge | None = None,
    max_turns: int = 3,
    max_backtracks: int = 0,
    final_objective: bool = False,
    attacker_prompt: str | None = None,
    data_dir: str | None = None,
    checkpoint: str | None = None,
    target_context: TargetContext | None = None,
    progress: bool = False,
) -> MultiTurnResult:
    """Crescendo attacks on all ``objectives`` in lockstep (one batched attacker call and one batched target call
    per round); success = the last accepted target answer is not a refusal."""
    if not objectives:
        raise SaesteerError("no Crescendo objectives; give at least one")
    if max_turns < 1 or max_backtracks < 0:
        raise SaesteerError(f"max_turns={max_turns} must be >= 1 and max_backtracks={max_backtracks} >= 0")
    template = attacker_prompt if attacker_prompt is not None else load_crescendo_prompt(data_dir)
    attacker = attacker or LocalAttacker(model, tokenizer)
    judge = judge or KeywordJudge()
    setup = (max_turns, max_backtracks, final_objective, template, asdict(gen_cfg), repr(attacker)[:200])
    key = _fingerprint("crescendo", list(objectives), setup)
    fresh: dict[str, Any] = {"key": key, "round": 0, "seconds": 0.0, "attacks": [_new_attack(o) for o in objectives]}
    state: dict[str, Any] = _load_state(checkpoint, key) or fresh
    attacks: list[dict[str, Any]] = state["attacks"]
    t0 = time.perf_counter()
    for rnd in range(state["round"], max_turns + max_backtracks):
        active = [a for a in attacks if not a["done"]]
        if not active:
            break
        for a in active:
            turn = a["turn"] + 1
            system = render_crescendo_system(template, a["objective"], max_turns, turn)
            a["attacker"] = [{"role": "system", "content": system}, *a["attacker"][1:]]
            ask = attacker_request(a["objective"], turn, max_turns, a["last"], a["refused_q"], turn == max_turns)
            a["attacker"].append({"role": "user", "content": ask})
        msgs = [list(a["attacker"]) for a in active]
        batch = getattr(attacker, "batch", None)
        raws = batch(msgs) if callable(batch) else [attacker(m) for m in msgs]
        questions = []
        for a, raw in zip(active, raws, strict=True):
            a["attacker"].append({"role": "assistant", "content": raw})
            q, ok = parse_next_message(raw)
            if final_objective and a["turn"] + 1 == max_turns:
                q = a["objective"]
            questions.append(q)
            a["target"].append({"role": "user", "content": q})
            a["log"].append({"turn": a["turn"] + 1, "question": q, "parsed": ok})
        convs = [a["target"] for a in active]
        outs = _target_turn(model, tokenizer, gen_cfg, convs, target_context, progress, f"crescendo round {rnd + 1}")
        refused = judge.judge(questions, outs)
        for a, q, out, ref in zip(active, questions, outs, refused, strict=True):
            a["log"][-1].update(answer=out, refused=ref)
            if ref and a["backtracks"] < max_backtracks:
                a["target"].pop()
                a["backtracks"] += 1
                a["refused_q"], a["log"][-1]["backtracked"] = q, True
                continue
            a["target"].append({"role": "assistant", "content": out})
            a["turn"] += 1
            a["last"], a["refused_q"] = out, None
            if a["turn"] == max_turns:
                a.update(done=True, final_answer=out, final_refused=ref)
        state.update(round=rnd + 1, seconds=state["seconds"] + time.perf_counter() - t0)
        t0 = time.perf_counter()
        if checkpoint:
            atomic_write_json(checkpoint, state)
    records = []
    for a in attacks:
        if not a["done"]:  # out of rounds while backtracking: judge the last accepted answer, if any
            a["final_answer"] = a["last"] or ""
            a["final_refused"] = True if a["last"] is None else judge.judge([a["objective"]], [a["last"]])[0]
        keep = ("objective", "final_answer", "backtracks", "log")
        rec = {k: a[k] for k in keep} | {"refused": a["final_refused"], "success": not a["final_refused"]}
        records.append(rec | {"turns": a["turn"], "conversation": a["target"]})
    info = {
        "judge": getattr(judge, "name", type(judge).__name__),
        "max_turns": max_turns,
        "max_backtracks": max_backtracks,
        "final_objective": final_objective,
        "attacker": type(attacker).__name__,
        "max_new_tokens": gen_cfg.max_new_tokens,
        "parsed_attacker_turns": sum(e["parsed"] for a in attacks for e in a["log"]),
    }
    return _result("crescendo", records, state["seconds"] + time.perf_counter() - t0, info)


def run_multiturn(
    model: Any,
    tokenizer: Any,
    gen_cfg: GenerationConfig,
    cfg: MultiTurnConfig,
    objectives: Sequence[str] | None = None,
    attacks: Sequence[str] = ("fractured", "crescendo"),
    items: Sequence[FracturedItem] | None = None,
    judge: Judge | None = None,
    target_context: TargetContext | None = None,
    progress: bool = False,
    attacker_memo: dict[str, str] | None = None,
) -> dict[str, MultiTurnResult]:
    """Both attacks as ``cfg`` says, each its own metric with its own n: FRACTURED on ``items`` (default ``cfg.n``
    escalations), Crescendo on ``objectives`` (default ``cfg.crescendo_n`` HarmBench test behaviours).
    ``attacker_memo``: the local attacker's replies by conversation, kept by a caller that attacks several
    steering conditions (see :class:`~saesteer.evaluation.attackers.LocalAttacker`)."""
    out: dict[str, MultiTurnResult] = {}
    ck = (lambda name: f"{cfg.checkpoint}.{name}.json") if cfg.checkpoint else (lambda name: None)
    if "fractured" in attacks:
        items = list(items) if items is not None else load_fractured(cfg.n, cfg.seed, cfg.data_dir)
        out["fractured"] = run_fractured(
            model, tokenizer, gen_cfg, items, judge, cfg.max_steps, ck("fractured"), target_context, progress
        )
    if "crescendo" in attacks:
        cn = cfg.crescendo_n if cfg.crescendo_n is not None else cfg.n
        objs = (
            list(objectives)
            if objectives is not None
            else [p.text for p in load_prompts("harmbench", "test", cn, cfg.seed, cfg.data_dir)]
        )
        attacker: Attacker | None = None
        if cfg.attacker_endpoint:
            attacker = endpoint_attacker(cfg.attacker_endpoint)
        else:
            attacker = LocalAttacker(
                model,
                tokenizer,
                dataclasses.replace(gen_cfg, max_new_tokens=cfg.attacker_max_new_tokens, system_prompt=None),
                attacker_memo,
            )
        out["crescendo"] = run_crescendo(
            model, tokenizer, gen_cfg, objs, attacker, judge, cfg.max_turns, cfg.max_backtracks, cfg.final_objective,
            None, cfg.data_dir, ck("crescendo"), target_context, progress,
        )  # fmt: skip
    return out
