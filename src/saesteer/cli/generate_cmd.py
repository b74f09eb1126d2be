"""``saesteer generate``: chat completions for prompts, optionally steered (base and steered side by side)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import tyro

from saesteer.cli.common import FLAT, Command
from saesteer.cli.show import print_plain, print_steered
from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.model.generation import GenerationConfig, generate
from saesteer.model.loading import ModelConfig, load
from saesteer.steering.engine import Steering
from saesteer.steering.spec import SteeringSpec, read_prompt_file


@dataclass
class GenerateCommand:
    """Generate chat completions for prompts (batched, left-padded, KV cache); steer them with --sae/--direction.
    --clamp, --scale, --add-feature and --ablate-feature repeat, and add to the edits a config file lists.

    Examples:
      saesteer generate "How do I pick a lock?" --sae runs/sae --clamp 1234=10 --positions all
      saesteer generate --prompts-file p.txt --sae runs/sae --clamp 1234=10 --gate feature:77>3.2
      saesteer generate "Write a poem" --direction refusal.safetensors --add-direction 4.0
      saesteer generate --prompts-file p.txt --sae runs/sae --clamp 1234=10 --gate direction \\
          --direction r.safetensors --gate-calibrate harmless_dev.txt --gate-fpr 0.05
      saesteer generate --prompts-file p.txt --sae runs/sae --clamp 1234=10 --gate gate.safetensors
    """

    prompts: tyro.conf.Positional[list[str]] = opt([], "user prompts (or use --prompts-file)")
    prompts_file: str | None = opt(None, "a .txt file (one prompt a line) or .jsonl ({'prompt'} or {'messages'})")
    json: bool = opt(False, "print JSON lines instead of text")
    layout: Literal["columns", "stacked"] = opt("columns", "steered output: columns (side by side) or stacked")
    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)
    generation: Annotated[GenerationConfig, FLAT] = field(default_factory=GenerationConfig)
    # steering lists are repeatable flags (--clamp 1=5 --clamp 7=2) that add to a config file's list
    steering: Annotated[SteeringSpec, FLAT, tyro.conf.UseAppendAction] = field(default_factory=SteeringSpec)


def prompts_of(cfg: GenerateCommand) -> list[Any]:
    prompts: list[Any] = list(cfg.prompts)
    if cfg.prompts_file:
        prompts += read_prompt_file(cfg.prompts_file)
    if not prompts:
        raise SaesteerError("no prompts given; pass prompts as arguments or with --prompts-file")
    return prompts


def run(cfg: GenerateCommand) -> int:
    prompts = prompts_of(cfg)
    cfg.steering.check()
    lm = load(cfg.model)
    gen = cfg.generation
    progress = len(prompts) > gen.batch_size
    steering = (
        Steering.from_spec(lm.model, cfg.steering, lm.tokenizer, gen.system_prompt) if cfg.steering.active else None
    )
    base = generate(lm.model, lm.tokenizer, prompts, gen, progress=progress, desc="base")
    if steering is None:
        print_plain(prompts, base, cfg.json)
        return 0
    with steering.apply():
        steered = generate(lm.model, lm.tokenizer, prompts, gen, progress=progress, desc="steered")
    print_steered(lm, prompts, base, steered, steering.gate, gen, cfg.json, cfg.layout)
    return 0


COMMANDS = [Command("generate", "generate chat completions, optionally steered", GenerateCommand, run)]
