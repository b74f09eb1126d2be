"""Cheap-screen cost per candidate: the fast suffix path (cached prefix) vs a hooked full forward.

The cheap screen scores every candidate on the same dev prompts. Its fast path caches the activations
at the SAE's hook once and runs only the later layers per candidate; the fallback runs the whole
model with a steering hook. Both are timed in the same process on the same prompts, interleaved
candidate by candidate; prints seconds per candidate for each, the speed-up (fast / hooked) and the
largest score difference between them (they must agree).

Without ``--sae`` a random Top-k SAE (16,384 latents, k=32) at ``--hook`` stands in: the cost is the same.

    python bench/feature_screen.py                      # default model, layer 12, 16 prompts, 3 candidates
    python bench/feature_screen.py --hook blocks.6.hook_resid_post --n 32
"""

from __future__ import annotations

import argparse
import time

import torch

from saesteer.evaluation.datasets import load_prompts
from saesteer.features.refusal_score import RefusalTokens
from saesteer.features.screen import ScreenRunner
from saesteer.model.loading import load
from saesteer.sae.base import SAE, SAEConfig
from saesteer.sae.io import load_sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default=None, help="SAE folder (default: a random Top-k SAE at --hook)")
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--n", type=int, default=16, help="prompts (half builtin harmful, half builtin harmless)")
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    lm = load(args.model)
    if args.sae:
        sae = load_sae(args.sae)
    else:
        torch.manual_seed(0)
        d = lm.model.config.hidden_size
        sae = SAE.from_config(SAEConfig("topk", d, 16384, 32, hook_name=args.hook))
    sae = sae.to(lm.device).eval()
    half = args.n // 2
    prompts = [p.text for p in load_prompts("builtin_harmful", n=half)]
    prompts += [p.text for p in load_prompts("builtin_harmless", n=args.n - half)]
    rt = RefusalTokens.from_words(lm.tokenizer)
    fast = ScreenRunner(lm.model, lm.tokenizer, sae, prompts, rt, args.batch_size, fast=True)
    if not fast.fast:
        print("the fast path is not available for this model / hook; nothing to compare")
        return
    slow = ScreenRunner(lm.model, lm.tokenizer, sae, prompts, rt, args.batch_size, fast=False)
    t_fast = t_slow = 0.0
    worst = 0.0
    for f in range(args.candidates):
        t0 = time.perf_counter()
        a = fast.scores(f, 10.0)
        t_fast += time.perf_counter() - t0
        t0 = time.perf_counter()
        b = slow.scores(f, 10.0)
        t_slow += time.perf_counter() - t0
        worst = max(worst, float((a - b).abs().max()))
    n = args.candidates
    print(f"model {lm.spec} ({lm.dtype}), {sae.cfg.hook_name}, {len(prompts)} prompts, {n} candidates")
    print(
        f"per candidate: fast {t_fast / n:.2f}s, hooked full forward {t_slow / n:.2f}s; "
        f"speed-up {t_slow / t_fast:.2f}x; max |score difference| {worst:.4f}"
    )


if __name__ == "__main__":
    main()
