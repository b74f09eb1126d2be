"""The browser's activation cache: corpus windows and chat prompts encoded by the SAE, built once and reused.

Rows are token windows of a corpus (the ``--corpus`` file, the data directory's corpus, or the
docstrings of Python's standard library when neither exists) plus built-in chat prompts through the
chat template. Each token keeps its sparse SAE code (a
:class:`~saesteer.features.contexts.ContextStore`). The cache lives in a folder named by a hash of
the SAE's fingerprint, the model and the token rows, so a changed SAE, model or corpus builds a new
one and an unchanged one is loaded from disk. The build runs in a background thread, one batch at a
time under the model lock (generation requests interleave with it), and reports its progress.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saesteer.app.config import AppConfig
from saesteer.config import atomic_write_json
from saesteer.errors import SaesteerError
from saesteer.features.contexts import FILE, ContextStore, build_store, corpus_rows, merge_stores, sae_fingerprint
from saesteer.sae.base import SAE
from saesteer.stages import stable_hash


def default_cache_root() -> Path:
    from saesteer.model.loading import default_cache_dir

    return default_cache_dir() / "app"


def corpus_texts(cfg: AppConfig) -> tuple[list[str], str]:
    """Texts for the corpus windows (as feature discovery reads them) and a name for where they came from;
    the built-in stdlib docstrings when there is neither ``cfg.corpus`` nor a data directory with a corpus."""
    from saesteer.evaluation.datafiles import data_dir
    from saesteer.features.reference import corpus_texts as reference_texts

    if cfg.corpus:
        return reference_texts(cfg.corpus, None, cfg.n_windows, cfg.seed) or [], cfg.corpus
    root = data_dir(cfg.data_dir)
    if root is not None and (root / "corpus" / "english_mix_corpus.jsonl.gz").is_file():
        texts = reference_texts(None, str(root), cfg.n_windows, cfg.seed) or []
        return texts, str(root / "corpus" / "english_mix_corpus.jsonl.gz")
    from saesteer.study.corpus import stdlib_docstrings

    return stdlib_docstrings()[: cfg.n_windows * 4], "builtin:stdlib-docstrings"


def chat_rows(tokenizer: Any, cfg: AppConfig) -> tuple[list[list[int]], list[str]]:
    """Built-in harmful and harmless prompts through the chat template (one row each)."""
    from saesteer.evaluation.datasets import load_prompts
    from saesteer.model.generation import encode_chats

    rows: list[list[int]] = []
    sources: list[str] = []
    half = cfg.chat_prompts // 2
    for name, label in (("builtin_harmful", "chat:harmful"), ("builtin_harmless", "chat:harmless")):
        n = half if label == "chat:harmful" else cfg.chat_prompts - half
        if n <= 0:
            continue
        for p in load_prompts(name, n=n, seed=cfg.seed):
            rows.append(encode_chats(tokenizer, [p.text])["input_ids"][0].tolist())
            sources.append(label)
    return rows, sources


class ActivationCache:
    """Builds (in a thread) or loads the context store; ``status()`` tells the page how far it got."""

    def __init__(
        self, model: Any, tokenizer: Any, sae: SAE, cfg: AppConfig, model_lock: threading.Lock, model_name: str
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.sae = sae
        self.cfg = cfg
        self.lock = model_lock
        self.model_name = model_name
        self.root = Path(cfg.acts_cache) if cfg.acts_cache else default_cache_root()
        self.state = "pending"  # pending -> preparing -> building -> ready | error
        self.done = 0
        self.total = 0
        self.message = ""
        self.path: Path | None = None
        self.store: ContextStore | None = None
        self.on_ready: list[Callable[[ContextStore], None]] = []
        self._thread: threading.Thread | None = None

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "fraction": (self.done / self.total) if self.total else (1.0 if self.state == "ready" else 0.0),
            "message": self.message,
            "path": str(self.path) if self.path else None,
        }

    def start(self) -> None:
        """Load or build in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="saesteer-app-cache", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the cache is ready or failed; True when ready."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state == "ready"

    def _run(self) -> None:
        try:
            self._load_or_build()
        except Exception as exc:  # reported on the page; the rest of the app keeps working
            self.state = "error"
            self.message = f"building the activation cache failed: {exc}"
            return
        assert self.store is not None
        for fn in self.on_ready:
            fn(self.store)
        self.state = "ready"

    def _rows(self) -> tuple[list[list[int]], list[str], str]:
        texts, source = corpus_texts(self.cfg)
        rows = corpus_rows(self.tokenizer, texts, self.cfg.context_len, self.cfg.n_windows)
        if not rows:
            raise SaesteerError(f"the corpus {source} gave no token windows; give a corpus with text (--corpus)")
        crows, csources = chat_rows(self.tokenizer, self.cfg)
        return rows + crows, ["corpus"] * len(rows) + csources, source

    def _load_or_build(self) -> None:
        self.state = "preparing"
        self.message = "reading the corpus"
        rows, sources, source = self._rows()
        digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:16]
        fp = sae_fingerprint(self.sae)
        key = stable_hash({"sae": fp, "model": self.model_name, "rows": digest, "sources": sources}, 12)
        folder = self.root / f"{fp}-{key}"
        self.path = folder / FILE
        self.total = len(rows)
        if self.path.is_file():
            store = ContextStore.load(self.path)
            if store.fingerprint == fp and store.n_rows == len(rows):
                self.store, self.done, self.message = store, len(rows), f"loaded from {self.path}"
                return
        self.state = "building"
        self.message = f"encoding {len(rows)} rows ({source} + chat prompts)"
        t0 = time.time()
        parts: list[ContextStore] = []
        bs = self.cfg.batch_size
        for start in range(0, len(rows), bs):
            with self.lock:
                parts.append(build_store(self.model, self.sae, rows[start : start + bs], sources[start : start + bs]))
            self.done = min(start + bs, len(rows))
        store = merge_stores(parts)
        folder.mkdir(parents=True, exist_ok=True)
        store.save(self.path)
        meta = {
            "model": self.model_name,
            "sae_fingerprint": fp,
            "hook": self.sae.cfg.hook_name,
            "corpus": source,
            "rows": len(rows),
            "tokens": store.n_tokens,
            "seconds": round(time.time() - t0, 2),
        }
        atomic_write_json(folder / "meta.json", meta)
        self.store = store
        self.message = f"built {len(rows)} rows, {store.n_tokens} tokens in {meta['seconds']} s; saved to {self.path}"
