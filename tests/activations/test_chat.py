"""Chat data cache: a torn last line (a kill mid-write) does not break the resumed file."""

from __future__ import annotations

import json
from pathlib import Path

from saesteer.activations.chat import build_chat_data, drop_torn_tail, read_chat_file
from saesteer.model.generation import GenerationConfig

GEN = GenerationConfig(max_new_tokens=3, batch_size=2)


def test_resume_after_torn_line_keeps_every_record(tmp_path: Path, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    out = tmp_path / "chat.jsonl"
    first = build_chat_data(model, tok, ["a cat?", "a dog?"], out, GEN, progress=False)
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"messages": [{"role": "user", "con')  # killed mid-write of the third row
    convs = build_chat_data(model, tok, ["a cat?", "a dog?", "a bird?", "a fish?"], out, GEN, progress=False)
    assert [c[0]["content"] for c in convs] == ["a cat?", "a dog?", "a bird?", "a fish?"]
    assert convs[:2] == first  # cached rows reused, not regenerated
    again = read_chat_file(out)  # every line parses: the new rows did not glue onto the torn one
    assert [c[0]["content"] for c in again] == ["a cat?", "a dog?", "a bird?", "a fish?"]
    assert out.read_bytes().startswith(whole) and out.read_bytes().count(b"\n") == 4


def test_drop_torn_tail_completes_a_whole_row_missing_its_newline(tmp_path: Path) -> None:
    row = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    path = tmp_path / "c.jsonl"
    path.write_text(row + "\n" + row)
    assert drop_torn_tail(path) == 0 and path.read_text() == row + "\n" + row + "\n"
    path.write_text(row + "\n" + row[:10])
    assert drop_torn_tail(path) == 10 and path.read_text() == row + "\n"
    path.write_text(row + "\n")
    assert drop_torn_tail(path) == 0 and path.read_text() == row + "\n"
