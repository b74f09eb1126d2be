"""The playground's generation: baseline, steered and conditionally steered completions in one decode pass.

The three outputs are the rows of one batch of the same chat prompt. Steering is the library's
:class:`~saesteer.steering.engine.Steering` with :class:`ClampFeature` edits (error term kept:
``x' = x + (c - z_f) W_dec[f]``) on an explicit position mask that selects whole rows: none of the
baseline row, all of the steered row, and all of the conditional row when the gate fires. The gate's
decision is ``score > threshold`` with the score computed by
:func:`saesteer.steering.gate.prompt_scores`, the same function a gated ``Steering`` uses on the prompt
pass, so the conditional row is exactly what ``saesteer generate ... --gate`` produces.

Tokens stream from the fast decode loop (:func:`saesteer.model.decode.decode`; ``model.generate`` for a model
whose generation config it does not implement) in a worker thread, each step's tokens handed to a streamer;
generation ends as soon as the request is cancelled (the client went away).
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from saesteer.model.decode import decode, supported
from saesteer.model.generation import encode_chats, eos_ids
from saesteer.sae.base import SAE
from saesteer.steering.engine import Steering
from saesteer.steering.gate import Gate, prompt_scores
from saesteer.steering.interventions import ClampFeature
from saesteer.steering.positions import Positions

Emit = Callable[[dict[str, Any]], None]
ROWS = ("baseline", "steered", "conditional")


@dataclass
class GenRequest:
    """A validated playground request."""

    conversation: list[dict[str, str]]
    clamps: list[tuple[int, float]]
    gate: Gate | None
    gate_spec: str | None  # the `--gate` argument of the equivalent command, None for gates it cannot express
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> tuple[str, ...]:
        return ROWS if self.gate is not None else ROWS[:2]


class RowStreamer(BaseStreamer):
    """Decodes each row's new tokens as they arrive and emits text deltas; a row ends at its first stop token."""

    def __init__(self, tokenizer: Any, n_rows: int, stop_ids: Sequence[int], emit: Emit, t0: float):
        self.tokenizer = tokenizer
        self.stop = set(stop_ids)
        self.emit = emit
        self.t0 = t0
        self.tokens: list[list[int]] = [[] for _ in range(n_rows)]
        self.sent = [0] * n_rows
        self.done = [False] * n_rows
        self.first_token_s: float | None = None
        self._prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self._prompt:  # generate() first passes the prompt ids
            self._prompt = False
            return
        ids = value.reshape(-1).tolist()
        for row, tok in enumerate(ids):
            if self.done[row]:
                continue
            if tok in self.stop:
                self._finish(row)
                continue
            self.tokens[row].append(int(tok))
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True).lstrip()
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
                continue
            delta, self.sent[row] = text[self.sent[row] :], len(text)
            if delta:
                if self.first_token_s is None:
                    self.first_token_s = time.perf_counter() - self.t0
                self.emit({"type": "token", "row": row, "text": delta})

    def _finish(self, row: int) -> None:
        self.done[row] = True
        self.emit({"type": "row_done", "row": row, "n_tokens": len(self.tokens[row])})

    def end(self) -> None:
        for row in range(len(self.done)):
            if not self.done[row]:
                self._finish(row)


class CancelCriteria(StoppingCriteria):
    """Stops every row once ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def gate_decision(model: Any, tokenizer: Any, req: GenRequest) -> dict[str, Any] | None:
    """The gate's score, threshold and decision for the request's prompt (None without a gate)."""
    if req.gate is None:
        return None
    score = float(prompt_scores(model, tokenizer, [req.conversation], req.gate, batch_size=1)[0])
    return {
        "score": score,
        "threshold": req.gate.threshold,
        "fires": bool(req.gate.decide(torch.tensor([score]))[0]),
        "hook": req.gate.hook,
        "reduce": req.gate.reduce,
        "spec": req.gate_spec,
    }


def row_mask(rows: Sequence[str], fires: bool, width: int) -> torch.Tensor:
    """(rows, width) bool: which rows are steered (every position of a steered row)."""
    on = [r == "steered" or (r == "conditional" and fires) for r in rows]
    return torch.tensor(on, dtype=torch.bool).unsqueeze(1).expand(len(rows), width).clone()


@torch.no_grad()
def run_generation(model: Any, tokenizer: Any, sae: SAE, req: GenRequest, emit: Emit) -> dict[str, Any]:
    """Generate the request's rows, emitting token events; returns the summary (timings, token counts)."""
    t0 = time.perf_counter()
    gate = gate_decision(model, tokenizer, req)
    if gate is not None:
        emit({"type": "gate", **gate})
    rows = req.rows
    enc = encode_chats(tokenizer, [req.conversation] * len(rows))
    dev = next(model.parameters()).device
    enc = {k: v.to(dev) for k, v in enc.items()}
    width = enc["input_ids"].shape[1] + req.max_new_tokens + 1
    mask = row_mask(rows, bool(gate and gate["fires"]), width)
    steering = Steering(
        model, sae, [ClampFeature(f, v) for f, v in req.clamps], positions=Positions.explicit(mask, beyond=False)
    )
    stop = eos_ids(model, tokenizer)
    streamer = RowStreamer(tokenizer, len(rows), stop, emit, t0)
    with steering.apply():
        if supported(model):
            _decode_rows(model, tokenizer, enc, req, stop, streamer)
        else:
            _generate_rows(model, tokenizer, enc, req, stop, streamer)
    secs = time.perf_counter() - t0
    n_tokens = sum(len(t) for t in streamer.tokens)
    return {
        "cancelled": req.cancel.is_set(),
        "seconds": round(secs, 4),
        "first_token_s": None if streamer.first_token_s is None else round(streamer.first_token_s, 4),
        "tokens": [len(t) for t in streamer.tokens],
        "tokens_per_s": round(n_tokens / secs, 3) if secs > 0 else None,
        "gate": gate,
    }


def _decode_rows(
    model: Any, tokenizer: Any, enc: dict[str, torch.Tensor], req: GenRequest, stop: list[int], streamer: RowStreamer
) -> None:
    if req.do_sample:
        torch.manual_seed(req.seed)
    streamer.put(enc["input_ids"])  # the streamer skips the prompt, as generate() passes it first

    def on_step(tokens: torch.Tensor) -> bool:
        streamer.put(tokens)
        return req.cancel.is_set()

    decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=req.max_new_tokens, eos_ids=stop,
           pad_id=tokenizer.pad_token_id, do_sample=req.do_sample, temperature=req.temperature, top_p=req.top_p,
           on_step=on_step)  # fmt: skip
    streamer.end()


def _generate_rows(
    model: Any, tokenizer: Any, enc: dict[str, torch.Tensor], req: GenRequest, stop: list[int], streamer: RowStreamer
) -> None:
    kwargs: dict[str, Any] = {
        "max_new_tokens": req.max_new_tokens,
        "do_sample": req.do_sample,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": stop,
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList([CancelCriteria(req.cancel)]),
    }
    if req.do_sample:
        torch.manual_seed(req.seed)
        kwargs.update(temperature=req.temperature, top_p=req.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    model.generate(**enc, **kwargs)


def command_line(model_spec: str, sae_path: str, req: GenRequest) -> str:
    """The ``saesteer generate`` command that produces the steered (and gated) completions of ``req``."""
    parts = ["saesteer", "generate"]
    single = len(req.conversation) == 1 and req.conversation[0]["role"] == "user"
    prefix = ""
    if single:
        parts.append(req.conversation[0]["content"])
    else:
        import json

        line = json.dumps({"messages": req.conversation}, ensure_ascii=False)
        prefix = f"printf '%s\\n' {shlex.quote(line)} > chat.jsonl && "
        parts += ["--prompts-file", "chat.jsonl"]
    parts += ["--model", model_spec, "--sae", sae_path]
    for f, v in req.clamps:
        parts += ["--clamp", f"{f}={v:g}"]
    parts += ["--max-new-tokens", str(req.max_new_tokens)]
    if req.do_sample:
        parts += ["--do-sample", "--temperature", f"{req.temperature:g}", "--top-p", f"{req.top_p:g}"]
        parts += ["--seed", str(req.seed)]
    note = ""
    if req.gate is not None and req.gate_spec is not None:
        parts += ["--gate", req.gate_spec]
        if req.gate_spec.startswith("feature:"):  # a gate file carries its own reduction
            parts += ["--gate-reduce", req.gate.reduce]
            if req.gate.reduce == "tail":
                parts += ["--gate-tail", str(req.gate.tail)]
    elif req.gate is not None:
        note = f"  # plus the gate file with threshold {req.gate.threshold:g} (its own threshold differs)"
    return prefix + " ".join(shlex.quote(p) for p in parts) + note
