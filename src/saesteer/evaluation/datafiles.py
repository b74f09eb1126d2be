"""Data files: where the data directory is, and readers that check columns and keys.

The data directory is laid out like ``../shared/data`` (see its README). It is found from an explicit path
(``--data-dir``), else ``$SAESTEER_DATA_DIR``, else ``<cwd>/../shared/data`` or ``<repo>/../shared/data``.
Every missing or malformed file raises :class:`SaesteerError` naming the dataset and how to provide it.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from saesteer.errors import SaesteerError

T = TypeVar("T")
ENV_VAR = "SAESTEER_DATA_DIR"
_REPO = Path(__file__).resolve().parents[3]

# --- data directory --------------------------------------------------------------------------------------------


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The data directory: ``explicit``, else ``$SAESTEER_DATA_DIR``, else ``<cwd>/../shared/data`` or
    ``<repo>/../shared/data`` if one exists, else None. An explicit or env path that does not exist is an error;
    the value ``none`` (either way) means no data directory: the built-in suites."""
    if explicit is not None and str(explicit).lower() == "none":
        return None
    if explicit is None and os.environ.get(ENV_VAR, "").lower() == "none":
        return None
    if explicit is not None and str(explicit) != "":
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise SaesteerError(f"data directory {p} does not exist; pass an existing folder to --data-dir")
        return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise SaesteerError(f"{ENV_VAR}={env} is not a folder; point it at a data directory or unset it")
        return p
    for cand in (Path.cwd().parent / "shared" / "data", _REPO.parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


resolve_data_dir = data_dir  # an alias for functions whose ``data_dir`` parameter shadows the function


def require_file(name: str, rel: str, explicit: str | os.PathLike[str] | None) -> Path:
    """The path of dataset ``name``'s file ``rel`` under the data directory, or a SaesteerError saying how to
    provide it."""
    root = data_dir(explicit)
    if root is None:
        raise SaesteerError(
            f"dataset {name!r} needs {rel} from a data directory, and none was found; set {ENV_VAR} or pass "
            "--data-dir (layout of ../shared/data), or use the built-in suites (builtin_harmful, builtin_harmless, "
            "builtin_xsafe)"
        )
    path = root / rel
    if not path.is_file():
        raise SaesteerError(
            f"dataset {name!r}: {path} not found; put the file there (layout of ../shared/data) or use the "
            "built-in suites"
        )
    return path


def subsample(items: list[T], n: int | None, seed: int, key: str) -> list[T]:
    """``n`` items picked under ``seed`` (deterministic), in their original order; all items if n is None."""
    if n is not None and n < 0:
        raise SaesteerError(f"sample size n={n} must be >= 0")
    if n is None or n >= len(items):
        return list(items)
    rng = random.Random(f"{key}:{seed}")
    keep = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in keep]


# --- file readers with column checks ---------------------------------------------------------------------------


def read_csv(path: Path, required: Sequence[str], name: str) -> list[dict[str, str]]:
    """Rows of a CSV as dicts, checking that the ``required`` columns are present."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            missing = [c for c in required if c not in cols]
            if missing:
                raise SaesteerError(
                    f"dataset {name!r}: {path} lacks column(s) {', '.join(missing)} (found: {', '.join(cols) or 'none'}); "
                    "use the upstream file"
                )
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SaesteerError(f"dataset {name!r}: {path} is not a readable CSV ({exc}); use the upstream file") from None


def read_json(path: Path, name: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SaesteerError(f"dataset {name!r}: {path} is not valid JSON ({exc}); use the upstream file") from None


def read_jsonl(path: Path, required: Sequence[str], name: str) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (``.gz`` allowed), checking that each has the ``required`` keys."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    out: list[dict[str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if not isinstance(rec, dict) or any(k not in rec for k in required):
                    raise SaesteerError(
                        f"dataset {name!r}: {path} line {lineno} lacks key(s) {', '.join(required)}; use the upstream file"
                    )
                out.append(rec)
    except (UnicodeDecodeError, json.JSONDecodeError, OSError, EOFError) as exc:
        raise SaesteerError(
            f"dataset {name!r}: {path} is not valid JSON lines ({exc}); use the upstream file"
        ) from None
    return out


DATA_FILES = {
    "xstest": "safety/xstest_prompts.csv",
    "harmbench": "safety/harmbench_test.csv",
    "advbench": "safety/advbench_harmful_behaviors.csv",
    "jbb": "safety/jbb_harmful.csv",
    "donotanswer": "safety/donotanswer_en.csv",
    "alpaca": "harmless/alpaca_instructions.json",
    "mmlu": "capability/mmlu/test",
    "gsm8k": "capability/gsm8k/test.jsonl",
    "truthfulqa": "capability/truthfulqa/mc_task.json",
    "fractured_sorry_bench": "multiturn/fractured_sorry_bench/question_breakdowns.jsonl",
    "corpus": "corpus/english_mix_corpus.jsonl.gz",
    "crescendo": "multiturn/crescendo/crescendo_variant_1.yaml",
}


def has_data(name: str, data_dir: str | os.PathLike[str] | None = None) -> bool:
    """True if dataset ``name`` (a key of ``DATA_FILES`` or a ``builtin_*`` set) can be loaded here."""
    key = name.partition(":")[0]
    if key.startswith("builtin"):
        return True
    if key not in DATA_FILES:
        raise SaesteerError(f"unknown dataset {name!r}; known: {', '.join([*DATA_FILES, 'builtin_*'])}")
    try:
        root = resolve_data_dir(data_dir)
    except SaesteerError:
        return False
    return root is not None and (root / DATA_FILES[key]).exists()


def data_dir_or_error(name: str, rel: str, explicit: str | os.PathLike[str] | None) -> Path:
    """The data directory, or a SaesteerError naming dataset ``name`` and how to provide it."""
    root = data_dir(explicit)
    if root is None or not (root / rel).exists():
        where = "no data directory was found" if root is None else f"{root / rel} is missing"
        raise SaesteerError(
            f"dataset {name!r} needs {rel} and {where}; set {ENV_VAR} or pass --data-dir (layout of "
            "../shared/data), or use the built-in suites"
        )
    return root
