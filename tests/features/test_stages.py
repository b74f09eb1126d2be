"""find_features' stages under the stage runner: an interrupted run resumes without recomputing finished stages
(or finished features inside a stage); a config or code change reruns what it affects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import saesteer.stages
from saesteer.evaluation.judges import KeywordJudge
from saesteer.features.pipeline import find_features
from tests.features.test_pipeline import planted_sae, small_cfg

STAGES = ("baseline", "candidates", "rankers", "contexts", "cheap_screen", "generation_screen", "control")


class Judge(KeywordJudge):
    """The keyword judge counting its calls; raises at call ``fail_at`` (1-based) to simulate an interruption."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(patterns=[r"^sorry"], soft_patterns=(), overrides=())
        self.calls = 0
        self.fail_at = fail_at

    def judge(self, prompts: Any, completions: Any) -> list[bool]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("interrupted")
        return super().judge(prompts, completions)


def _run(chat: tuple[Any, Any], sae: Any, out: Path, j: Judge, **kw: Any) -> tuple[Any, list[str]]:
    logs: list[str] = []
    rep = find_features(*chat, sae, small_cfg(out, **kw), "tiny", j, progress=False, log=logs.append)
    return rep, logs


def _ran(logs: list[str]) -> set[str]:
    """The stages that computed (not loaded) in a run."""
    return {s for s in STAGES if any(line.startswith(f"[features.{s}] running") for line in logs)}


def test_resume_reuses_finished_stages_and_features(chat: tuple[Any, Any], tmp_path: Path) -> None:
    sae = planted_sae(*chat)
    fresh = Judge()
    ref, logs = _run(chat, sae, tmp_path / "fresh", fresh)
    assert _ran(logs) == set(STAGES)
    # judge calls: baseline 2, candidates 1, generation screen 2 per feature (n_generate=2), then the control
    # interrupt at the second generation-screened feature's first judgement (call 6)
    with pytest.raises(KeyboardInterrupt):
        _run(chat, sae, tmp_path / "cut", Judge(fail_at=6))
    again = Judge()
    rep, logs = _run(chat, sae, tmp_path / "cut", again)
    assert _ran(logs) == {"generation_screen", "control"}
    assert again.calls == fresh.calls - 5  # baseline, candidates and the first screened feature were not redone
    assert rep.chosen == ref.chosen and rep.screen.cheap == ref.screen.cheap
    assert rep.control_checks == ref.control_checks
    # a finished run: everything loads, nothing is judged
    done = Judge()
    _, logs = _run(chat, sae, tmp_path / "cut", done)
    assert _ran(logs) == set() and done.calls == 0


def test_config_and_code_changes_rerun(chat: tuple[Any, Any], tmp_path: Path, monkeypatch: Any) -> None:
    sae = planted_sae(*chat)
    _run(chat, sae, tmp_path, Judge())
    _, logs = _run(chat, sae, tmp_path, Judge(), min_gain=0.5)  # read by the generation screen only
    assert _ran(logs) == {"generation_screen"}  # the same feature is chosen, so its control check stands
    _, logs = _run(chat, sae, tmp_path, Judge(), control_band=0.2)  # read by the control check only
    assert _ran(logs) == {"control"}
    kept = tmp_path / "stages" / "user-notes.txt"  # not a stage folder: resume=False leaves it alone
    kept.write_text("mine")
    _, logs = _run(chat, sae, tmp_path, Judge(), resume=False)
    assert _ran(logs) == set(STAGES)
    assert kept.read_text() == "mine"
    monkeypatch.setattr(saesteer.stages, "code_version", lambda packages=("",): "other-code")
    _, logs = _run(chat, sae, tmp_path, Judge())
    assert _ran(logs) == set(STAGES)
