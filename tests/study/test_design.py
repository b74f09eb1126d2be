"""The sweep grid: conditions as plain data, validation, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saesteer.errors import SaesteerError
from saesteer.study.design import Condition, SweepConfig, build_grid, load_grid, save_grid


def test_grid_covers_the_study_in_report_order() -> None:
    cfg = SweepConfig(clamp_values=[4.0, 8.0], direction_coeffs=[1.0, 2.5])
    grid = build_grid(cfg, [1234, 99], [77])
    names = [c.name for c in grid]
    assert names == [
        "baseline",
        "clamp f=1234 c=4", "clamp f=1234 c=8", "clamp f=99 c=4", "clamp f=99 c=8",
        "control f=77 c=4", "control f=77 c=8",
        "conditional clamp f=1234 c=4", "conditional clamp f=1234 c=8",
        "conditional clamp f=99 c=4", "conditional clamp f=99 c=8",
        "diff-in-means add 1", "diff-in-means add 2.5",
    ]  # fmt: skip
    kinds = [c.kind for c in grid]
    assert kinds.count("refusal_feature") == 4 and kinds.count("control") == 2 and kinds.count("conditional") == 4
    by = {c.name: c for c in grid}
    assert by["baseline"].interventions == () and by["baseline"].gate is None
    assert by["clamp f=99 c=8"].interventions == ({"op": "clamp", "feature": 99, "value": 8.0},)
    assert by["diff-in-means add 2.5"].interventions == ({"op": "add_direction", "coeff": 2.5},)
    cond = by["conditional clamp f=99 c=4"]
    assert cond.unconditional == "clamp f=99 c=4" and cond.feature == 99 and cond.value == 4.0
    assert cond.gate == {"type": "direction", "threshold": None, "fpr": 0.05, "reduce": "last", "tail": 5}
    assert cond.interventions == by["clamp f=99 c=4"].interventions
    json.dumps([c.to_dict() for c in grid])  # plain data


def test_options_shape_the_grid() -> None:
    cfg = SweepConfig(clamp_values=[2.0, 6.0], control_values=[6.0], conditional_values=[6.0], gate="feature",
                      gate_threshold=3.5, direction_coeffs=[])  # fmt: skip
    grid = build_grid(cfg, [5], [8, 9])
    names = [c.name for c in grid]
    assert names == ["baseline", "clamp f=5 c=2", "clamp f=5 c=6", "control f=8 c=6", "control f=9 c=6",
                     "conditional clamp f=5 c=6"]  # fmt: skip
    assert grid[-1].gate == {"type": "feature", "feature": 5, "threshold": 3.5, "fpr": 0.05, "reduce": "last",
                             "tail": 5}  # fmt: skip
    no_cond = build_grid(SweepConfig(conditional=False), [5], direction=False)
    assert [c.kind for c in no_cond] == ["baseline", "refusal_feature", "refusal_feature"]


def test_clamp_values_in_units_of_max_activation() -> None:
    cfg = SweepConfig(clamp_values=[1.0, 2.0], clamp_units="max", direction_coeffs=[])
    grid = build_grid(cfg, [5], [8], feature_max={5: 3.0, 8: 10.0})
    by = {c.name: c for c in grid}
    assert "clamp f=5 c=6 (2x max)" in by and by["clamp f=5 c=6 (2x max)"].value == 6.0
    assert by["control f=8 c=20 (2x max)"].interventions[0]["value"] == 20.0
    assert by["conditional clamp f=5 c=3 (1x max)"].unconditional == "clamp f=5 c=3 (1x max)"
    with pytest.raises(SaesteerError, match="max activation"):
        build_grid(cfg, [5], [8], feature_max={5: 3.0})
    with pytest.raises(SaesteerError, match="never fires"):
        build_grid(cfg, [5], feature_max={5: 0.0})


@pytest.mark.parametrize(
    ("cfg", "refusal", "control", "match"),
    [
        (SweepConfig(), [], [], "at least one refusal feature"),
        (SweepConfig(), [1], [1], "both refusal and control"),
        (SweepConfig(), [1, 1], [], "repeated features"),
        (SweepConfig(), [-3], [], "not a feature index"),
        (SweepConfig(clamp_values=[]), [1], [], "clamp_values is empty"),
        (SweepConfig(clamp_values=[float("nan")]), [1], [], "not a finite number"),
        (SweepConfig(conditional_values=[16.0]), [1], [], "not among clamp_values"),
        (SweepConfig(gate="oracle"), [1], [], "unknown gate"),
        (SweepConfig(gate_fpr=1.5), [1], [], "gate_fpr"),
        (SweepConfig(clamp_units="sigma"), [1], [], "unknown clamp_units"),
    ],
)
def test_bad_grids_are_rejected(cfg: SweepConfig, refusal: list[int], control: list[int], match: str) -> None:
    with pytest.raises(SaesteerError, match=match):
        build_grid(cfg, refusal, control)


def test_key_hashes_what_a_condition_does_not_its_name() -> None:
    grid = build_grid(SweepConfig(), [1])
    by = {c.name: c for c in grid}
    clamp, cond = by["clamp f=1 c=8"], by["conditional clamp f=1 c=8"]
    renamed = Condition("my clamp", clamp.kind, clamp.interventions, feature=1, value=8.0)
    assert renamed.key == clamp.key
    assert cond.key != clamp.key and by["clamp f=1 c=4"].key != clamp.key
    assert len({c.key for c in grid}) == len(grid)


def test_condition_invariants() -> None:
    with pytest.raises(SaesteerError, match="gate belongs to conditional"):
        Condition("x", "refusal_feature", ({"op": "clamp", "feature": 1, "value": 1.0},), gate={"type": "direction"})
    with pytest.raises(SaesteerError, match="only the baseline"):
        Condition("x", "refusal_feature")
    with pytest.raises(SaesteerError, match="unknown kind"):
        Condition("x", "other")


def test_grid_save_load_round_trip(tmp_path: Path) -> None:
    grid = build_grid(SweepConfig(clamp_values=[4.0, 8.0]), [1], [2])
    save_grid(tmp_path / "grid.json", grid)
    assert load_grid(tmp_path / "grid.json") == grid
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(SaesteerError, match="not a saesteer sweep grid"):
        load_grid(tmp_path / "bad.json")
    with pytest.raises(SaesteerError, match="not found"):
        load_grid(tmp_path / "none.json")


def test_rows_of_a_condition_carry_its_identity() -> None:
    c = build_grid(SweepConfig(), [12])[2]
    row = c.rate_row("mmlu", 30, 40, datasets=["mmlu"], seconds=2.0)
    assert (row.condition, row.kind, row.feature, row.value, row.k, row.n) == (
        c.name,
        "refusal_feature",
        12,
        8.0,
        30,
        40,
    )
    assert row.datasets == ("mmlu",) and row.seconds == 2.0


def test_several_gates_run_side_by_side() -> None:
    cfg = SweepConfig(clamp_values=[8.0], gate="probe:mean,direction:last", direction_coeffs=[])
    grid = build_grid(cfg, [7], [], direction=False)
    cond = {c.name: c for c in grid if c.kind == "conditional"}
    assert set(cond) == {"conditional clamp f=7 c=8 [probe gate]", "conditional clamp f=7 c=8 [direction gate]"}
    assert cond["conditional clamp f=7 c=8 [probe gate]"].gate["reduce"] == "mean"
    assert cond["conditional clamp f=7 c=8 [direction gate]"].gate == {
        "type": "direction", "threshold": None, "fpr": 0.05, "reduce": "last", "tail": 5,
    }  # fmt: skip
    assert all(c.unconditional == "clamp f=7 c=8" for c in cond.values())
    for bad in ("probe,probe", "probe:median", ""):
        with pytest.raises(SaesteerError):
            build_grid(SweepConfig(clamp_values=[8.0], gate=bad), [7], [], direction=False)


@pytest.mark.parametrize("unchosen", [True, False])
def test_the_control_is_scored_at_the_chosen_clamps_multiple(unchosen: bool) -> None:
    from saesteer.study.dev_stages import Choice, test_grid

    cfg = SweepConfig(clamp_values=[1.0, 2.0], clamp_units="max")
    grid = build_grid(cfg, [5], [8], feature_max={5: 3.0, 8: 10.0})
    for clamp, control in (("clamp f=5 c=3 (1x max)", "control f=8 c=10 (1x max)"),
                           ("clamp f=5 c=6 (2x max)", "control f=8 c=20 (2x max)")):  # fmt: skip
        names = [c.name for c in test_grid(grid, Choice(clamp, f"conditional {clamp}", {}), unchosen)]
        assert [n for n in names if n.startswith("control")] == [control]
        assert f"conditional {clamp}" in names and ("clamp f=5 c=6 (2x max)" in names) == (unchosen or "2x" in clamp)
