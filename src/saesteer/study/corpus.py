"""A built-in text corpus for runs with no data directory: the docstrings of Python's standard library.

Real English prose that every machine with Python has; small (a few hundred KB), so a no-data run
trains a small SAE on it plus the model's own chat conversations.
"""

from __future__ import annotations

import importlib
import inspect

_SKIP = ("test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "antigravity", "this", "__")


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    """Docstrings (module, class and function) of importable pure-Python standard-library modules."""
    import sys

    names = sorted(n for n in sys.stdlib_module_names if not n.startswith(_SKIP))
    texts: list[str] = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        for obj in [mod, *(v for _, v in inspect.getmembers(mod) if inspect.isclass(v) or inspect.isfunction(v))]:
            if getattr(obj, "__module__", name) != name and obj is not mod:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) >= min_chars:
                texts.append(doc)
    return list(dict.fromkeys(texts))
