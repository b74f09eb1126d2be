"""Chat data for harvesting: prompts in the chat template with the model's own responses.

Responses are generated once and cached in a JSONL file (one conversation a line, appended batch by
batch, so an interrupted run resumes where it stopped). A kill mid-write can leave a torn last line;
before appending, the file is cut back to its last complete line, so the next record starts on a line
of its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from saesteer.errors import SaesteerError
from saesteer.model.generation import GenerationConfig, generate


def read_chat_file(path: str | Path) -> list[list[dict[str, str]]]:
    """Conversations from a JSONL file of ``{"messages": [...]}`` rows."""
    p = Path(path)
    if not p.is_file():
        raise SaesteerError(f"chat file {p} not found; build it with `saesteer harvest --chat-prompts ...`")
    convs = []
    lines = p.read_text().splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            convs.append(list(row["messages"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            if n == len(lines):  # a line torn by a kill mid-write: regenerate it
                break
            raise SaesteerError(f"{p}:{n} is not a {{'messages': [...]}} JSON row; fix or delete the file") from None
    return convs


def drop_torn_tail(path: Path) -> int:
    """Cut ``path`` back to its last newline if its last line is incomplete; returns the bytes removed.

    A last line without its newline that still parses as a full row is completed with the newline instead.
    """
    with open(path, "r+b") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return 0
        cut = data.rfind(b"\n") + 1
        try:
            complete = isinstance(json.loads(data[cut:]).get("messages"), list)
        except (ValueError, AttributeError):
            complete = False
        if complete:
            fh.write(b"\n")
            return 0
        fh.truncate(cut)
        return len(data) - cut


def build_chat_data(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    out_file: str | Path,
    gen_cfg: GenerationConfig | None = None,
    progress: bool = True,
) -> list[list[dict[str, str]]]:
    """Generate the model's responses to ``prompts`` (cached in ``out_file``); return full conversations."""
    gen_cfg = gen_cfg or GenerationConfig(max_new_tokens=48, batch_size=16)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, list[dict[str, str]]] = {}
    if out.is_file():
        drop_torn_tail(out)
        for conv in read_chat_file(out):
            done[conv[0]["content"]] = conv
    todo = [p for p in dict.fromkeys(prompts) if p not in done]
    bar = tqdm(
        total=len(prompts), initial=len(prompts) - len(todo), desc="chat responses", unit="conv", disable=not progress
    )
    for start in range(0, len(todo), gen_cfg.batch_size):
        batch = todo[start : start + gen_cfg.batch_size]
        outs = generate(model, tokenizer, batch, gen_cfg)
        with open(out, "a", encoding="utf-8") as fh:  # append-only; a torn tail is cut on resume
            for prompt, resp in zip(batch, outs, strict=True):
                conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": resp}]
                done[prompt] = conv
                fh.write(json.dumps({"messages": conv}) + "\n")
        bar.update(len(batch))
    bar.close()
    return [done[p] for p in dict.fromkeys(prompts)]
