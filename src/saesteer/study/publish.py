"""Publishing the report to a folder the user names, without ever deleting their files.

A report folder carries a small marker file (:data:`MARKER`). ``publish_report(src, dest)`` copies ``src``
into a fresh sibling temp folder of ``dest``, marks it, and swaps it in with two renames, so ``dest`` is at
every moment either the old report or the new one. ``dest`` may be missing, empty, or an earlier saesteer
report (marked, or holding only the files a report consists of); anything else is refused with a one-line
error, and the folder is left as it was.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from saesteer.config import atomic_write_text
from saesteer.errors import SaesteerError

MARKER = ".saesteer-report"
#: the names an unmarked report folder written by earlier versions may hold (and nothing else)
REPORT_FILES = frozenset(
    {
        "report.md", "report.html", "derived.json", "plots", "features.md", "sae_metrics.json",
        "sae_train_summary.json", "harvest_manifest.json", "splits.json", "results.json", "results.csv",
        "resolved_config.json", "seeds.json", "examples.json", "features.json",
    }
)  # fmt: skip


def mark(folder: Path) -> None:
    """Mark ``folder`` as a saesteer report (a later publish may replace it)."""
    atomic_write_text(folder / MARKER, "saesteer report folder: `saesteer reproduce --report-dir` may replace it\n")


def is_report(folder: Path) -> bool:
    """True when ``folder`` is a saesteer report: marked, or holding report files only (with report.md)."""
    if (folder / MARKER).is_file():
        return True
    names = {p.name for p in folder.iterdir()}
    return "report.md" in names and names <= REPORT_FILES


def check_destination(dest: Path) -> None:
    """Raise unless ``dest`` is missing, an empty folder or an earlier saesteer report."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise SaesteerError(f"--report-dir {dest} is a file; give a folder path (new, empty, or an earlier report)")
    if any(dest.iterdir()) and not is_report(dest):
        raise SaesteerError(
            f"--report-dir {dest} holds files that are not a saesteer report; pick a new or empty folder "
            "(nothing was changed)"
        )


def publish_report(src: Path, dest: Path) -> Path:
    """Copy the report folder ``src`` to ``dest`` atomically (see the module docstring); returns ``dest``."""
    src, dest = Path(src).resolve(), Path(dest).resolve()
    if dest == src:
        mark(src)
        return dest
    if src.is_relative_to(dest) or dest.is_relative_to(src):
        raise SaesteerError(f"--report-dir {dest} overlaps the run folder {src}; pick a folder outside it")
    check_destination(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        mark(tmp)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            dest.rename(old / "report")
            try:
                tmp.rename(dest)
            except OSError:
                (old / "report").rename(dest)
                raise
            shutil.rmtree(old)  # the previous report, checked above
        else:
            tmp.rename(dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaesteerError(f"could not write the report to {dest} ({exc}); check the path and permissions") from None
    return dest
