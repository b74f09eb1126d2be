"""Dropping finished rows from the decode batch: time and tokens of HumanEval chat answers with and without.

A batch decodes until its longest reply ends; with ``shrink`` the rows that ended leave the KV cache, so later
steps cost what the rows still running cost. Both runs generate the same problems greedily (the same batches)
and must give the same answers up to rounding; prints seconds, the ratio, and how many answers agree.

    python bench/drop_finished.py --n 32 --batch 16 --max-new-tokens 384
"""

from __future__ import annotations

import argparse
import time

import torch

from saesteer.evaluation.humaneval import chat_prompt, generate_code, load_humaneval
from saesteer.machine import machine_limits
from saesteer.model.loading import load


def answers(lm, prompts: list[str], batch: int, max_new: int, shrink: bool) -> tuple[list[str], float, int]:
    t0 = time.perf_counter()
    out = generate_code(lm.model, lm.tokenizer, prompts, max_new, batch, shrink)
    seconds = time.perf_counter() - t0
    tokens = sum(len(lm.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in out)
    return out, seconds, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=32, help="HumanEval problems (the first n)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load(args.model)
    prompts = [chat_prompt(p) for p in load_humaneval()[: args.n]]
    gflops, gbs = machine_limits()
    print(f"# machine: bf16 matmul {gflops:.0f} GFLOP/s, copy bandwidth {gbs:.1f} GB/s")
    keep, t_keep, n_keep = answers(lm, prompts, args.batch, args.max_new_tokens, shrink=False)
    drop, t_drop, n_drop = answers(lm, prompts, args.batch, args.max_new_tokens, shrink=True)
    same = sum(a == b for a, b in zip(keep, drop, strict=True))
    print(f"{args.n} problems, batch {args.batch}, up to {args.max_new_tokens} new tokens")
    print(f"keep finished rows: {t_keep:7.1f} s  {n_keep / t_keep:6.1f} answer tokens/s")
    print(f"drop finished rows: {t_drop:7.1f} s  {n_drop / t_drop:6.1f} answer tokens/s")
    print(f"time ratio drop/keep: {t_drop / t_keep:.3f}; identical answers: {same}/{args.n}")


if __name__ == "__main__":
    main()
