"""The ``saesteer`` command line.

Each subcommand module of this package lists its commands in ``COMMANDS`` (see
:class:`saesteer.cli.common.Command`): a name, a nested dataclass config tree and ``run(cfg) -> int``.
User errors (:class:`SaesteerError`, and OS errors such as a missing or unwritable path) print one
line and exit 2, without a traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import Sequence

from saesteer.cli.common import Command, parse
from saesteer.errors import SaesteerError

# command name -> module of this package that defines it (in --help order); a command imports only its module
COMMAND_MODULES = {
    "model info": "model_cmd",
    "generate": "generate_cmd",
    "harvest": "harvest_cmd",
    "train-sae": "sae_cmd",
    "sae-eval": "sae_cmd",
    "find-features": "features_cmd",
    "feature show": "features_cmd",
    "fit-gate": "gate_cmd",
    "reproduce": "reproduce_cmd",
    "app": "app_cmd",
}


def command(name: str) -> Command:
    mod = importlib.import_module(f"saesteer.cli.{COMMAND_MODULES[name]}")
    return next(c for c in mod.COMMANDS if c.name == name)


def commands() -> dict[str, Command]:
    """Every subcommand by name (``"model info"`` for nested ones)."""
    return {name: command(name) for name in COMMAND_MODULES}


def usage(prefix: str = "") -> str:
    """The command list (those under ``prefix``, e.g. ``"model"``)."""
    from saesteer import __version__

    rows = [(n, command(n).help) for n in COMMAND_MODULES if n.startswith(prefix)]
    width = max(len(n) for n, _ in rows) + 2
    lines = [
        f"usage: saesteer {prefix + ' ' if prefix else ''}COMMAND [OPTIONS]   (saesteer COMMAND --help for its options)",
        "",
        f"Steer a chat model's refusals with SAE features, and measure what it costs (saesteer {__version__}).",
        "",
        "commands:",
        *[f"  {n:<{width}}{h}" for n, h in rows],
    ]
    return "\n".join(lines)


def _find(argv: list[str]) -> tuple[Command, list[str]]:
    table = COMMAND_MODULES
    for n_words in (2, 1):
        name = " ".join(argv[:n_words])
        if len(argv) >= n_words and name in table:
            return command(name), argv[n_words:]
    word = argv[0] if argv else ""
    subs = [n.split(" ", 1)[1] for n in table if n.startswith(word + " ")]
    if subs:
        raise SaesteerError(f"'{word}' needs a subcommand ({', '.join(subs)}); run 'saesteer {word} --help'")
    raise SaesteerError(f"unknown command {word!r}; run 'saesteer --help' for the list")


def _os_error(exc: OSError) -> str:
    """One line for an OS error on a user's path, naming what the path should be."""
    path = exc.filename or "a path"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{path} is a file where a folder is needed; pass a folder path"
    if exc.errno == errno.EISDIR:
        return f"{path} is a folder where a file is needed; pass a file path"
    if exc.errno == errno.ENOENT:
        return f"{path} not found; check the path"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write or read {path} ({exc.strerror}); pick a path you can write to"
    return f"{path}: {exc.strerror or exc}; check the path, its permissions and free disk space"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line and exit 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from saesteer import __version__

        print(f"saesteer {__version__}")
        return 0
    if len(args) == 2 and args[1] in ("-h", "--help") and any(n.startswith(args[0] + " ") for n in COMMAND_MODULES):
        print(usage(args[0]))
        return 0
    try:
        cmd, rest = _find(args)
        cfg = parse(cmd, rest)
        return int(cmd.run(cfg) or 0)
    except SaesteerError as exc:
        print("saesteer: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        print(f"saesteer: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saesteer: interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
