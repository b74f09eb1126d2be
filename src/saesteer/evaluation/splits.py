"""Dev/test splits by prompt, and a registry that records which prompt serves which purpose.

Every prompt a stage uses has a *purpose*: SAE chat data (``sae_chat``), the refusal direction (``direction``),
archetypes and rankers (``rankers``), the causal screen (``screen``), the clamp-value choice (``clamp_choice``),
gate calibration and probe fitting (``gate``), few-shot examples (``fewshot``), or test scoring (``test``).

Normalisation: ``norm(t) = " ".join(t.lower().split())`` (lowercase, whitespace runs collapsed, ends stripped);
a text's key is ``h(t) = sha256(norm(t))`` in hex. Each dataset splits into a dev and a test part by a
:class:`SplitRule`: either by its upstream files (HarmBench val/test, MMLU dev/test, GSM8K train/test), or by hash:
a text is dev iff ``int(h(t)[:16], 16) / 16**16 < dev_fraction`` -- deterministic, independent of order and seed,
and the same for a text wherever it appears. Dev purposes draw from the dev part minus every text that lies in
the test part of *any* prompt set (JBB, for one, repeats AdvBench and HarmBench behaviours), so no text a stage
fits on is ever scored.

:class:`SplitRegistry` hands out the samples and records ``h`` of every text per purpose; it raises as soon as a
text would serve ``test`` and any other purpose. ``to_json()`` is ``splits.json``; :func:`check_disjoint`
recomputes the overlaps from that file alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json
from saesteer.errors import SaesteerError
from saesteer.evaluation import benchdata
from saesteer.evaluation.builtin import builtin_gsm8k, builtin_mmlu, builtin_truthfulqa
from saesteer.evaluation.datafiles import data_dir as resolve_data_dir
from saesteer.evaluation.datafiles import has_data, subsample
from saesteer.evaluation.datasets import load_prompts
from saesteer.evaluation.humaneval import load_humaneval
from saesteer.evaluation.records import FracturedItem, MathProblem, MCQuestion, Prompt, TruthfulQAItem

PURPOSES = ("sae_chat", "direction", "rankers", "screen", "clamp_choice", "gate", "fewshot", "test")
DEV_PURPOSES = PURPOSES[:-1]
FORMAT = "saesteer-splits/1"
NORMALISATION = "lowercase, whitespace runs collapsed to one space, stripped; sha256 of the UTF-8 text"


def normalise(text: str) -> str:
    """Lowercase, collapse whitespace runs to one space, strip the ends."""
    return " ".join(text.lower().split())


def text_hash(text: str) -> str:
    """sha256 (hex) of the normalised text."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def hash_is_dev(digest: str, dev_fraction: float) -> bool:
    """True when the text with this sha256 falls in the dev part of a hash-split dataset."""
    return int(digest[:16], 16) / float(16**16) < dev_fraction


@dataclass(frozen=True)
class SplitRule:
    """How one dataset divides: upstream split names (``dev_split``/``test_split``) or a hash ``dev_fraction``."""

    dev_split: str | None = None
    test_split: str | None = None
    dev_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        if self.dev_split:
            return {"dev": f"upstream split {self.dev_split}", "test": f"upstream split {self.test_split}"}
        return {"dev": f"sha256 < {self.dev_fraction:g}", "test": "the rest"}


RULES: dict[str, SplitRule] = {
    "harmbench": SplitRule("val", "test"),
    "mmlu": SplitRule("dev", "test"),
    "gsm8k": SplitRule("train", "test"),
    "advbench": SplitRule(dev_fraction=0.3),
    "donotanswer": SplitRule(dev_fraction=0.7),
    "alpaca": SplitRule(dev_fraction=0.5),
    "xstest": SplitRule(dev_fraction=0.3),
    "jbb": SplitRule(dev_fraction=0.3),
    "builtin_harmful": SplitRule(dev_fraction=0.5),
    "builtin_harmless": SplitRule(dev_fraction=0.5),
    "builtin_xsafe": SplitRule(dev_fraction=0.5),
    "builtin_math": SplitRule(dev_fraction=0.3),
    "builtin_mc": SplitRule(),
    "builtin_truthfulqa": SplitRule(),
    "truthfulqa": SplitRule(),
    "fractured": SplitRule(),
    "fractured_benign": SplitRule(),
    "humaneval": SplitRule(),
}
PROMPT_SETS = ("harmbench", "advbench", "donotanswer", "alpaca", "xstest", "jbb")
BUILTIN_PROMPT_SETS = ("builtin_harmful", "builtin_harmless", "builtin_xsafe")


def item_texts(item: Any) -> list[str]:
    """The texts a model is shown for one item (an MC question is its stem plus its options)."""
    if isinstance(item, Prompt):
        return [item.text]
    if isinstance(item, MCQuestion):
        return ["\n".join([item.question, *item.choices])]
    if isinstance(item, MathProblem | TruthfulQAItem):
        return [item.question]
    if isinstance(item, FracturedItem):
        return [*item.steps, *([item.original] if item.original else [])]
    if hasattr(item, "prompt") and isinstance(item.prompt, str):
        return [item.prompt]
    raise SaesteerError(f"no text known for a {type(item).__name__}; record its texts with registry.record")


def _item_loader(name: str, split: str | None, root: str | os.PathLike[str] | None) -> list[Any]:
    loaders: dict[str, Callable[[], list[Any]]] = {
        "mmlu": lambda: benchdata.load_mmlu(data_dir=root, split=split or "test"),
        "gsm8k": lambda: benchdata.load_gsm8k(data_dir=root, split=split or "test"),
        "truthfulqa": lambda: benchdata.load_truthfulqa(data_dir=root),
        "fractured": lambda: benchdata.load_fractured(data_dir=root),
        "fractured_benign": lambda: benchdata.load_fractured(data_dir=root, benign=True),
        "builtin_mc": builtin_mmlu,
        "builtin_math": builtin_gsm8k,
        "builtin_truthfulqa": builtin_truthfulqa,
    }
    if name == "humaneval":
        return list(load_humaneval())
    if name not in loaders:
        raise SaesteerError(f"unknown dataset {name!r} for take_items; known: {', '.join([*loaders, 'humaneval'])}")
    return loaders[name]()


class SplitRegistry:
    """Hands out dev and test samples and records every text's sha256 per purpose (create one per study)."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.data_dir = data_dir
        self._cache: dict[tuple[str, str | None], list[Any]] = {}
        self._hashes: dict[str, dict[str, set[str]]] = {p: {} for p in PURPOSES}  # purpose -> sha -> datasets
        self._counts: dict[str, dict[str, int]] = {p: {} for p in PURPOSES}
        self._test_universe: set[str] | None = None
        self._parts: dict[tuple[str, str], list[Any]] = {}

    # --- parts of a dataset ------------------------------------------------------------------------------------

    def _load(self, name: str, split: str | None) -> list[Any]:
        key = (name, split)
        if key not in self._cache:
            base = name.partition(":")[0]
            if base in PROMPT_SETS or base in BUILTIN_PROMPT_SETS:
                self._cache[key] = load_prompts(name, split, data_dir=self.data_dir)
            else:
                self._cache[key] = _item_loader(base, split, self.data_dir)
        return self._cache[key]

    def part(self, dataset: str, side: str) -> list[Any]:
        """Every item of ``dataset``'s ``side`` ("dev" or "test") in file order, one per distinct text."""
        if (dataset, side) not in self._parts:
            self._parts[(dataset, side)] = self._part(dataset, side)
        return list(self._parts[(dataset, side)])

    def _part(self, dataset: str, side: str) -> list[Any]:
        if side not in ("dev", "test"):
            raise SaesteerError(f"side {side!r} unknown; use dev or test")
        base, _, named = dataset.partition(":")
        if base not in RULES:
            raise SaesteerError(f"dataset {dataset!r} has no split rule; known: {', '.join(RULES)}")
        rule = RULES[base]
        if rule.dev_split:
            want = rule.dev_split if side == "dev" else rule.test_split
            if named and named != want:
                raise SaesteerError(f"{dataset!r} is {base}'s {named} split, not its {side} part ({base}:{want})")
            items = self._load(base, want)
            if side == "dev":  # an upstream dev row that repeats a test row is test
                test = {text_hash(t) for it in self.part(base, "test") for t in item_texts(it)}
                items = [it for it in items if not any(text_hash(t) in test for t in item_texts(it))]
        else:
            items = self._load(dataset, None)
        out, seen = [], set()
        for it in items:
            hs = [text_hash(t) for t in item_texts(it)]
            if rule.dev_split is None and any(hash_is_dev(h, rule.dev_fraction) for h in hs) != (side == "dev"):
                continue
            if hs[0] not in seen:
                seen.add(hs[0])
                out.append(it)
        return out

    def test_universe(self) -> set[str]:
        """sha256 of every text in the test part of any prompt set (and FRACTURED) available here."""
        if self._test_universe is None:
            names = list(BUILTIN_PROMPT_SETS)
            if resolve_data_dir(self.data_dir) is not None:
                names += [n for n in PROMPT_SETS if has_data(n, self.data_dir)]
                names += ["fractured"] if has_data("fractured_sorry_bench", self.data_dir) else []
            self._test_universe = {text_hash(t) for n in names for it in self.part(n, "test") for t in item_texts(it)}
        return self._test_universe

    # --- taking samples ----------------------------------------------------------------------------------------

    def take_items(
        self,
        dataset: str,
        purpose: str,
        n: int | None = None,
        seed: int = 0,
        avoid: Sequence[str] = (),
        per_group: int | None = None,
    ) -> list[Any]:
        """``n`` items (all if None) of ``dataset``'s dev part (``purpose`` != "test") or test part, drawn under
        ``seed`` in file order, recorded under ``purpose``. ``avoid``: skip texts other purposes already used.
        ``per_group``: ``per_group`` items of each subject (MMLU) instead of ``n`` overall."""
        if purpose not in PURPOSES:
            raise SaesteerError(f"unknown purpose {purpose!r}; use one of {', '.join(PURPOSES)}")
        side = "test" if purpose == "test" else "dev"
        pool = self.part(dataset, side)
        banned = set().union(*(self._hashes[p] for p in avoid)) if avoid else set()
        if side == "dev":
            banned |= self.test_universe()
        pool = [it for it in pool if not any(text_hash(t) in banned for t in item_texts(it))]
        if side == "dev" and not pool:
            raise SaesteerError(f"dataset {dataset!r} has no dev part (its split rule keeps every item for test)")
        if per_group is not None:
            groups: dict[str, list[Any]] = {}
            for it in pool:
                groups.setdefault(str(getattr(it, "subject", "")), []).append(it)
            picked = {id(x) for g, items in groups.items() for x in subsample(items, per_group, seed, f"{g}:{purpose}")}
            chosen = [it for it in pool if id(it) in picked]
        else:
            chosen = subsample(pool, n, seed, f"{dataset}:{purpose}")
        self.record(dataset, purpose, [t for it in chosen for t in item_texts(it)])
        return chosen

    def take(
        self, dataset: str, purpose: str, n: int | None = None, seed: int = 0, avoid: Sequence[str] = ()
    ) -> list[Prompt]:
        """Like :meth:`take_items` for a prompt set (``advbench``, ``xstest:safe``, ``harmbench``...)."""
        if dataset.partition(":")[0] not in (*PROMPT_SETS, *BUILTIN_PROMPT_SETS):
            raise SaesteerError(f"{dataset!r} is not a prompt set; use take_items for capability and multi-turn data")
        return self.take_items(dataset, purpose, n, seed, avoid)

    def record(self, dataset: str, purpose: str, texts: Iterable[str]) -> None:
        """Record texts used for ``purpose`` (for prompts the registry did not hand out); raises on a test overlap."""
        if purpose not in PURPOSES:
            raise SaesteerError(f"unknown purpose {purpose!r}; use one of {', '.join(PURPOSES)}")
        hashes = [text_hash(t) for t in texts]
        others = DEV_PURPOSES if purpose == "test" else ("test",)
        for other in others:
            shared = [h for h in hashes if h in self._hashes[other]]
            if shared:
                names = sorted(set().union(*(self._hashes[other][h] for h in shared)))
                raise SaesteerError(
                    f"{len(shared)} text(s) of {dataset!r} for {purpose} are already used for {other} "
                    f"(from {', '.join(names)}); test prompts may serve nothing else"
                )
        for h in hashes:
            self._hashes[purpose].setdefault(h, set()).add(dataset)
        self._counts[purpose][dataset] = self._counts[purpose].get(dataset, 0) + len(hashes)

    # --- splits.json -------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Per purpose: the datasets (with text counts) and the sorted sha256 of every text used."""
        purposes = {
            p: {
                "datasets": sorted(self._counts[p]),
                "counts": dict(sorted(self._counts[p].items())),
                "sha256": sorted(self._hashes[p]),
            }
            for p in PURPOSES
            if self._hashes[p]
        }
        rules = {k: v.to_dict() for k, v in RULES.items()}
        return {"format": FORMAT, "normalisation": NORMALISATION, "rules": rules, "purposes": purposes}

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write ``splits.json`` atomically; returns its path."""
        p = Path(path)
        atomic_write_json(p, self.to_json())
        return p


def check_disjoint(splits: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, int]:
    """Overlaps between each dev purpose and ``test`` recomputed from a ``splits.json`` (a dict or its path):
    ``{purpose: shared texts}`` for every purpose that shares any; empty when the sets are disjoint."""
    if not isinstance(splits, Mapping):
        try:
            splits = json.loads(Path(splits).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SaesteerError(f"cannot read splits file {splits}: {exc}") from None
    if not isinstance(splits, Mapping) or not isinstance(splits.get("purposes"), Mapping):
        raise SaesteerError("not a splits.json: it lacks a 'purposes' mapping")
    purposes = splits["purposes"]
    test = set(purposes.get("test", {}).get("sha256", []))
    out = {}
    for name, entry in purposes.items():
        if name == "test":
            continue
        shared = len(test & set(entry.get("sha256", [])))
        if shared:
            out[name] = shared
    return out
