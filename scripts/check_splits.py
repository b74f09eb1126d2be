"""Check a study report's splits.json on its own: no prompt used for a dev purpose is a test prompt.

Reads only the JSON (standard library, no saesteer import), so it checks the record rather than the code that
wrote it. For every pair (dev purpose, test) it intersects the sha256 sets of the normalised prompt texts and
exits 1 on any overlap; where a purpose's per-dataset counts sum to more than its distinct hashes, it says so.

    python scripts/check_splits.py docs/reproduce/splits.json [more splits.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def check(path: Path) -> int:
    record = json.loads(path.read_text())
    purposes = record["purposes"]
    if "test" not in purposes:
        print(f"{path}: no 'test' purpose recorded")
        return 1
    test = set(purposes["test"]["sha256"])
    problems = 0
    for name, entry in sorted(purposes.items()):
        hashes = entry["sha256"]
        distinct = set(hashes)
        counted = sum(entry["counts"].values())
        note = "" if counted == len(distinct) else f" (counts sum to {counted}: some texts counted more than once)"
        if name == "test":
            print(f"{path}: test: {len(distinct)} distinct prompts{note}")
            continue
        shared = distinct & test
        problems += len(shared)
        verdict = "disjoint from test" if not shared else f"OVERLAPS test in {len(shared)} prompts"
        print(f"{path}: {name}: {len(distinct)} distinct prompts{note}, {verdict}")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python scripts/check_splits.py SPLITS_JSON [...]", file=sys.stderr)
        return 2
    return max(check(Path(a)) for a in argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
