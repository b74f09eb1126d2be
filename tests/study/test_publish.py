"""--report-dir never deletes a user's files, and replaces an earlier report in one swap."""

from pathlib import Path

import pytest

from saesteer.errors import SaesteerError
from saesteer.study.publish import MARKER, check_destination, publish_report


def _report(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "report.md").write_text(text)
    (folder / "plots").mkdir()
    (folder / "plots" / "a.svg").write_text("<svg/>")
    return folder


def test_refuses_a_folder_with_user_files_and_leaves_it_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "docs"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    (dest / "report.md").write_text("also mine")
    src = _report(tmp_path / "run" / "report", "# new")
    with pytest.raises(SaesteerError, match="not a saesteer report"):
        publish_report(src, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt", "report.md"]
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "report.md").read_text() == "also mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left behind


def test_replaces_an_earlier_report_and_marks_it(tmp_path: Path) -> None:
    src = _report(tmp_path / "run" / "report", "# first")
    dest = publish_report(src, tmp_path / "out" / "reproduce")
    assert (dest / MARKER).is_file() and (dest / "report.md").read_text() == "# first"
    (dest / "plots" / "stale.svg").write_text("<svg/>")
    (src / "report.md").write_text("# second")
    publish_report(src, dest)
    assert (dest / "report.md").read_text() == "# second"
    assert not (dest / "plots" / "stale.svg").exists()  # replaced as a whole, not merged
    assert sorted(p.name for p in dest.parent.iterdir()) == ["reproduce"]


def test_accepts_empty_or_missing_and_an_unmarked_report(tmp_path: Path) -> None:
    check_destination(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    check_destination(tmp_path / "empty")
    old = _report(tmp_path / "old", "# an earlier report without a marker")
    check_destination(old)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaesteerError, match="is a file"):
        check_destination(tmp_path / "file")


def test_refuses_a_destination_that_contains_the_run(tmp_path: Path) -> None:
    src = _report(tmp_path / "run" / "report", "# r")
    with pytest.raises(SaesteerError, match="overlaps"):
        publish_report(src, tmp_path)
