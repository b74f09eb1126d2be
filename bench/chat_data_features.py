"""Does chat data change which refusal features an SAE learns?

Compares two feature searches (``saesteer find-features`` outputs) on SAEs trained on the same harvest,
one on every token (corpus + chat windows with the model's own refusals) and one on its corpus tokens
only (``saesteer train-sae --tokens-from corpus``). Prints, for each SAE, how many latents fire on the
model's refusal tokens, the screen results of the best feature, and how well each SAE's refusal
candidates are matched by a latent of the other SAE (decoder cosine).

    python bench/chat_data_features.py --with-chat runs/feat-chat --corpus-only runs/feat-corpus \
        --seed-twin runs/sae-seed1/sae
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from saesteer.sae.io import load_sae

MATCH = 0.7  # decoder cosine above which two latents count as the same feature


def _load(folder: str) -> tuple[dict[str, Any], torch.Tensor]:
    report = json.loads((Path(folder) / "features.json").read_text())
    sae = load_sae(report["sae"]["path"], dtype="float32")
    w = sae.W_dec.detach().float()
    return report, w / w.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def _top(report: dict[str, Any], ranker: str, n: int) -> list[int]:
    if ranker == "paper":
        return [int(c["feature"]) for c in report["paper"]["candidates"][:n]]
    return [int(c["feature"]) for c in report["rankers"][ranker]["top"][:n]]


def _summary(name: str, report: dict[str, Any]) -> None:
    chosen = report.get("chosen") or {}
    cheap = report["screen"]["cheap"]
    positive = sum(1 for c in cheap if c.get("objective", 0) > 0)
    print(f"{name}: SAE {report['sae']['path']}")
    print(
        f"  latents active on >= {report['paper']['min_tokens']} of {report['paper']['n_refusal_tokens']} "
        f"refusal tokens: {report['paper']['n_candidates']}"
    )
    print(f"  cheap screen: {positive} of {len(cheap)} screened features raise the refusal score more on harmful")
    if chosen.get("harmful"):
        h, s, g = chosen["harmful"], chosen["harmless"], chosen["gain"]
        print(
            f"  chosen feature {chosen['feature']} at clamp {chosen['value']:.2f}: harmful refusal "
            f"{h['rate']:.0%} (n={h['n']}), harmless {s['rate']:.0%} (n={s['n']}), "
            f"gain +{g['d'] * 100:.1f} pts [{g['lo'] * 100:.1f}, {g['hi'] * 100:.1f}]"
        )
    else:
        print(f"  chosen feature {chosen.get('feature')} (did not pass the screen)")


def _matched(a: list[int], wa: torch.Tensor, wb: torch.Tensor) -> tuple[list[float], float]:
    if not a:
        return [], float("nan")
    cos = (wa[a] @ wb.T).max(dim=1).values
    return [round(float(c), 3) for c in cos], float((cos > MATCH).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--with-chat", required=True, help="find-features folder of the SAE trained with chat tokens")
    ap.add_argument("--corpus-only", required=True, help="find-features folder of the corpus-only SAE")
    ap.add_argument("--top", type=int, default=20, help="candidates per ranker compared across the SAEs")
    ap.add_argument(
        "--seed-twin",
        metavar="SAE_DIR",
        help="an SAE trained on the same tokens as --with-chat but with another seed: the match rate two SAEs "
        "reach by chance, the yardstick for the chat-vs-corpus difference",
    )
    args = ap.parse_args()
    chat, w_chat = _load(args.with_chat)
    corp, w_corp = _load(args.corpus_only)
    _summary("with chat", chat)
    _summary("corpus only", corp)
    for ranker in ("paper", "contrastive"):
        for name, (ra, wa, wb) in {
            "with chat -> corpus only": (chat, w_chat, w_corp),
            "corpus only -> with chat": (corp, w_corp, w_chat),
        }.items():
            cos, frac = _matched(_top(ra, ranker, args.top), wa, wb)
            print(
                f"{ranker} top {len(cos)} ({name}): {frac:.0%} have a latent with decoder cosine > {MATCH} "
                f"in the other SAE; median best cosine {sorted(cos)[len(cos) // 2] if cos else float('nan'):.2f}"
            )
    if args.seed_twin:
        twin = load_sae(args.seed_twin, dtype="float32").W_dec.detach().float()
        twin = twin / twin.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        for ranker in ("paper", "contrastive"):
            cos, frac = _matched(_top(chat, ranker, args.top), w_chat, twin)
            print(
                f"{ranker} top {len(cos)} (with chat -> same tokens, other seed): {frac:.0%} have a latent with "
                f"decoder cosine > {MATCH}; median best cosine {sorted(cos)[len(cos) // 2] if cos else float('nan'):.2f}"
            )
    for name, (ra, wa, wb) in {"with chat": (chat, w_chat, w_corp), "corpus only": (corp, w_corp, w_chat)}.items():
        f = (ra.get("chosen") or {}).get("feature")
        if f is not None:
            cos, _ = _matched([int(f)], wa, wb)
            print(f"chosen feature of {name} ({f}): best decoder cosine in the other SAE {cos[0]:.2f}")
    if args.seed_twin:
        f = int((chat.get("chosen") or {}).get("feature", 0))
        cos, _ = _matched([f], w_chat, twin)
        print(f"chosen feature of with chat ({f}): best decoder cosine in the other-seed SAE {cos[0]:.2f}")


if __name__ == "__main__":
    main()
