"""``saesteer harvest``: residual-stream activations into a sharded bf16 cache (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

from saesteer.activations.chat import build_chat_data, read_chat_file
from saesteer.activations.distributed import barrier, distributed, local_device
from saesteer.activations.harvest import HarvestConfig, harvest
from saesteer.cli.common import FLAT, Command, write_resolved_config
from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.model.generation import GenerationConfig
from saesteer.model.loading import ModelConfig, load


@dataclass
class HarvestCommand:
    """Harvest activations at one hook point into bf16 shards + manifest; rerunning resumes a partial harvest."""

    chat_prompts: list[str] = opt(
        [],
        "prompt sets SET[:N] whose chat conversations (with the model's own responses, generated once and cached "
        "in OUT_DIR/chat.jsonl) are mixed in, e.g. donotanswer:300 alpaca:300",
    )
    data_dir: str | None = opt(
        None, "data directory for --chat-prompts (default: $SAESTEER_DATA_DIR or ../shared/data)"
    )
    chat_max_new_tokens: int = opt(48, "response length for chat data")
    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)
    harvest: Annotated[HarvestConfig, FLAT] = field(default_factory=HarvestConfig)


def chat_prompts(specs: list[str], data_dir: str | None, seed: int) -> list[str]:
    """Prompt texts from ``SET[:SPLIT][:N]`` specs."""
    from saesteer.evaluation.datasets import load_prompts

    texts: list[str] = []
    for spec in specs:
        name, n = spec, None
        head, _, tail = spec.rpartition(":")
        if head and tail.isdigit():
            name, n = head, int(tail)
        texts += [p.text for p in load_prompts(name, n=n, seed=seed, data_dir=data_dir)]
    return texts


def run(cfg: HarvestCommand) -> int:
    """Harvest; under torchrun every process harvests its share and rank 0 writes (chat data: rank 0 generates)."""
    hc = cfg.harvest
    if not hc.corpus and not cfg.chat_prompts and not hc.chat_file:
        raise SaesteerError("nothing to harvest; pass --corpus FILE and/or --chat-prompts SET[:N]")
    prompts = chat_prompts(cfg.chat_prompts, cfg.data_dir, hc.seed) if cfg.chat_prompts else []
    chat = read_chat_file(hc.chat_file) if hc.chat_file and not prompts else []
    with distributed(cfg.model.device) as (rank, _world):
        lm = load(replace(cfg.model, device=local_device(cfg.model.device)))
        if prompts:
            hc.chat_file = str(Path(hc.out_dir) / "chat.jsonl")
            if rank == 0:
                gen = GenerationConfig(max_new_tokens=cfg.chat_max_new_tokens, batch_size=16)
                build_chat_data(lm.model, lm.tokenizer, prompts, hc.chat_file, gen)
            barrier()
            chat = read_chat_file(hc.chat_file)
        out = harvest(lm.model, lm.tokenizer, hc, lm.spec, chat=chat)
    if rank == 0:
        write_resolved_config(out, cfg)
        print(f"activations in {out}")
    return 0


COMMANDS = [Command("harvest", "harvest activations into an on-disk cache", HarvestCommand, run)]
