"""Share of a steered fast-path generation spent inside the steering edit, timed within the same run.

Tokens/s ratios between separate runs carry the machine's noise (+-8% per run on a shared 2-core VM);
the time inside ``Editor.apply`` against the whole run's time, in one run, does not. Prints, per batch
size, the edit's time in the prompt pass and per decode step and its share of the run, for the exact
Top-k clamp (``clamp``) and the column-only read (``clamp-cols``); ``1 - share`` is the ratio the
edit alone allows (goal: >= 0.97).

    python bench/edit_share.py --batches 1,16,64 --new-tokens 32
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from generate import add_common_args, make_steerings
from saesteer.model.adapter import ArchAdapter
from saesteer.model.decode import decode
from saesteer.model.generation import encode_chats
from saesteer.model.loading import load
from saesteer.steering.operators import Editor
from steer_overhead import PROMPTS, build_sae

SPENT = {"prompt": 0.0, "decode": 0.0, "steps": 0}


def _timed(apply: Any) -> Any:
    def wrapper(self: Editor, x: torch.Tensor, sel: Any, info: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        out = apply(self, x, sel, info)
        dt = time.perf_counter() - t0
        if info.past == 0:
            SPENT["prompt"] += dt
        else:
            SPENT["decode"] += dt
            SPENT["steps"] += 1
        return out

    return wrapper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    args = p.parse_args()
    args.device = "cpu"
    torch.set_grad_enabled(False)
    lm = load(args.model, dtype=args.dtype, device="cpu")
    model, tok = lm.model, lm.tokenizer
    sae = build_sae(args, ArchAdapter(model).d_model, torch.device("cpu"))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    Editor.apply = _timed(Editor.apply)  # type: ignore[method-assign]
    print(f"# {args.model}, SAE {sae.cfg.architecture} d_sae={sae.d_sae} k={sae.cfg.k}, {args.new_tokens} new tokens")
    print(f"{'batch':>5} {'variant':<11} {'run ms':>8} {'prompt-pass edit ms':>20} {'edit ms/step':>13} {'share':>6}")
    for b in (int(s) for s in args.batches.split(",")):
        enc = encode_chats(tok, [PROMPTS[i % len(PROMPTS)] for i in range(b)])
        ids, mask = enc["input_ids"], enc["attention_mask"]
        for name, st in make_steerings(model, sae, enc, ["clamp", "clamp-cols"]).items():
            with st.apply(model):
                decode(model, ids, mask, max_new_tokens=2, eos_ids=[], pad_id=pad)  # warm-up: packing, readers
                SPENT.update(prompt=0.0, decode=0.0, steps=0)
                t0 = time.perf_counter()
                decode(model, ids, mask, max_new_tokens=args.new_tokens, eos_ids=[], pad_id=pad)
                run = time.perf_counter() - t0
            per_step = SPENT["decode"] / max(int(SPENT["steps"]), 1)
            share = (SPENT["prompt"] + SPENT["decode"]) / run
            print(
                f"{b:>5} {name:<11} {run * 1e3:8.0f} {SPENT['prompt'] * 1e3:20.1f} {per_step * 1e3:13.2f} {share:6.1%}"
            )


if __name__ == "__main__":
    main()
