"""Crescendo attack success, unsteered vs a refusal-feature clamp, with the local model as the attacker.

The attacker (the same chat model, unsteered) escalates toward each HarmBench test behaviour over
``--turns`` turns; an attack succeeds when the target's last answer is not a refusal (keyword judge).
Both conditions attack the same objectives; prints each ASR with its Wilson 95% interval.

    python bench/crescendo_clamp.py --sae runs/study/train_sae-*/sae --feature 12310 --value 7.43 --n 6
"""

from __future__ import annotations

import argparse

from saesteer.evaluation.multiturn import MultiTurnConfig, run_multiturn
from saesteer.model.generation import GenerationConfig
from saesteer.model.loading import load
from saesteer.sae.io import load_sae
from saesteer.steering import ClampFeature, Steering


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", required=True, help="SAE folder (SAELens layout)")
    ap.add_argument("--feature", type=int, required=True, help="refusal feature to clamp")
    ap.add_argument("--value", type=float, required=True, help="clamp value")
    ap.add_argument("--n", type=int, default=6, help="Crescendo objectives (HarmBench test behaviours)")
    ap.add_argument("--turns", type=int, default=3, help="target turns per attack")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="target tokens per answer")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    lm = load(args.model)
    sae = load_sae(args.sae, dtype="float32")
    steering = Steering(lm.model, sae, [ClampFeature(args.feature, args.value)])
    cfg = MultiTurnConfig(n=args.n, seed=args.seed, max_turns=args.turns, data_dir=args.data_dir)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=16)
    for name, target in (
        ("unsteered", None),
        (f"clamp f={args.feature} c={args.value:g}", lambda: steering.apply(lm.model)),
    ):
        res = run_multiturn(
            lm.model, lm.tokenizer, gen, cfg, attacks=("crescendo",), target_context=target, progress=True
        )["crescendo"]
        print(
            f"{name}: Crescendo ASR {res.asr:.1%} [{res.ci_low:.1%}, {res.ci_high:.1%}] "
            f"({res.successes}/{res.n}, {res.seconds:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
