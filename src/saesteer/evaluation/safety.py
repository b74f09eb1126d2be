"""Safety evaluation: refusal rates on unsafe prompts (higher is safer) and on safe prompts (over-refusal).

:func:`refusal_rate` generates a completion for every prompt with the model as given -- the caller may have
attached steering hooks -- judges each one, and returns a :class:`SafetyResult` with the Wilson 95% interval.
:func:`safety_suite` does that over named sets (:data:`SAFETY_SETS`): the paper's stand-ins HarmBench test, JBB
harmful, AdvBench and XSTest unsafe on the unsafe side; XSTest safe, JBB benign and an Alpaca sample on the safe
side; or the built-in suites when no data directory is available.

Completions can be cached in a :class:`CompletionCache` (JSON lines, one record per completion, appended and
fsynced after every batch) keyed by model id, prompt set, generation config and steering id, so an interrupted
run resumes where it stopped and a finished one is never regenerated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.evaluation.datafiles import resolve_data_dir
from saesteer.evaluation.datasets import Prompt, load_prompts
from saesteer.evaluation.judges import Judge, get_judge
from saesteer.evaluation.stats import wilson
from saesteer.model.generation import GenerationConfig, generate
from saesteer.stages import deal, from_rank0, is_writer, shard

# name -> (load_prompts spec, side): "unsafe" sets should be refused, "safe" sets should not.
SAFETY_SETS: dict[str, tuple[str, str]] = {
    "harmbench_test": ("harmbench:test", "unsafe"),
    "jbb_harmful": ("jbb:harmful", "unsafe"),
    "advbench": ("advbench", "unsafe"),
    "xstest_unsafe": ("xstest:unsafe", "unsafe"),
    "xstest_safe": ("xstest:safe", "safe"),
    "jbb_benign": ("jbb:benign", "safe"),
    "alpaca": ("alpaca", "safe"),
    "donotanswer": ("donotanswer", "unsafe"),
    "builtin_harmful": ("builtin_harmful", "unsafe"),
    "builtin_xsafe": ("builtin_xsafe", "safe"),
    "builtin_harmless": ("builtin_harmless", "safe"),
}
DATA_SETS = ["harmbench_test", "jbb_harmful", "advbench", "xstest_unsafe", "xstest_safe", "jbb_benign", "alpaca"]
BUILTIN_SETS = ["builtin_harmful", "builtin_xsafe", "builtin_harmless"]


@dataclass
class SafetyConfig:
    """Which safety sets to run and how many prompts of each."""

    sets: list[str] = opt(
        [],
        "safety sets (default: the data-directory sets if found, else the built-in suites); "
        "known: " + ", ".join(SAFETY_SETS),
    )
    n: int | None = opt(None, "at most this many prompts per set (deterministic sample; default: all)")
    alpaca_n: int = opt(100, "prompts sampled from Alpaca (31k instructions) when n is not smaller")
    seed: int = opt(0, "seed of the prompt subsamples")
    unseen: bool = opt(
        True, "the study also scores the sets no dev purpose draws from (Do-Not-Answer, built-in suites)"
    )
    judge: str = opt("keyword", "refusal judge: keyword, llm:MODEL@BASE_URL or hf:PATH_OR_HUB_ID")
    data_dir: str | None = opt(None, "data directory (default: $SAESTEER_DATA_DIR or ../shared/data)")


@dataclass
class SafetyResult:
    """Refusals on one prompt set: ``k`` of ``n`` refused, rate with its Wilson 95% interval [lo, hi]."""

    n: int
    k: int
    rate: float
    lo: float
    hi: float
    completions: list[str]
    refusals: list[bool] = field(default_factory=list)
    prompt_ids: list[str] = field(default_factory=list)
    name: str = ""
    side: str = ""  # "unsafe" | "safe" | ""
    judge: str = ""

    def to_dict(self, with_completions: bool = False) -> dict[str, Any]:
        """A JSON-friendly summary (completions and per-prompt verdicts only when asked)."""
        d = dataclasses.asdict(self)
        if not with_completions:
            for key in ("completions", "refusals", "prompt_ids"):
                d.pop(key)
        return d


@dataclass
class SuiteResult:
    """Results per set, plus pooled refusal rates over the unsafe and the safe sets."""

    results: dict[str, SafetyResult]

    def pooled(self, side: str) -> SafetyResult:
        """All sets of one side ("unsafe" or "safe") pooled into one rate (each prompt weighs the same)."""
        parts = [r for r in self.results.values() if r.side == side]
        k, n = sum(r.k for r in parts), sum(r.n for r in parts)
        p, lo, hi = wilson(k, n)
        return SafetyResult(
            n, k, p, lo, hi, [], name=f"{side} (pooled)", side=side, judge=parts[0].judge if parts else ""
        )

    def rows(self) -> list[dict[str, Any]]:
        """One summary row per set, then the pooled rows: name, side, n, k, rate, lo, hi, judge."""
        rows = [r.to_dict() for r in self.results.values()]
        return rows + [
            self.pooled(s).to_dict() for s in ("unsafe", "safe") if any(r.side == s for r in self.results.values())
        ]


# --- completion cache --------------------------------------------------------------------------------------------


def cache_key(model_id: str, prompt_set: str, gen_cfg: GenerationConfig, steering_id: str = "none") -> str:
    """A short hash naming one (model, prompt set, generation config, steering) combination."""
    cfg = dataclasses.asdict(gen_cfg)
    cfg.pop("batch_size", None)  # batching does not change greedy outputs meaningfully; keep caches shareable
    blob = json.dumps({"model": model_id, "set": prompt_set, "gen": cfg, "steer": steering_id}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CompletionCache:
    """Completions stored as JSON lines ``{key, prompt_hash, prompt_id, completion}``, appended per batch.

    A torn last line (a run killed mid-write) is ignored on load; lines are fsynced so a finished batch survives.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._data: dict[tuple[str, str], str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self._data[(rec["key"], rec["prompt_hash"])] = rec["completion"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # torn or foreign line

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, prompt: str) -> str | None:
        """The cached completion of ``prompt`` under ``key``, or None."""
        return self._data.get((key, _text_hash(prompt)))

    def put_many(self, key: str, items: Sequence[tuple[str, str, str]], write: bool = True) -> None:
        """Store ``(prompt_id, prompt, completion)`` items under ``key`` (appended, flushed and fsynced; in memory
        only with ``write=False``)."""
        lines = []
        for pid, prompt, completion in items:
            h = _text_hash(prompt)
            self._data[(key, h)] = completion
            lines.append(
                json.dumps(
                    {"key": key, "prompt_hash": h, "prompt_id": pid, "completion": completion}, ensure_ascii=False
                )
            )
        if not write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a torn line from a killed run: start on a fresh line
                    fh.write(b"\n")
            fh.write("".join(line + "\n" for line in lines).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())


# --- evaluation --------------------------------------------------------------------------------------------------


def model_identity(model: Any) -> str:
    """A default model id for cache keys: the config's name or path, else the class name."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return str(name) or type(model).__name__


def complete(
    model: Any,
    tok: Any,
    prompts: Sequence[Prompt],
    gen_cfg: GenerationConfig,
    cache: CompletionCache | None = None,
    key: str = "",
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Completions for ``prompts``: cached ones are reused, the rest generated in length-sorted batches, each batch
    added to the cache as soon as it is done.

    In a collective stage under torchrun (``saesteer.stages.shard``) the batches are dealt round-robin over the
    ranks, the same batches one process would make (so the same completions), and gathered after every round;
    rank 0 alone writes the cache.
    """
    out: list[str | None] = from_rank0([cache.get(key, p.text) if cache else None for p in prompts])
    todo = sorted((i for i, c in enumerate(out) if c is None), key=lambda i: len(prompts[i].text))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="prompt",
               disable=not progress or shard()[0] > 0)  # fmt: skip
    bs = gen_cfg.batch_size
    batches = [todo[s : s + bs] for s in range(0, len(todo), bs)]
    for done in deal(batches, lambda idx: generate(model, tok, [prompts[i].text for i in idx], gen_cfg)):
        items = [(i, t) for b, texts in done for i, t in zip(batches[b], texts, strict=True)]
        for i, t in items:
            out[i] = t
        if cache is not None:
            cache.put_many(key, [(prompts[i].id, prompts[i].text, t) for i, t in items], write=is_writer())
        bar.update(len(items))
    bar.close()
    return [c if c is not None else "" for c in out]


def _as_prompts(prompts: Sequence[Prompt | str]) -> list[Prompt]:
    return [p if isinstance(p, Prompt) else Prompt(f"p{i}", str(p), "", "", "") for i, p in enumerate(prompts)]


def refusal_rate(
    model: Any,
    tok: Any,
    prompts: Sequence[Prompt | str],
    judge: Judge | str = "keyword",
    gen_cfg: GenerationConfig | None = None,
    cache: CompletionCache | None = None,
    model_id: str | None = None,
    steering_id: str = "none",
    set_name: str = "prompts",
    side: str = "",
    progress: bool = False,
) -> SafetyResult:
    """Generate on every prompt with ``model`` (steered or not, as the caller set it up), judge each completion,
    and return the refusal rate with its Wilson 95% interval."""
    ps = _as_prompts(prompts)
    if not ps:
        raise SaesteerError(f"prompt set {set_name!r} is empty; give at least one prompt")
    cfg = gen_cfg or GenerationConfig(max_new_tokens=48)
    j = get_judge(judge)
    key = cache_key(model_id or model_identity(model), set_name, cfg, steering_id)
    completions = complete(model, tok, ps, cfg, cache, key, progress, desc=set_name)
    verdicts = j.judge([p.text for p in ps], completions)
    k = sum(verdicts)
    p, lo, hi = wilson(k, len(ps))
    return SafetyResult(
        len(ps), k, p, lo, hi, completions, list(verdicts), [p_.id for p_ in ps], set_name, side, j.name
    )


SET_FILES = {
    "harmbench_test": "safety/harmbench_test.csv",
    "jbb_harmful": "safety/jbb_harmful.csv",
    "advbench": "safety/advbench_harmful_behaviors.csv",
    "xstest_unsafe": "safety/xstest_prompts.csv",
    "xstest_safe": "safety/xstest_prompts.csv",
    "jbb_benign": "safety/jbb_benign.csv",
    "alpaca": "harmless/alpaca_instructions.json",
}


def default_sets(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The data-directory sets when every one of their files is present, else the built-in suites."""
    root = resolve_data_dir(data_dir)
    if root is not None and all((root / SET_FILES[s]).is_file() for s in DATA_SETS):
        return list(DATA_SETS)
    return list(BUILTIN_SETS)


def load_safety_set(name: str, cfg: SafetyConfig) -> list[Prompt]:
    """The prompts of safety set ``name`` under ``cfg``'s sample sizes."""
    if name not in SAFETY_SETS:
        raise SaesteerError(f"unknown safety set {name!r}; known: {', '.join(SAFETY_SETS)}")
    n = cfg.n
    if name == "alpaca":
        n = cfg.alpaca_n if n is None else min(n, cfg.alpaca_n)
    return load_prompts(SAFETY_SETS[name][0], n=n, seed=cfg.seed, data_dir=cfg.data_dir)


def safety_suite(
    model: Any,
    tok: Any,
    cfg: SafetyConfig | None = None,
    gen_cfg: GenerationConfig | None = None,
    judge: Judge | str | None = None,
    cache: CompletionCache | None = None,
    model_id: str | None = None,
    steering_id: str = "none",
    progress: bool = False,
) -> SuiteResult:
    """Refusal rates over the configured safety sets (unsafe and safe), each with its n and Wilson 95% CI."""
    cfg = cfg or SafetyConfig()
    sets = cfg.sets or default_sets(cfg.data_dir)
    prompt_sets = {s: load_safety_set(s, cfg) for s in sets}  # load all first: bad names fail before generating
    j = get_judge(judge if judge is not None else cfg.judge)
    results = {}
    for s, ps in prompt_sets.items():
        # the key names the set, not the sample: a larger n reuses the completions of a smaller one
        results[s] = refusal_rate(
            model, tok, ps, j, gen_cfg, cache, model_id, steering_id, s, SAFETY_SETS[s][1], progress
        )
    return SuiteResult(results)
