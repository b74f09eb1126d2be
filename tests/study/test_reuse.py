"""A grown sweep takes its predecessor's rows of unchanged conditions, and nothing when anything else changed."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from saesteer.config import atomic_write_json
from saesteer.report.results import ResultRow, ResultsTable
from saesteer.stages import ATTEMPTS, DONE, INPUTS, StageRunner, code_version
from saesteer.study.design import SCORING_CODE
from saesteer.study.reuse import seed_from_predecessor, seed_sweep, shared_conditions

BASE = {"name": "baseline", "kind": "baseline"}
CLAMP = {"name": "clamp f=3 c=8", "kind": "refusal_feature", "feature": 3, "value": 8.0}
CONTROL = {"name": "control f=5 c=6", "kind": "control", "feature": 5, "value": 6.0}


def _inputs(grid: list[dict[str, Any]], max_new_tokens: int = 16) -> dict[str, Any]:
    return {
        "sae": "abc",
        "grid": grid,
        "capability_on": sorted(c["name"] for c in grid),
        "test": {"advbench": ["a1", "a2"]},
        "generation": {"max_new_tokens": max_new_tokens},
    }


def _finished_sweep(runner: StageRunner, inputs: dict[str, Any]) -> Path:
    """A predecessor sweep folder as the stage runner leaves it: inputs, rows with items, completions."""
    folder = runner.folder("sweep", inputs, SCORING_CODE)
    folder.mkdir(parents=True)
    atomic_write_json(folder / INPUTS, {"inputs": inputs, "code": code_version(tuple(SCORING_CODE))})
    table = ResultsTable(folder / "results.json", {"model": "m"})
    for c in inputs["grid"]:
        row = ResultRow.from_rate(c["name"], c["kind"], "unsafe_refusal", 1, 2, seconds=30.0,
                                  feature=c.get("feature"), value=c.get("value"))  # fmt: skip
        table.add(row, items={"advbench/a1": 1.0, "advbench/a2": 0.0})
    (folder / "completions.jsonl").write_text('{"key": "k", "prompt_id": "a1", "completion": "No."}\n')
    atomic_write_json(folder / DONE, {"name": "sweep", "seconds": 60.0})
    return folder


def test_a_grown_sweep_starts_from_the_shared_rows(tmp_path: Path) -> None:
    runner = StageRunner(tmp_path, log=lambda _: None, prepare=seed_from_predecessor)
    old = _finished_sweep(runner, _inputs([BASE, CLAMP]))
    new_inputs = _inputs([BASE, CLAMP, CONTROL])
    scored: list[str] = []

    def run(folder: Path) -> ResultsTable:
        table = ResultsTable.open(folder / "results.json", {"model": "m"})
        for c in new_inputs["grid"]:
            if not table.has(c["name"], "unsafe_refusal"):
                scored.append(c["name"])
                table.add(ResultRow.from_rate(c["name"], c["kind"], "unsafe_refusal", 2, 2, feature=c.get("feature"),
                                              value=c.get("value")))  # fmt: skip
        return table

    table = runner.run("sweep", new_inputs, run, lambda f: ResultsTable.load(f / "results.json"), SCORING_CODE)
    folder = runner.folders["sweep"]
    assert folder != old and scored == [CONTROL["name"]]  # only the new condition was scored
    assert table.items("clamp f=3 c=8", "unsafe_refusal") == {"advbench/a1": 1.0, "advbench/a2": 0.0}
    assert (folder / "completions.jsonl").read_text() == (old / "completions.jsonl").read_text()
    record = json.loads((folder / "reused.json").read_text())
    assert record["from"] == old.name and record["rows"] == 2
    assert record["seconds"] == 60.0  # every row of the predecessor: its whole stage time (rows sum to 60 too)
    assert runner.times["sweep"] >= 60.0  # the copied rows' scoring counts as earlier work
    assert json.loads((folder / ATTEMPTS).read_text())["kept"] == 60.0


def test_the_copied_rows_are_charged_their_share_of_the_predecessor_stage_time(tmp_path: Path) -> None:
    runner = StageRunner(tmp_path, log=lambda _: None)
    old = _finished_sweep(runner, _inputs([BASE, CLAMP]))
    atomic_write_json(old / DONE, {"name": "sweep", "seconds": 40.0})  # rows measured together: 60 s of row time
    grown = _inputs([BASE, CONTROL])
    record = seed_sweep(runner.folder("sweep", grown, SCORING_CODE), grown, SCORING_CODE)
    assert record is not None and record["conditions"] == ["baseline"] and record["seconds"] == 20.0
    (old / DONE).unlink()  # an unfinished predecessor: its rows' own seconds
    (runner.folder("sweep", grown, SCORING_CODE) / "results.json").unlink()
    record = seed_sweep(runner.folder("sweep", grown, SCORING_CODE), grown, SCORING_CODE)
    assert record is not None and record["seconds"] == 30.0


def test_only_identically_defined_conditions_are_shared() -> None:
    old = _inputs([BASE, CLAMP])
    changed = copy.deepcopy(CLAMP) | {"value": 9.0}
    assert shared_conditions(old, _inputs([BASE, changed, CONTROL])) == ["baseline"]
    no_cap = _inputs([BASE, CLAMP, CONTROL]) | {"capability_on": ["baseline"]}
    assert shared_conditions(old, no_cap) == ["baseline"]  # the clamp lost its capability rows
    assert shared_conditions(old, _inputs([BASE, CLAMP, CONTROL], max_new_tokens=32)) is None


def test_nothing_is_reused_across_settings_code_or_into_a_started_sweep(tmp_path: Path) -> None:
    runner = StageRunner(tmp_path, log=lambda _: None)
    old = _finished_sweep(runner, _inputs([BASE, CLAMP]))
    other = _inputs([BASE, CLAMP, CONTROL], max_new_tokens=32)
    assert seed_sweep(runner.folder("sweep", other, SCORING_CODE), other, SCORING_CODE) is None
    grown = _inputs([BASE, CLAMP, CONTROL])
    target = runner.folder("sweep", grown, SCORING_CODE)
    assert seed_sweep(target, grown, ("sae",)) is None  # the predecessor was scored by other code
    recorded = json.loads((old / INPUTS).read_text())
    atomic_write_json(old / INPUTS, recorded | {"code": "000000000000"})
    assert seed_sweep(target, grown, SCORING_CODE) is None
    atomic_write_json(old / INPUTS, recorded)
    target.mkdir()
    ResultsTable(target / "results.json").save()  # a sweep of its own resumes its own rows
    assert seed_sweep(target, grown, SCORING_CODE) is None
    assert not (target / "reused.json").exists()
