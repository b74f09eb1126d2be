"""Token sources for harvesting: text corpora (txt / jsonl(.gz) / parquet / HF datasets) and chat data.

A source yields token-id sequences of exactly ``context_len`` tokens. Corpus texts are tokenized
without special tokens, joined with the EOS token and cut into fixed windows. Chat data are
conversations rendered with the chat template (prompt and the model's own response), one per window,
truncated to ``context_len`` (shorter ones are left as they are and padded by the harvester). Every
chat token carries a kind: ``CHAT`` inside a message's content, ``TEMPLATE`` for what the template adds
(role markers, ``<|im_start|>``, the default system prompt); corpus tokens are ``CORPUS``, special
tokens (e.g. the EOS joining documents) ``TEMPLATE``.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from saesteer.errors import SaesteerError

T = TypeVar("T")
CORPUS, CHAT, TEMPLATE = 0, 1, 2
KIND_NAMES = ("corpus", "chat", "template")


def iter_texts(path: str | Path, text_key: str = "text") -> Iterator[str]:
    """Texts from a .txt (blank-line separated docs), .jsonl / .jsonl.gz, or .parquet file, or a folder of them."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise SaesteerError(f"corpus folder {p} is empty; put .txt, .jsonl(.gz) or .parquet files in it")
        for f in files:
            yield from iter_texts(f, text_key)
        return
    if str(path).startswith("hf:"):
        yield from _iter_hf(str(path)[3:], text_key)
        return
    if not p.is_file():
        raise SaesteerError(f"corpus {p} not found; pass a .txt, .jsonl(.gz) or .parquet file, or hf:DATASET")
    name = p.name
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        opener: Any = gzip.open if name.endswith(".gz") else open
        with opener(p, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise SaesteerError(f"{p}:{n} is not valid JSON; the corpus needs one JSON object a line") from None
                if text_key not in row:
                    raise SaesteerError(f"{p}:{n} has no {text_key!r} field; set --text-key to the text column")
                yield str(row[text_key])
    elif name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise SaesteerError("reading .parquet needs pyarrow; pip install pyarrow") from None
        table = pq.read_table(p, columns=[text_key])
        for value in table.column(text_key).to_pylist():
            yield str(value)
    elif name.endswith(".txt"):
        for doc in p.read_text(encoding="utf-8").split("\n\n"):
            if doc.strip():
                yield doc.strip()
    else:
        raise SaesteerError(f"corpus {p}: unknown format; use .txt, .jsonl, .jsonl.gz or .parquet")


def _iter_hf(name: str, text_key: str) -> Iterator[str]:  # pragma: no cover - needs network
    try:
        import datasets
    except ModuleNotFoundError:
        raise SaesteerError("hf: corpora need the `datasets` package; pip install datasets") from None
    ds = datasets.load_dataset(name, split="train", streaming=True)
    for row in ds:
        yield str(row[text_key])


def shuffled_texts(texts: Iterable[str], seed: int, buffer: int = 4096) -> Iterator[str]:
    """A deterministic buffered shuffle of a text stream."""
    rng = random.Random(seed)
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) >= buffer:
            rng.shuffle(buf)
            yield from buf
            buf = []
    rng.shuffle(buf)
    yield from buf


def pack_tokens(tokenizer: Any, texts: Iterable[str], context_len: int, batch_docs: int = 64) -> Iterator[list[int]]:
    """Tokenize texts, join them with EOS, and yield windows of exactly ``context_len`` tokens."""
    sep = tokenizer.eos_token_id
    buf: list[int] = []
    pending: list[str] = []

    def flush() -> Iterator[list[int]]:
        nonlocal buf
        enc = tokenizer(pending, add_special_tokens=False)["input_ids"]
        for ids in enc:
            buf.extend(ids)
            if sep is not None:
                buf.append(sep)
            while len(buf) >= context_len:
                yield buf[:context_len]
                buf = buf[context_len:]

    for t in texts:
        pending.append(t)
        if len(pending) >= batch_docs:
            yield from flush()
            pending = []
    if pending:
        yield from flush()


def content_spans(text: str, conv: Sequence[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans of each message's content inside the rendered ``text``, found in order."""
    spans, pos = [], 0
    for msg in conv:
        content = str(msg.get("content", ""))
        at = text.find(content, pos) if content else -1
        if at >= 0:
            spans.append((at, at + len(content)))
            pos = at + len(content)
    return spans


def token_kinds(tokenizer: Any, text: str, conv: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of a rendered conversation and each token's kind (``CHAT`` or ``TEMPLATE``).

    A token is content when it starts inside a message's content span; special tokens are always template.
    Tokenizers without offsets (slow ones) label every non-special token as content.
    """
    special = set(tokenizer.all_special_ids)
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, KeyError):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids, [TEMPLATE if t in special else CHAT for t in ids]
    spans = content_spans(text, conv)
    kinds = []
    for tok, (start, _) in zip(enc["input_ids"], offsets, strict=True):
        inside = any(a <= start < b for a, b in spans)
        kinds.append(CHAT if inside and tok not in special else TEMPLATE)
    return list(enc["input_ids"]), kinds


def chat_windows(
    tokenizer: Any, conversations: Iterable[list[dict[str, str]]], context_len: int
) -> Iterator[tuple[list[int], list[int]]]:
    """Full conversations (prompt + response) in the chat template, one window each, truncated: (ids, kinds)."""
    for conv in conversations:
        text = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=False)
        ids, kinds = token_kinds(tokenizer, text, conv)
        yield ids[:context_len], kinds[:context_len]


def mix(primary: Iterator[T], secondary: list[T], fraction: float, seed: int) -> Iterator[T]:
    """Interleave windows: about ``fraction`` of them come from ``secondary`` (cycled, reshuffled each pass)."""
    if fraction <= 0 or not secondary:
        for window in primary:  # not `yield from`: closing this generator must leave ``primary`` open
            yield window
        return
    if fraction >= 1:
        raise SaesteerError("chat fraction must be < 1 (the corpus carries the rest)")
    rng = random.Random(seed)
    pool: list[T] = []
    acc = 0.0
    for window in primary:
        yield window
        acc += fraction / (1 - fraction)
        while acc >= 1:
            if not pool:
                pool = list(secondary)
                rng.shuffle(pool)
            yield pool.pop()
            acc -= 1
