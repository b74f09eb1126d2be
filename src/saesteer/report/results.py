"""The study's results table: one row per (condition x metric) cell, saved as JSON and CSV.

A :class:`ResultRow` holds one measured number with its sample size and 95% interval, e.g. the
unsafe-prompt refusal rate of ``"clamp f=1234 c=8"`` on HarmBench + JBB. Scores are fractions in
[0, 1] (rates, accuracies, TruthfulQA MC2's mean probability); reports show them as percent.

:class:`ResultsTable` appends rows and saves the whole table after every row, atomically, as
``<name>.json`` (the source of truth) and ``<name>.csv`` (for spreadsheets and pandas). An
interrupted sweep reopens the table with :meth:`ResultsTable.open` and skips the cells for which
:meth:`ResultsTable.has` is true, so finished cells are never recomputed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json, atomic_write_text
from saesteer.errors import SaesteerError
from saesteer.evaluation.stats import wilson, z_for

FORMAT = "saesteer.results.v1"

#: the metrics of the study (other names are allowed: a table is open to new metrics)
METRICS = (
    "unsafe_refusal", "safe_refusal", "humaneval", "mmlu", "gsm8k", "truthfulqa_mc1", "truthfulqa_mc2", "kl", "delta_ce",
    "fractured_asr", "crescendo_asr", "multiturn_asr",
)  # fmt: skip
#: what a condition does: no steering, clamp a refusal feature, clamp a control feature, clamp behind a
#: gate, or add the difference-in-means direction
KINDS = ("baseline", "refusal_feature", "control", "conditional", "direction")
#: display names of the metrics
METRIC_LABELS = {
    "unsafe_refusal": "Refusal on unsafe prompts",
    "safe_refusal": "Refusal on safe prompts (over-refusal)",
    "mmlu": "MMLU accuracy",
    "gsm8k": "GSM8K exact match",
    "truthfulqa_mc1": "TruthfulQA MC1",
    "truthfulqa_mc2": "TruthfulQA MC2",
    "humaneval": "HumanEval pass@1",
    "kl": "KL divergence to the unsteered model (nats/token)",
    "delta_ce": "Cross-entropy increase on the unsteered model's responses (nats/token)",
    "fractured_asr": "FRACTURED-SORRY-Bench attack success rate",
    "crescendo_asr": "Crescendo attack success rate",
    "multiturn_asr": "Multi-turn attack success rate",
}

#: metrics measured in nats per token (shown as such, not as percent)
NATS_METRICS = ("kl", "delta_ce")

_FLOATS = ("value", "score", "ci_lo", "ci_hi", "seconds")
_INTS = ("feature", "n", "k")


@dataclass(frozen=True)
class ResultRow:
    """One measured cell: ``metric`` under ``condition``, with n and a 95% interval."""

    condition: str
    kind: str
    metric: str
    n: int
    score: float
    ci_lo: float
    ci_hi: float
    feature: int | None = None
    value: float | None = None
    datasets: tuple[str, ...] = ()
    k: int | None = None  # successes, for rates (refusals, correct answers, successful attacks)
    interval: str = "wilson"  # how ci_lo/ci_hi were computed: wilson, t, bootstrap
    seconds: float = 0.0

    def __post_init__(self) -> None:
        where = f"result {self.condition!r} / {self.metric!r}"
        if not self.condition.strip() or not self.metric.strip():
            raise SaesteerError(f"{where}: condition and metric names must not be empty")
        if self.kind not in KINDS:
            raise SaesteerError(f"{where}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        object.__setattr__(self, "datasets", tuple(str(d) for d in self.datasets))
        if any(";" in d or not d for d in self.datasets):
            raise SaesteerError(f"{where}: dataset names must be non-empty and free of ';' (the CSV separator)")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise SaesteerError(f"{where}: n must be a count >= 0, got {self.n!r}")
        if self.k is not None and not 0 <= self.k <= self.n:
            raise SaesteerError(f"{where}: k={self.k} must lie in 0..n={self.n}")
        vals = (self.score, self.ci_lo, self.ci_hi)
        if self.n > 0 and any(math.isnan(v) for v in vals):
            raise SaesteerError(f"{where}: score or interval is NaN although n={self.n}; record the measured numbers")
        if not any(math.isnan(v) for v in vals) and not self.ci_lo <= self.score <= self.ci_hi:
            raise SaesteerError(
                f"{where}: interval [{self.ci_lo}, {self.ci_hi}] does not contain the score {self.score}; "
                "pass (score, lo, hi) in that order"
            )
        if self.seconds < 0 or not math.isfinite(self.seconds):
            raise SaesteerError(f"{where}: seconds must be a finite time >= 0, got {self.seconds}")

    @property
    def cell(self) -> tuple[str, str]:
        return (self.condition, self.metric)

    @classmethod
    def from_rate(
        cls, condition: str, kind: str, metric: str, k: int, n: int, confidence: float = 0.95, **kwargs: Any
    ) -> ResultRow:
        """A rate ``k / n`` with its Wilson interval (refusal rate, accuracy, attack success)."""
        p, lo, hi = wilson(k, n, z_for(confidence))
        return cls(condition, kind, metric, n=n, score=p, ci_lo=lo, ci_hi=hi, k=k, interval="wilson", **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: NaN becomes None, datasets a list."""
        out = dataclasses.asdict(self)
        out["datasets"] = list(self.datasets)
        for name in _FLOATS:
            v = out[name]
            if isinstance(v, float) and math.isnan(v):
                out[name] = None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "result row") -> ResultRow:
        """The inverse of :meth:`to_dict` (also accepts the string cells of a CSV row)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise SaesteerError(f"{where}: unknown columns {sorted(unknown)}; expected {sorted(names)}")
        missing = {"condition", "kind", "metric", "n", "score", "ci_lo", "ci_hi"} - set(data)
        if missing:
            raise SaesteerError(f"{where}: missing columns {sorted(missing)}")
        kw: dict[str, Any] = {}
        try:
            for key, raw in data.items():
                if key in _INTS:
                    kw[key] = None if raw in (None, "") else _as_int(raw)
                elif key in _FLOATS:
                    empty = math.nan if key in ("score", "ci_lo", "ci_hi") else None
                    kw[key] = empty if raw in (None, "") else float(raw)
                elif key == "datasets":
                    kw[key] = tuple(d for d in raw.split(";") if d) if isinstance(raw, str) else tuple(raw or ())
                else:
                    kw[key] = "" if raw is None else str(raw)
        except (TypeError, ValueError) as exc:
            raise SaesteerError(f"{where}: bad value ({exc}); fix or delete the file to recompute") from None
        if kw.get("n") is None:
            raise SaesteerError(f"{where}: n is empty; every row needs its sample size")
        if kw.get("seconds") is None:
            kw.pop("seconds", None)
        return cls(**kw)


def _as_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    if isinstance(raw, float):
        if not raw.is_integer():
            raise ValueError(f"expected an integer, got {raw!r}")
        return int(raw)
    return int(raw)


CSV_COLUMNS = tuple(f.name for f in dataclasses.fields(ResultRow))


class ResultsTable:
    """Rows keyed by (condition, metric), saved after every :meth:`add` when the table has a path.

    ``ResultsTable.open("runs/study/results.json")`` starts a new table or resumes the saved one;
    ``table.has("clamp f=1234 c=8", "mmlu")`` says whether that cell is finished.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, meta: Mapping[str, Any] | None = None):
        self.path = _json_path(path) if path is not None else None
        self.meta: dict[str, Any] = dict(meta or {})
        self._rows: dict[tuple[str, str], ResultRow] = {}
        self._items: dict[tuple[str, str], dict[str, float]] = {}

    # --- access ----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[ResultRow]:
        return iter(self._rows.values())

    @property
    def rows(self) -> list[ResultRow]:
        return list(self._rows.values())

    def has(self, condition: str, metric: str) -> bool:
        """True when the cell is finished (its row is in the table)."""
        return (condition, metric) in self._rows

    def get(self, condition: str, metric: str) -> ResultRow | None:
        return self._rows.get((condition, metric))

    def items(self, condition: str, metric: str) -> dict[str, float] | None:
        """Per-item outcomes of a cell (item id -> 0/1 or score), when they were recorded."""
        return self._items.get((condition, metric))

    def conditions(self) -> list[str]:
        """Condition names in the order they first appear."""
        return list(dict.fromkeys(c for c, _ in self._rows))

    def metrics(self) -> list[str]:
        """Metric names, the study's order first, then any others in order of appearance."""
        seen = list(dict.fromkeys(m for _, m in self._rows))
        return [m for m in METRICS if m in seen] + [m for m in seen if m not in METRICS]

    def by_metric(self, metric: str) -> list[ResultRow]:
        return [r for r in self._rows.values() if r.metric == metric]

    def by_condition(self, condition: str) -> list[ResultRow]:
        return [r for r in self._rows.values() if r.condition == condition]

    def missing(self, conditions: Iterable[str], metrics: Sequence[str]) -> list[tuple[str, str]]:
        """The cells of the grid ``conditions x metrics`` that are not finished yet, in grid order."""
        return [(c, m) for c in conditions for m in metrics if not self.has(c, m)]

    # --- update ----------------------------------------------------------------------------------------------

    def add(
        self, row: ResultRow, replace: bool = False, save: bool = True, items: Mapping[str, float] | None = None
    ) -> None:
        """Append ``row`` (and save). A finished cell is only overwritten with ``replace=True``.

        ``items`` (item id -> outcome) are the per-item results behind the row, for paired comparisons.
        """
        if not isinstance(row, ResultRow):
            raise TypeError(f"expected a ResultRow, got {type(row).__name__}")
        if row.cell in self._rows and not replace:
            raise SaesteerError(
                f"cell {row.condition!r} / {row.metric!r} is already in the results; "
                "skip it (table.has) or pass replace=True to overwrite"
            )
        old = next((r for r in self._rows.values() if r.condition == row.condition), None)
        if old is not None and (old.kind, old.feature, old.value) != (row.kind, row.feature, row.value):
            raise SaesteerError(
                f"condition {row.condition!r} was recorded as kind={old.kind} feature={old.feature} value={old.value} "
                f"but this row says kind={row.kind} feature={row.feature} value={row.value}; give it a new name"
            )
        if items is not None and len(items) != row.n:
            raise SaesteerError(f"cell {row.condition!r} / {row.metric!r}: {len(items)} items for n={row.n}")
        self._rows[row.cell] = row
        if items is not None:
            self._items[row.cell] = {str(k): float(v) for k, v in items.items()}
        if save and self.path is not None:
            self.save()

    def extend(self, rows: Iterable[ResultRow], replace: bool = False) -> None:
        for row in rows:
            self.add(row, replace=replace, save=False)
        if self.path is not None:
            self.save()

    # --- files -----------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        items = [{"condition": c, "metric": m, "values": v} for (c, m), v in self._items.items()]
        return {"format": FORMAT, "meta": self.meta, "rows": [r.to_dict() for r in self._rows.values()], "items": items}

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in self._rows.values():
            d = row.to_dict()
            d["datasets"] = ";".join(row.datasets)
            writer.writerow({k: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for k, v in d.items()})
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write ``<path>.json`` and ``<path>.csv`` atomically; returns the JSON path."""
        target = _json_path(path) if path is not None else self.path
        if target is None:
            raise SaesteerError("this results table has no path; pass save(path) or ResultsTable(path)")
        atomic_write_json(target, self.to_json())
        atomic_write_text(target.with_suffix(".csv"), self.to_csv())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ResultsTable:
        """Read a table from its ``.json`` (with meta) or its ``.csv`` (rows only)."""
        p = Path(path)
        if not p.is_file():
            raise SaesteerError(f"results file {p} not found; run the sweep first or check the path")
        if p.suffix == ".csv":
            table = cls(p.with_suffix(".json"))
            table._load_rows(_read_csv(p))
            return table
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SaesteerError(
                f"results file {p} is not valid JSON ({exc}); delete it to recompute the sweep"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("rows"), list):
            raise SaesteerError(f"results file {p} is not a saesteer results table ({FORMAT}); delete or move it")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise SaesteerError(f"results file {p}: 'meta' must be a mapping; delete the file to recompute")
        table = cls(p, meta)
        rows = []
        for i, raw in enumerate(data["rows"]):
            if not isinstance(raw, dict):
                raise SaesteerError(f"results file {p}: row {i} is not an object; delete the file to recompute")
            rows.append(ResultRow.from_dict(raw, where=f"results file {p}, row {i}"))
        table._load_rows(rows)
        for i, it in enumerate(data.get("items") or []):
            try:
                cell, values = (str(it["condition"]), str(it["metric"])), dict(it["values"])
                table._items[cell] = {str(k): float(v) for k, v in values.items()}
            except (KeyError, TypeError, ValueError):
                raise SaesteerError(
                    f"results file {p}: item list {i} is malformed; delete the file to recompute"
                ) from None
        return table

    def _load_rows(self, rows: Iterable[ResultRow]) -> None:
        for row in rows:
            self.add(row, save=False)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None, fresh: bool = False
    ) -> ResultsTable:
        """Resume the table at ``path`` if it exists, else start an empty one there.

        ``meta`` (e.g. the model, SAE and sample sizes) is stored with the table; resuming a table whose
        stored meta disagrees on any shared key raises, since its cells were measured under other settings.
        ``fresh=True`` discards the saved rows.
        """
        p = _json_path(path)
        if fresh or not p.exists():
            return cls(p, meta)
        table = cls.load(p)
        if meta:
            diff = {k for k in meta if k in table.meta and _norm(table.meta[k]) != _norm(meta[k])}
            if diff:
                raise SaesteerError(
                    f"results at {p} were measured with different {', '.join(sorted(diff))}; "
                    "start fresh (delete the file or pass fresh=True) or restore the old settings"
                )
            table.meta.update(meta)
        return table


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


def _json_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        return p / "results.json"
    if p.suffix in (".json", ".csv"):
        return p.with_suffix(".json")
    if p.suffix:
        raise SaesteerError(f"results path {p}: use a .json name (the .csv is written beside it)")
    return p.with_suffix(".json")


def _read_csv(p: Path) -> list[ResultRow]:
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise SaesteerError(f"results file {p} is empty; delete it to recompute")
        rows = []
        for i, raw in enumerate(reader):
            if None in raw:
                raise SaesteerError(f"results file {p}, line {i + 2}: more cells than columns; fix or delete the file")
            rows.append(ResultRow.from_dict(raw, where=f"results file {p}, line {i + 2}"))
    return rows


def as_rows(items: Iterable[ResultRow | Mapping[str, Any]]) -> list[ResultRow]:
    """Rows from rows or dicts (e.g. parsed JSON)."""
    return [r if isinstance(r, ResultRow) else ResultRow.from_dict(r) for r in items]


__all__ = ["CSV_COLUMNS", "KINDS", "METRICS", "METRIC_LABELS", "ResultRow", "ResultsTable", "as_rows"]
