"""Command parsing: one nested dataclass config tree per command, set from a file and from flags.

Why tyro: it turns nested dataclasses into flat, dashed flags (``--max-new-tokens``, ``--no-spliced``)
with ``arg(name="")`` on a section, reads each field's ``metadata["help"]`` (our :func:`saesteer.config.opt`)
as the ``--help`` text, and takes a ready config as ``default=`` so a file's values show in ``--help``.
jsonargparse reads files natively but spells flags ``--section.field_name``; simple_parsing's
config-file loading does not reject unknown keys. Files are read by :func:`saesteer.config.read_config_file`
and applied strictly by :func:`saesteer.config.merge_config` (unknown key -> one-line error).

Precedence: field defaults (or a profile's) < ``--config FILE`` < flags. Every user error, including
tyro's (unknown flag, bad value), becomes one ``saesteer: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import re
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import tyro

from saesteer.config import atomic_write_json, config_to_dict, merge_config, read_config_file
from saesteer.errors import SaesteerError

# Annotate a section of a command tree with this to drop its prefix from the flags (--dtype, not --model.dtype).
FLAT = tyro.conf.arg(name="")

CONFIG_HELP = "--config FILE (.toml, .yaml or .json; the same nested shape as the options) sets any option; flags win."


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its name (``"model info"``), one-line help, config tree and runner ``run(cfg) -> int``."""

    name: str
    help: str
    config: type
    run: Callable[[Any], int]
    description: str = ""
    markers: tuple[Any, ...] = ()
    # optional: the default tree from a profile name (read from --profile or the file's ``profile_key``)
    profile: Callable[[str | None], Any] | None = None
    profile_key: tuple[str, ...] = ()
    # (dotted path, why) of nested fields that have no flag: the command sets them itself (a file may still
    # name them; the command's own check then says why); a flag for one is an error that says why
    hidden: tuple[tuple[str, str], ...] = ()


def _pop_option(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """Remove ``flag VALUE`` / ``flag=VALUE`` from argv; return (rest, last value)."""
    rest: list[str] = []
    value: str | None = None
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg == flag:
            if i + 1 >= len(argv):
                raise SaesteerError(f"{flag} needs a value")
            value = argv[i + 1]
            next(it, None)
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, value


def _peek_option(argv: Sequence[str], flag: str) -> str | None:
    return _pop_option(list(argv), flag)[1]


def _dig(data: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def default_tree(cmd: Command, argv: Sequence[str], file_values: dict[str, Any], source: str) -> Any:
    """The command's config before flags: defaults (or the profile's), then the file's values."""
    if cmd.profile is not None:
        name = _peek_option(argv, "--" + cmd.profile_key[-1].replace("_", "-")) or _dig(file_values, cmd.profile_key)
        base = cmd.profile(None if name is None else str(name))
    else:
        base = cmd.config()
    return merge_config(base, file_values, source)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RULE = re.compile(r"[-─]{3,}")


def _blocks(tyro_error: str) -> list[list[str]]:
    """The paragraphs of tyro's boxed message (UTF-8 or ASCII box), the title first."""
    blocks: list[list[str]] = [[]]
    for raw in _ANSI.sub("", tyro_error).splitlines():
        top = raw.strip().startswith("╭")  # UTF-8 boxes carry the title in the top border
        line = re.sub(r"[╭╮╰╯│]", " ", raw).strip()
        line = line.strip("─ ") if top else line
        if not line or _RULE.fullmatch(line.replace(" ", "")):
            blocks.append([])
            continue
        blocks[-1].append(line)
        if top:
            blocks.append([])
    return [b for b in blocks if b]


def one_line(tyro_error: str) -> str:
    """tyro's boxed error message as one line: its first paragraph, plus a 'did you mean' when it has one."""
    blocks = _blocks(tyro_error)
    if not blocks:
        return "bad command line; see --help"
    msg = " ".join(blocks[1] if len(blocks) > 1 else blocks[0])
    hints = [b for b in blocks[2:] if b[0].lower().startswith(("perhaps you meant", "arguments similar"))]
    flags = [tok for line in (hints[0][1:] if hints else []) for tok in line.split() if tok.startswith("--")]
    if flags:
        msg += f" (did you mean {flags[0]}?)"
    return re.sub(r"\s+", " ", msg).strip()


def _hidden_by_type(config: type, paths: Sequence[str]) -> dict[type, set[str]]:
    """``{section type: names of its fields to hide}`` for dotted ``paths`` into the ``config`` tree.

    tyro expands a section by its type, so a hidden field is hidden wherever its section type appears; a
    type that appears in more than one place of the tree is refused rather than hidden everywhere."""
    places: dict[type, list[str]] = {}

    def walk(tp: type, where: str) -> None:
        for name, sub in typing.get_type_hints(tp).items():
            if dataclasses.is_dataclass(sub) and isinstance(sub, type):
                places.setdefault(sub, []).append(f"{where}{name}")
                walk(sub, f"{where}{name}.")

    walk(config, "")
    hidden: dict[type, set[str]] = {}
    for path in paths:
        *sections, name = path.split(".")
        tp = config
        for section in sections:
            tp = typing.get_type_hints(tp)[section]
        if len(places.get(tp, [])) > 1:
            raise ValueError(f"cannot hide {path}: {tp.__name__} also sits at {places[tp]}")
        if name not in {f.name for f in dataclasses.fields(tp)}:
            raise ValueError(f"cannot hide {path}: {tp.__name__} has no field {name!r}")
        hidden.setdefault(tp, set()).add(name)
    return hidden


def _flag(config: type, path: str) -> str:
    """The flag tyro gives the field at ``path`` (sections marked :data:`FLAT` add no prefix)."""
    parts: list[str] = []
    tp: Any = config
    *sections, name = path.split(".")
    for section in sections:
        hint = typing.get_type_hints(tp, include_extras=True)[section]
        if FLAT not in getattr(hint, "__metadata__", ()):
            parts.append(section)
        tp = typing.get_type_hints(tp)[section]
    return "--" + ".".join([*parts, name]).replace("_", "-")


def _refuse_hidden(cmd: Command, argv: Sequence[str]) -> None:
    why = {_flag(cmd.config, path): reason for path, reason in cmd.hidden}
    for arg in argv:
        if arg == "--":
            return
        if arg.split("=", 1)[0] in why:
            raise SaesteerError(f"{arg.split('=', 1)[0]}: {why[arg.split('=', 1)[0]]}")


def hiding_registry(config: type, paths: Sequence[str]) -> tyro.constructors.ConstructorRegistry:
    """A tyro registry that expands sections as usual but suppresses the flags of the fields at ``paths``."""
    hidden = _hidden_by_type(config, paths)
    registry = tyro.constructors.ConstructorRegistry()
    busy: list[type] = []

    @registry.struct_rule
    def suppress(info: tyro.constructors.StructTypeInfo) -> Any:
        if info.type not in hidden or info.type in busy:
            return None
        busy.append(info.type)
        try:
            spec = tyro.constructors.ConstructorRegistry.get_struct_spec(info)  # the default expansion
        finally:
            busy.pop()
        if not isinstance(spec, tyro.constructors.StructConstructorSpec):
            return spec
        fields = tuple(
            dataclasses.replace(f, type=typing.cast(Any, Annotated[f.type, tyro.conf.Suppress]))
            if f.name in hidden[info.type]
            else f
            for f in spec.fields
        )
        return dataclasses.replace(spec, fields=fields)

    return registry


def _description(cmd: Command) -> str:
    """The command's description, else its config tree's docstring, else its one-line help."""
    return cmd.description or inspect.cleandoc(cmd.config.__doc__ or "") or cmd.help


def parse(cmd: Command, argv: Sequence[str]) -> Any:
    """Parse ``argv`` (the words after the command name) into ``cmd``'s config tree."""
    rest, config_path = _pop_option(list(argv), "--config")
    file_values = read_config_file(config_path) if config_path else {}
    _refuse_hidden(cmd, rest)
    default = default_tree(cmd, rest, file_values, config_path or "defaults")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return tyro.cli(
                cmd.config,
                args=rest,
                default=default,
                prog=f"saesteer {cmd.name}",
                description=f"{_description(cmd)}\n\n{CONFIG_HELP}",
                config=cmd.markers,
                registry=hiding_registry(cmd.config, [path for path, _ in cmd.hidden]) if cmd.hidden else None,
            )
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        raise SaesteerError(one_line(err.getvalue())) from None


def write_resolved_config(out_dir: str | Path, cfg: Any) -> None:
    """Write ``resolved_config.json``: every option of the command's config tree, next to its outputs."""
    atomic_write_json(Path(out_dir) / "resolved_config.json", config_to_dict(cfg))
