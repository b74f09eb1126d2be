"""The cheap one-pass refusal score vs generation + keyword judge: agreement, AUROC and speed.

For a sample of harmful (HarmBench val) and harmless (Alpaca) prompts, computes the refusal score of
each prompt in one forward pass (both modes, ``logodds`` and ``diff``, from the same logits), then
generates greedily (``--max-new-tokens``) and judges the completions with the keyword judge. Prints,
per mode, the AUROC of the score against the judge's verdicts and the agreement at the best threshold
(fitted on the same prompts: an optimistic number; use it to compare modes and word lists), plus the
time per prompt of the score and of generation and their ratio (measured in the same run).

    python bench/refusal_score.py                       # default model, 40 + 40 prompts, 24 new tokens
    python bench/refusal_score.py --n 80 --harmless jbb:benign
"""

from __future__ import annotations

import argparse
import time

import torch

from saesteer.evaluation.datasets import load_prompts
from saesteer.evaluation.judges import KeywordJudge
from saesteer.features.refusal_score import RefusalTokens, calibrate_score, last_logits, length_batches
from saesteer.model.generation import GenerationConfig, encode_chats, generate
from saesteer.model.loading import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--harmful", default="harmbench:val")
    ap.add_argument("--harmless", default="alpaca")
    ap.add_argument("--n", type=int, default=40, help="prompts per side")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    lm = load(args.model)
    tok, model = lm.tokenizer, lm.model
    harm = [p.text for p in load_prompts(args.harmful, n=args.n, seed=args.seed)]
    safe = [p.text for p in load_prompts(args.harmless, n=args.n, seed=args.seed)]
    prompts = harm + safe
    modes = {m: RefusalTokens.from_words(tok, mode=m) for m in ("logodds", "diff")}
    scores = {m: torch.empty(len(prompts)) for m in modes}
    t0 = time.perf_counter()
    with torch.no_grad():
        for idx in length_batches([len(p) for p in prompts], args.batch_size):
            enc = encode_chats(tok, [prompts[i] for i in idx])
            logits = last_logits(model, enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device))
            for m, rt in modes.items():
                scores[m][idx] = rt.score(logits).cpu()
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = generate(
        model, tok, prompts, GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    )
    t_gen = time.perf_counter() - t0
    refused = KeywordJudge().judge(prompts, outs)
    k_h, k_s = sum(refused[: len(harm)]), sum(refused[len(harm) :])
    print(
        f"model {lm.spec} ({lm.dtype}); {len(harm)} {args.harmful} + {len(safe)} {args.harmless}; "
        f"{args.max_new_tokens} new tokens"
    )
    print(f"keyword judge: harmful refused {k_h}/{len(harm)}, harmless refused {k_s}/{len(safe)}")
    for m in modes:
        c = calibrate_score(scores[m], refused)
        print(f"score {m:8s}: AUROC {c.auroc:.3f}; agreement {c.agreement:.1%} at threshold {c.threshold}")
        # where the two disagree
        wrong = [i for i in range(len(prompts)) if bool(c.predict(scores[m][i : i + 1])[0]) != refused[i]]
        for i in wrong[:4]:
            print(
                f"    disagree ({'refused' if refused[i] else 'complied'}, score {float(scores[m][i]):+.2f}): "
                f"{outs[i][:80]!r}"
            )
    n = len(prompts)
    print(
        f"time per prompt: score {t_score / n * 1000:.0f} ms, generation {t_gen / n * 1000:.0f} ms; "
        f"generation / score = {t_gen / t_score:.1f}x"
    )


if __name__ == "__main__":
    main()
