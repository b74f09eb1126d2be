"""Harvest throughput: truncated forward (stop after the hooked layer) vs the full forward.

Prints tokens/s of both on the same batches in the same run, and the ratio.

    python bench/harvest.py --model default --layer 6 --batches 6
"""

from __future__ import annotations

import argparse
import time

import torch

from saesteer.activations.sources import iter_texts, pack_tokens
from saesteer.evaluation.datasets import DATA_FILES, data_dir
from saesteer.model.adapter import ArchAdapter
from saesteer.model.loading import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--context-len", type=int, default=128)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    lm = load(args.model, dtype=args.dtype)
    adapter = ArchAdapter(lm.model)
    root = data_dir(args.data_dir)
    if root is None:
        raise SystemExit("needs the corpus: pass --data-dir or set SAESTEER_DATA_DIR")
    texts = iter_texts(root / DATA_FILES["corpus"])
    windows = pack_tokens(lm.tokenizer, texts, args.context_len)
    batches = []
    for _ in range(args.batches):
        batches.append(torch.tensor([next(windows) for _ in range(args.batch_size)]))
    point = f"blocks.{args.layer}.hook_resid_post"

    def truncated(ids: torch.Tensor) -> None:
        adapter.run_to(point, ids)

    def full(ids: torch.Tensor) -> None:
        adapter.run_full(point, ids)

    results = {}
    for name, fn in (("truncated", truncated), ("full", full)):
        fn(batches[0])  # warm-up
        t0 = time.perf_counter()
        for ids in batches:
            fn(ids)
        dt = time.perf_counter() - t0
        results[name] = args.batches * args.batch_size * args.context_len / dt
    print(
        f"model {args.model} ({adapter.model_type}, {adapter.n_layers} layers), {point}, dtype {lm.dtype}, "
        f"{torch.get_num_threads()} threads, {args.batches} x {args.batch_size} x {args.context_len} tokens"
    )
    print(f"truncated forward: {results['truncated']:,.0f} tokens/s")
    print(f"full forward:      {results['full']:,.0f} tokens/s")
    print(f"ratio truncated/full: {results['truncated'] / results['full']:.2f}x")


if __name__ == "__main__":
    main()
