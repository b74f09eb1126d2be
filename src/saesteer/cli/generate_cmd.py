"""``saesteer generate``: chat completions for prompts, optionally steered (see ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from saesteer.cli.common import add_model_args, config_from_args, model_from_args
from saesteer.config import add_dataclass_args
from saesteer.errors import SaesteerError
from saesteer.model.generation import GenerationConfig, generate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate chat completions",
        description="Generate chat completions for prompts (batched, left-padded, KV cache).",
    )
    p.add_argument("prompts", nargs="*", help="user prompts (or use --prompts-file)")
    p.add_argument("--prompts-file", help="a .txt file (one prompt a line) or .jsonl ({'prompt'} or {'messages'})")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.add_argument("--config", metavar="FILE", help="config file (.toml, .yaml or .json); flags override it")
    add_model_args(p)
    add_dataclass_args(p, GenerationConfig)
    hook = _steering_register()
    if hook is not None:
        hook(p)
    p.set_defaults(func=run)


def _steering_register() -> Any:
    try:
        from saesteer.steering.cli_options import add_steering_args
    except ModuleNotFoundError:
        return None
    return add_steering_args


def read_prompts(args: argparse.Namespace) -> list[Any]:
    """Prompts from positional args and/or --prompts-file."""
    prompts: list[Any] = list(args.prompts)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise SaesteerError(f"prompts file {path} not found; pass an existing .txt or .jsonl file")
        if path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise SaesteerError(f"{path}:{n} is not valid JSON; one JSON object per line") from None
                if "messages" in row:
                    prompts.append(row["messages"])
                elif "prompt" in row:
                    prompts.append(row["prompt"])
                else:
                    raise SaesteerError(f"{path}:{n} has neither 'prompt' nor 'messages'; add one of them")
        else:
            prompts.extend(line for line in path.read_text().splitlines() if line.strip())
    if not prompts:
        raise SaesteerError("no prompts given; pass prompts as arguments or with --prompts-file")
    return prompts


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    gen_cfg = config_from_args(GenerationConfig, args)
    lm = model_from_args(args)
    try:
        from saesteer.steering.cli_options import steered_generate
    except ModuleNotFoundError:
        steered_generate = None  # type: ignore[assignment]
    if steered_generate is not None:
        handled = steered_generate(lm, prompts, gen_cfg, args)
        if handled:
            return 0
    outs = generate(lm.model, lm.tokenizer, prompts, gen_cfg, progress=len(prompts) > gen_cfg.batch_size)
    for prompt, out in zip(prompts, outs, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "completion": out}))
        else:
            print(f"### prompt: {prompt if isinstance(prompt, str) else prompt[-1]['content']}")
            print(out)
            print()
    sys.stdout.flush()
    return 0
