"""A sweep whose grid grows starts from the rows its predecessor already scored.

A stage folder is keyed by all of its inputs, and the sweep's inputs hold its grid: adding a condition (a
control feature a later discovery found, another clamp value) names a new sweep folder, and hours of scored
conditions would be computed again. Yet a row depends only on its condition's definition, the test items,
the scoring settings and the scoring code. So before a sweep starts in an empty folder,
:func:`seed_from_predecessor` (the study's ``StageRunner.prepare`` hook) looks for a sibling sweep folder that
agrees with it on everything but the grid (``grid``, ``capability_on``) and on the scoring code's version, and
copies in the rows (with their per-item outcomes) and the cached completions of every condition defined
identically in both, with the same capability membership. The sweep then scores only what is new;
``reused.json`` records what was copied and from where, and the stage's recorded time counts the predecessor's
time for the copied rows as earlier work.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json
from saesteer.report.results import ResultRow, ResultsTable
from saesteer.stages import ATTEMPTS, DONE, INPUTS, code_version

GROWING = ("grid", "capability_on")  # the inputs that may differ between a sweep and its predecessor
RESULTS, COMPLETIONS, REUSED = "results.json", "completions.jsonl", "reused.json"


def _plain(obj: Any) -> Any:
    """``obj`` as its inputs.json holds it (JSON round trip), so dicts compare alike."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _conditions(inputs: dict[str, Any]) -> dict[str, tuple[Any, bool]]:
    """Condition name -> (its definition, whether the capability benchmarks run on it)."""
    cap = set(inputs.get("capability_on") or [])
    return {c["name"]: (c, c["name"] in cap) for c in inputs.get("grid") or []}


def shared_conditions(old: dict[str, Any], new: dict[str, Any]) -> list[str] | None:
    """Conditions whose rows ``new`` can take from ``old``; None when anything but the grid differs."""
    if {k: v for k, v in old.items() if k not in GROWING} != {k: v for k, v in new.items() if k not in GROWING}:
        return None
    before, after = _conditions(old), _conditions(new)
    return [name for name, spec in after.items() if before.get(name) == spec]


def _predecessor(folder: Path, inputs: dict[str, Any], code: str) -> tuple[Path, list[str]] | None:
    """The newest sibling with results whose inputs differ only in the grid, and the conditions it shares."""
    stem = folder.name.rsplit("-", 1)[0]
    siblings = [p for p in folder.parent.glob(f"{stem}-*") if p != folder and (p / RESULTS).is_file()]
    for sib in sorted(siblings, key=lambda p: (p / RESULTS).stat().st_mtime, reverse=True):
        try:
            recorded = json.loads((sib / INPUTS).read_text())
        except (OSError, json.JSONDecodeError):
            continue  # an unreadable sibling is simply not a predecessor
        shared = shared_conditions(recorded.get("inputs") or {}, inputs) if recorded.get("code") == code else None
        if shared:
            return sib, shared
    return None


def seed_sweep(folder: Path, inputs: dict[str, Any], code: Sequence[str]) -> dict[str, Any] | None:
    """Copy a predecessor's rows of the shared conditions into the empty sweep ``folder``; what was copied."""
    if (folder / RESULTS).exists() or (folder / DONE).exists():
        return None  # this sweep has rows of its own: it resumes them
    found = _predecessor(folder, _plain(inputs), code_version(tuple(code)))
    if found is None:
        return None
    sib, names = found
    old = ResultsTable.load(sib / RESULTS)
    rows = [r for r in old if r.condition in names]
    if not rows:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    table = ResultsTable(folder / RESULTS, old.meta)
    for r in rows:
        table.add(r, save=False, items=old.items(r.condition, r.metric))
    if (sib / COMPLETIONS).is_file():  # keyed by condition and prompt, so other conditions' lines do no harm
        shutil.copyfile(sib / COMPLETIONS, folder / COMPLETIONS)
    table.save()
    seconds = _scoring_seconds(sib, old, rows)
    record = {"from": sib.name, "conditions": sorted({r.condition for r in rows}), "rows": len(rows),
              "seconds": seconds}  # fmt: skip
    atomic_write_json(folder / REUSED, record)
    atomic_write_json(folder / ATTEMPTS, {"started": time.time(), "kept": seconds})
    return record


def _scoring_seconds(sib: Path, old: ResultsTable, rows: list[ResultRow]) -> float:
    """The predecessor's stage time, apportioned to the copied rows by their recorded seconds.

    Rows measured together share one time (the safety sets, TruthfulQA MC1 and MC2), so their sum overstates
    the stage; a predecessor that never finished has only that sum.
    """
    mine, total = sum(r.seconds for r in rows), sum(r.seconds for r in old)
    try:
        stage = float(json.loads((sib / DONE).read_text())["seconds"])
    except (OSError, KeyError, TypeError, ValueError):
        return mine
    return stage * (mine / total if total > 0 else 1.0)


def seed_from_predecessor(name: str, folder: Path, inputs: dict[str, Any], code: Sequence[str]) -> str | None:
    """A :class:`~saesteer.stages.StageRunner` ``prepare`` hook: a new ``sweep`` starts from a predecessor's rows."""
    record = seed_sweep(folder, inputs, code) if name == "sweep" else None
    if not record:
        return None
    return (f"reused {record['rows']} rows of {len(record['conditions'])} conditions from {record['from']} "
            f"({record['seconds']:.0f} s of scoring)")  # fmt: skip
