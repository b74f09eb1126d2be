"""``saesteer harvest``: residual-stream activations into a sharded bf16 cache (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from saesteer.activations.chat import build_chat_data, read_chat_file
from saesteer.activations.harvest import HarvestConfig, harvest
from saesteer.cli.common import add_model_args, config_from_args, model_from_args, write_resolved_config
from saesteer.config import add_dataclass_args
from saesteer.errors import SaesteerError
from saesteer.model.generation import GenerationConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "harvest",
        help="harvest activations into an on-disk cache",
        description="Harvest activations at one hook point with the truncated forward into "
        "bf16 shards + manifest. Rerunning resumes a partial harvest.",
    )
    p.add_argument("--config", metavar="FILE", help="config file (.toml, .yaml or .json); flags override it")
    p.add_argument(
        "--chat-prompts",
        nargs="+",
        metavar="SET[:N]",
        default=None,
        help="prompt sets whose chat conversations (with the model's own responses, generated once and "
        "cached in OUT_DIR/chat.jsonl) are mixed in, e.g. donotanswer:300 alpaca:300",
    )
    p.add_argument(
        "--data-dir", help="data directory for --chat-prompts (default: $SAESTEER_DATA_DIR or ../shared/data)"
    )
    p.add_argument("--chat-max-new-tokens", type=int, default=48, help="response length for chat data (default: 48)")
    add_model_args(p)
    add_dataclass_args(p, HarvestConfig)
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(HarvestConfig, args)
    lm = model_from_args(args)
    chat = []
    if args.chat_prompts:
        prompts = chat_prompts(args.chat_prompts, args.data_dir, cfg.seed)
        chat_file = Path(cfg.out_dir) / "chat.jsonl"
        chat = build_chat_data(
            lm.model,
            lm.tokenizer,
            prompts,
            chat_file,
            GenerationConfig(max_new_tokens=args.chat_max_new_tokens, batch_size=16),
        )
        cfg.chat_file = str(chat_file)
    elif cfg.chat_file:
        chat = read_chat_file(cfg.chat_file)
    if not cfg.corpus and not chat:
        raise SaesteerError("nothing to harvest; pass --corpus FILE and/or --chat-prompts SET[:N]")
    out = harvest(lm.model, lm.tokenizer, cfg, lm.spec, chat=chat)
    write_resolved_config(out, harvest=cfg)
    print(f"activations in {out}")
    return 0
