"""ResultsTable: JSON/CSV round trips, resume, validation of rows and files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from saesteer.errors import SaesteerError
from saesteer.evaluation.stats import wilson, z_for
from saesteer.report.results import CSV_COLUMNS, METRICS, ResultRow, ResultsTable
from tests.report.helpers import COUNTS, make_table


def _rows_equal(a: ResultRow, b: ResultRow) -> bool:
    da, db = a.to_dict(), b.to_dict()
    return da == db


def test_from_rate_uses_wilson() -> None:
    row = ResultRow.from_rate("clamp f=1 c=8", "refusal_feature", "unsafe_refusal", 37, 50, feature=1, value=8.0)
    p, lo, hi = wilson(37, 50, z_for(0.95))
    assert abs(lo - 0.6045) < 1e-4 and abs(hi - 0.8413) < 1e-4  # Wilson 95% interval of 37/50
    assert (row.score, row.ci_lo, row.ci_hi, row.k, row.n) == (p, lo, hi, 37, 50)
    assert row.interval == "wilson"


def test_json_and_csv_round_trip(tmp_path: Path) -> None:
    table, _ = make_table()
    # a row with no data (NaN score), a continuous metric with a t interval, odd characters in names
    table.add(ResultRow("baseline", "baseline", "custom_metric", n=0, score=math.nan, ci_lo=math.nan, ci_hi=math.nan))
    table.add(
        ResultRow(
            'odd, "name"; here',
            "direction",
            "truthfulqa_mc2",
            n=12,
            score=0.4312,
            ci_lo=0.31,
            ci_hi=0.55,
            value=-2.5,
            datasets=("a", "b c"),
            interval="t",
            seconds=0.25,
        )  # fmt: skip
    )
    path = table.save(tmp_path / "results.json")
    assert path == tmp_path / "results.json" and (tmp_path / "results.csv").is_file()
    json.loads(path.read_text())  # strict JSON: NaN saved as null
    assert "NaN" not in path.read_text()
    for source in (path, tmp_path / "results.csv"):
        back = ResultsTable.load(source)
        assert len(back) == len(table)
        assert back.conditions() == table.conditions()
        for a in table:
            b = back.get(a.condition, a.metric)
            assert b is not None
            assert _rows_equal(a, b), (a, b)
        nan_row = back.get("baseline", "custom_metric")
        assert nan_row is not None and math.isnan(nan_row.score) and nan_row.n == 0
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == CSV_COLUMNS


def test_resume_skips_finished_cells(tmp_path: Path) -> None:
    path = tmp_path / "sweep" / "results.json"
    conds = ["baseline", "clamp f=10 c=4"]
    table = ResultsTable.open(path, meta={"model": "m", "n_unsafe": 200})
    assert len(table) == 0 and table.missing(conds, METRICS[:2]) == [(c, m) for c in conds for m in METRICS[:2]]
    table.add(ResultRow.from_rate("baseline", "baseline", "unsafe_refusal", 124, 200))
    table.add(ResultRow.from_rate("baseline", "baseline", "safe_refusal", 20, 200))
    # "killed" here: a new process reopens the table from disk
    again = ResultsTable.open(path, meta={"model": "m", "n_unsafe": 200})
    assert again.has("baseline", "unsafe_refusal") and again.has("baseline", "safe_refusal")
    assert not again.has("clamp f=10 c=4", "unsafe_refusal")
    assert again.missing(conds, METRICS[:2]) == [
        ("clamp f=10 c=4", "unsafe_refusal"),
        ("clamp f=10 c=4", "safe_refusal"),
    ]
    assert again.meta == {"model": "m", "n_unsafe": 200}
    with pytest.raises(SaesteerError, match="already in the results"):
        again.add(ResultRow.from_rate("baseline", "baseline", "unsafe_refusal", 1, 200))
    again.add(ResultRow.from_rate("baseline", "baseline", "unsafe_refusal", 1, 200), replace=True)
    assert ResultsTable.load(path).get("baseline", "unsafe_refusal").k == 1  # type: ignore[union-attr]
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.csv", "results.json"]  # no temp files left


def test_resume_refuses_other_settings_unless_fresh(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    t = ResultsTable.open(path, meta={"model": "a", "n": 10})
    t.add(ResultRow.from_rate("baseline", "baseline", "mmlu", 5, 10))
    with pytest.raises(SaesteerError, match="different model"):
        ResultsTable.open(path, meta={"model": "b", "n": 10})
    assert len(ResultsTable.open(path, meta={"model": "a"})) == 1  # a subset of the keys that agrees resumes
    assert len(ResultsTable.open(path, meta={"model": "b"}, fresh=True)) == 0


def test_condition_keeps_one_identity() -> None:
    t = ResultsTable()
    t.add(ResultRow.from_rate("clamp f=1 c=8", "refusal_feature", "mmlu", 5, 10, feature=1, value=8.0))
    with pytest.raises(SaesteerError, match="give it a new name"):
        t.add(ResultRow.from_rate("clamp f=1 c=8", "refusal_feature", "gsm8k", 5, 10, feature=2, value=8.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "steered"}, "unknown kind"),
        ({"n": -1}, "n must be a count"),
        ({"k": 11}, "k=11"),
        ({"score": 0.9}, "does not contain the score"),
        ({"score": math.nan}, "NaN although n=10"),
        ({"metric": " "}, "must not be empty"),
        ({"datasets": ("a;b",)}, "free of ';'"),
    ],
)
def test_bad_rows_are_rejected(kwargs: dict, match: str) -> None:
    base = {"condition": "c", "kind": "baseline", "metric": "mmlu", "n": 10, "score": 0.5, "ci_lo": 0.2, "ci_hi": 0.8}
    with pytest.raises(SaesteerError, match=match):
        ResultRow(**(base | kwargs))


def test_malformed_files_give_one_line_errors(tmp_path: Path) -> None:
    bad_json = tmp_path / "a.json"
    bad_json.write_text("{not json")
    with pytest.raises(SaesteerError, match="not valid JSON"):
        ResultsTable.load(bad_json)
    other = tmp_path / "b.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(SaesteerError, match="not a saesteer results table"):
        ResultsTable.load(other)
    wrong_cols = tmp_path / "c.csv"
    wrong_cols.write_text("condition,kind,metric,n,score,lo,hi\nbaseline,baseline,mmlu,10,0.5,0.2,0.8\n")
    with pytest.raises(SaesteerError, match="unknown columns") as exc:
        ResultsTable.load(wrong_cols)
    assert "\n" not in str(exc.value)
    bad_value = tmp_path / "d.csv"
    bad_value.write_text(",".join(CSV_COLUMNS) + "\nbaseline,baseline,mmlu,ten,0.5,0.2,0.8,,,,,wilson,0\n")
    with pytest.raises(SaesteerError, match="line 2: bad value"):
        ResultsTable.load(bad_value)
    with pytest.raises(SaesteerError, match="not found"):
        ResultsTable.load(tmp_path / "missing.json")


def test_queries_follow_insertion_and_study_order() -> None:
    table, conds = make_table()
    assert table.conditions() == [c.name for c in conds] == list(COUNTS)
    assert table.metrics()[:2] == ["unsafe_refusal", "safe_refusal"]
    assert [r.condition for r in table.by_metric("mmlu")] == list(COUNTS)
    assert {r.metric for r in table.by_condition("baseline")} == set(COUNTS["baseline"])
