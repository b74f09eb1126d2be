"""The one stage cache: a finished stage is reused, a change of inputs or of code gives a new stage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from saesteer import stages
from saesteer.stages import StageRunner, code_version


def _run(runner: StageRunner, calls: list[str], inputs: dict, code: tuple[str, ...] = ("stages",)) -> str:
    def fn(folder: Path) -> str:
        calls.append(folder.name)
        (folder / "out.txt").write_text("x")
        return folder.name

    return runner.run("s", inputs, fn, lambda f: f.name, code=code)


def test_finished_stage_is_reused_and_new_inputs_rerun(tmp_path: Path) -> None:
    calls: list[str] = []
    runner = StageRunner(tmp_path, log=lambda _m: None)
    first = _run(runner, calls, {"a": 1})
    assert _run(runner, calls, {"a": 1}) == first
    assert len(calls) == 1
    assert _run(runner, calls, {"a": 2}) != first
    assert len(calls) == 2


def test_a_code_change_is_a_new_stage_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "m.py").write_text("X = 1\n")
    (pkg / "other.py").write_text("Y = 1\n")
    monkeypatch.setattr(stages, "PACKAGE_ROOT", pkg)
    code_version.cache_clear()
    before = code_version(("sub",))
    (pkg / "other.py").write_text("Y = 2\n")  # outside the stage's code: same key
    code_version.cache_clear()
    assert code_version(("sub",)) == before
    (pkg / "sub" / "m.py").write_text("X = 2\n")
    code_version.cache_clear()
    assert code_version(("sub",)) != before

    runner = StageRunner(tmp_path / "runs", log=lambda _m: None)
    calls: list[str] = []
    _run(runner, calls, {"a": 1}, code=("sub",))
    (pkg / "sub" / "m.py").write_text("X = 3\n")
    code_version.cache_clear()
    _run(runner, calls, {"a": 1}, code=("sub",))
    assert len(calls) == 2 and calls[0] != calls[1]
    code_version.cache_clear()


def test_a_resumed_stage_counts_the_time_its_interrupted_run_kept(tmp_path: Path) -> None:
    runner = StageRunner(tmp_path, log=lambda _m: None)

    def interrupted(folder: Path) -> str:
        (folder / "part.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run("s", {"a": 1}, interrupted, lambda f: f.name)
    folder = runner.folders["s"]
    started = json.loads((folder / stages.ATTEMPTS).read_text())["started"]
    os.utime(folder / "part.txt", (started + 100.0, started + 100.0))  # the lost run worked 100 s
    runner.run("s", {"a": 1}, lambda f: f.name, lambda f: f.name)
    marker = json.loads((folder / stages.DONE).read_text())
    assert marker["earlier_seconds"] == pytest.approx(100.0, abs=1.0)
    assert runner.times["s"] >= 100.0 and marker["seconds"] == runner.times["s"]
    fresh = StageRunner(tmp_path / "other", log=lambda _m: None)
    fresh.run("s", {"a": 1}, lambda f: f.name, lambda f: f.name)
    assert json.loads((fresh.folders["s"] / stages.DONE).read_text())["earlier_seconds"] == 0.0


def test_prepare_runs_before_an_unfinished_stage_only(tmp_path: Path) -> None:
    calls: list[tuple[str, bool]] = []
    logged: list[str] = []

    def prepare(name: str, folder: Path, inputs: dict, code: object) -> str:
        calls.append((name, folder.exists()))
        folder.mkdir(parents=True)
        (folder / "seed.txt").write_text("from a predecessor")
        return "seeded"

    runner = StageRunner(tmp_path, log=logged.append, prepare=prepare)
    seen = runner.run("s", {"a": 1}, lambda f: (f / "seed.txt").read_text(), lambda f: "cached")
    assert seen == "from a predecessor" and calls == [("s", False)] and "[s] seeded" in logged
    assert runner.run("s", {"a": 1}, lambda f: "again", lambda f: "cached") == "cached" and len(calls) == 1
