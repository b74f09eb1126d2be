"""The results viewer's data: a ``saesteer reproduce`` folder's report, results table and per-prompt sweep.

Layout read (as :mod:`saesteer.study.run` writes it): ``OUT/report/`` holds ``report.md``,
``report.html``, ``derived.json`` and ``plots/``; each ``OUT/sweep-<key>/`` stage folder holds
``inputs.json`` (its grid of conditions), ``results.json`` (one row per condition and metric, with n
and a 95% interval) and ``completions.jsonl`` (one record per generated completion, keyed by
``cache_key(model, prompt set, generation config, condition key)``).

The drill-down matches each completion record to its condition and prompt set by recomputing those
keys and finds the prompt text by its hash among the prompt set's prompts. The verdict is the
study's own (the per-item outcomes of the ``unsafe_refusal`` / ``safe_refusal`` rows of
``results.json``); where a record has none, the keyword refusal judge is applied to the completion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saesteer.errors import SaesteerError

MNT_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _ints_named(obj: Any, name: str) -> set[int]:
    """Every int stored under key ``name`` anywhere in a nested JSON object."""
    found: set[int] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == name and isinstance(v, int) and not isinstance(v, bool):
                found.add(v)
            found |= _ints_named(v, name)
    elif isinstance(obj, list):
        for v in obj:
            found |= _ints_named(v, name)
    return found


def _study_verdict(table: Any, condition: str, item: str) -> bool | None:
    """The study's refusal verdict for ``item`` (``set/prompt_id``) under ``condition``, if recorded."""
    for metric in ("unsafe_refusal", "safe_refusal"):
        values = table.items(condition, metric) or {}
        if item in values:
            return bool(values[item])
    return None


class StudyResults:
    """One study folder (or its ``report/``), read lazily; ``available`` is False when nothing is there."""

    def __init__(self, path: str | None, data_dir: str | None = None):
        self.data_dir = data_dir
        self.report_dir: Path | None = None
        self.sweep_dir: Path | None = None
        self._prompts: dict[str, Any] | None = None
        if not path:
            return
        p = Path(path)
        if not p.is_dir():
            raise SaesteerError(f"--study {p} is not a folder; pass a `saesteer reproduce` output folder")
        if (p / "report" / "report.md").is_file():
            self.report_dir = p / "report"
        elif (p / "report.md").is_file():
            self.report_dir, p = p, p.parent
        sweeps = sorted(
            (d for d in p.glob("sweep-*") if (d / "results.json").is_file()), key=lambda d: d.stat().st_mtime
        )
        self.sweep_dir = sweeps[-1] if sweeps else None
        if self.report_dir is None and self.sweep_dir is None:
            raise SaesteerError(f"{p} holds neither report/report.md nor a sweep-*/results.json; run reproduce first")

    @property
    def available(self) -> bool:
        return self.report_dir is not None or self.sweep_dir is not None

    def overview(self) -> dict[str, Any]:
        """Report files, plots and the results table."""
        out: dict[str, Any] = {"available": self.available, "report": None, "plots": [], "table": [], "meta": {}}
        if self.report_dir is not None:
            rd = self.report_dir
            out["report"] = {n: n for n in ("report.html", "report.md", "derived.json") if (rd / n).is_file()}
            out["plots"] = sorted(str(f.relative_to(rd)) for f in rd.glob("plots/*") if f.suffix in (".png", ".svg"))
        if self.sweep_dir is not None:
            from saesteer.report.results import ResultsTable

            table = ResultsTable.load(self.sweep_dir / "results.json")
            out["table"] = [r.to_dict() for r in table.rows]
            out["meta"] = table.meta
            out["conditions"] = [c.name for c in self._grid()]
        return out

    def file(self, rel: str) -> Path:
        """A file inside the report folder (never outside it)."""
        if self.report_dir is None:
            raise FileNotFoundError(rel)
        root = self.report_dir.resolve()
        target = (root / rel).resolve()
        if root not in target.parents or not target.is_file():
            raise FileNotFoundError(rel)
        return target

    # --- drill-down ---------------------------------------------------------------------------------------
    def _inputs(self) -> dict[str, Any]:
        assert self.sweep_dir is not None
        f = self.sweep_dir / "inputs.json"
        if not f.is_file():
            return {}
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # a torn or foreign file: the drill-down shows what it can match without the grid
        return data.get("inputs", data) if isinstance(data, dict) else {}

    def _grid(self) -> list[Any]:
        from saesteer.study.design import Condition

        return [Condition.from_dict(c) for c in self._inputs().get("grid") or []]

    def _set_names(self) -> list[str]:
        from saesteer.evaluation.safety import SAFETY_SETS

        test = self._inputs().get("test")
        return list(dict.fromkeys([*(test if isinstance(test, dict) else {}), *SAFETY_SETS]))

    def _prompt_texts(self) -> dict[str, Any]:
        """prompt hash -> (set, side, text) over every prompt set of the sweep that loads here."""
        if self._prompts is None:
            from saesteer.evaluation.datasets import load_prompts
            from saesteer.evaluation.safety import SAFETY_SETS, _text_hash

            self._prompts = {}
            for name in self._set_names():
                source, side = SAFETY_SETS.get(name, (name, ""))
                try:
                    prompts = load_prompts(source, data_dir=self.data_dir)
                except SaesteerError:
                    continue  # that set's data is not in the data directory
                for p in prompts:
                    self._prompts.setdefault(_text_hash(p.text), (name, side, p.text))
        return self._prompts

    def _key_map(self) -> dict[str, tuple[str, str]]:
        """completion-cache key -> (condition name, prompt set)."""
        from saesteer.evaluation.safety import cache_key
        from saesteer.model.generation import GenerationConfig
        from saesteer.report.results import ResultsTable

        assert self.sweep_dir is not None
        inputs = self._inputs()
        model = str(ResultsTable.load(self.sweep_dir / "results.json").meta.get("model", ""))
        lengths = _ints_named(inputs, "max_new_tokens") | set(MNT_CANDIDATES)
        out: dict[str, tuple[str, str]] = {}
        for cond in self._grid():
            for s in self._set_names():
                for m in lengths:
                    out[cache_key(model, s, GenerationConfig(max_new_tokens=m), cond.key)] = (cond.name, s)
        return out

    def prompts(self, offset: int = 0, limit: int = 20, query: str = "", prompt_set: str = "") -> dict[str, Any]:
        """Per-prompt rows: the prompt, and under each condition its completion and the judge's verdict."""
        if self.sweep_dir is None or not (self.sweep_dir / "completions.jsonl").is_file():
            return {"total": 0, "rows": [], "conditions": [], "note": "no sweep completions in this study folder"}
        from saesteer.evaluation.judges import get_judge
        from saesteer.report.results import ResultsTable

        keys, texts, judge = self._key_map(), self._prompt_texts(), get_judge("keyword")
        table = ResultsTable.load(self.sweep_dir / "results.json")
        by_prompt: dict[str, dict[str, Any]] = {}
        unmatched = 0
        for line in (self.sweep_dir / "completions.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                cond, s = keys[rec["key"]]
            except (json.JSONDecodeError, KeyError, TypeError):
                unmatched += 1
                continue
            _, side, text = texts.get(rec["prompt_hash"], (s, "", None))
            row = by_prompt.setdefault(
                f"{s}/{rec['prompt_id']}",
                {"prompt_id": rec["prompt_id"], "set": s, "side": side, "prompt": text, "conditions": {}},
            )
            row["conditions"][cond] = {"completion": rec["completion"]}
        rows = [
            r
            for r in by_prompt.values()
            if (not prompt_set or r["set"] == prompt_set) and query.lower() in (r["prompt"] or "").lower()
        ]
        page = rows[offset : offset + limit]
        for r in page:
            item = f"{r['set']}/{r['prompt_id']}"
            for name, c in r["conditions"].items():
                verdict = _study_verdict(table, name, item)
                if verdict is not None:
                    c["refused"], c["judge"] = verdict, "study"
                else:
                    c["refused"] = bool(judge.judge([r["prompt"] or ""], [c["completion"]])[0])
                    c["judge"] = "keyword"
        order = [c.name for c in self._grid()]
        return {
            "total": len(rows),
            "rows": page,
            "conditions": order,
            "sets": sorted({r["set"] for r in by_prompt.values()}),
            "judge": "the study's judge (results.json items); 'keyword' marks verdicts recomputed by the keyword judge",
            "unmatched_records": unmatched,
        }
