"""Fidelity of an MSE-trained SAE before and after the KL fine-tune, on web text and on chat, and its cost.

One run on the default model (or ``--model``)::

    python bench/finetune_kl.py --data-dir ../shared/data --out runs/bench_ft

harvests ``--n-tokens`` activations at ``--hook`` (corpus + chat conversations with the model's own
responses, template tokens kept), trains a Top-k SAE, measures held-out FVU / dead latents and spliced
CE / KL / ΔCE on web text (the corpus's last texts) and on chat (the model's responses to prompts not in
the harvest), fine-tunes on the KL for ``--ft-tokens`` tokens of windows the harvest never consumed,
measures again, and prints one JSON document (also ``OUT/finetune_kl.json``). Every stage resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saesteer.activations.chat import build_chat_data
from saesteer.activations.harvest import HarvestConfig, harvest
from saesteer.activations.store import ActivationStore
from saesteer.config import atomic_write_json
from saesteer.evaluation.datasets import load_prompts
from saesteer.model.generation import GenerationConfig
from saesteer.model.loading import load
from saesteer.sae.base import TopKSAE
from saesteer.sae.finetune import FinetuneConfig, finetune_kl, windows_after_harvest
from saesteer.sae.io import load_sae, save_sae
from saesteer.sae.metrics import SaeEvalConfig, evaluate_sae
from saesteer.sae.train import TrainConfig, train_from_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--out", default="runs/bench_ft")
    ap.add_argument("--n-tokens", type=int, default=262_144)
    ap.add_argument("--d-sae", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--chats", type=int, default=96, help="conversations mixed into the harvest")
    ap.add_argument("--eval-chats", type=int, default=32, help="other conversations, for the chat fidelity")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="response length of the conversations")
    ap.add_argument("--held-out-tokens", type=int, default=16_384)
    ap.add_argument("--epochs", type=int, default=1, help="SAE training passes over the harvested tokens")
    ap.add_argument("--ft-tokens", type=int, default=32_768)
    ap.add_argument("--ft-lr", type=float, default=1e-4)
    ap.add_argument("--eval-texts", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    lm = load(args.model)
    tok = lm.tokenizer
    prompts = [p.text for p in load_prompts("alpaca", n=args.chats + args.eval_chats, seed=0, data_dir=args.data_dir)]
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=16)
    chat = build_chat_data(lm.model, tok, prompts[: args.chats], out / "chat_train.jsonl", gen)
    chat_eval = build_chat_data(lm.model, tok, prompts[args.chats :], out / "chat_eval.jsonl", gen)
    corpus = str(Path(args.data_dir) / "corpus" / "english_mix_corpus.jsonl.gz")
    hcfg = HarvestConfig(out_dir=str(out / "acts"), hook=args.hook, corpus=[corpus], n_tokens=args.n_tokens,
                         held_out_tokens=args.held_out_tokens, shard_tokens=65_536, batch_size=16, chat_fraction=0.25)  # fmt: skip
    t0 = time.perf_counter()
    harvest(lm.model, tok, hcfg, lm.spec, chat=chat)
    harvest_s = time.perf_counter() - t0
    tcfg = TrainConfig(k=args.k, d_sae=args.d_sae, total_tokens=args.epochs * args.n_tokens, batch_size=2048, lr=2e-3,
                       out_dir=str(out / "sae_mse"), dead_window=args.held_out_tokens, progress=False)  # fmt: skip
    trained = train_from_cache(tcfg, hcfg.out_dir)
    sae = load_sae(trained.sae_dir, dtype="float32")
    assert isinstance(sae, TopKSAE)
    ecfg = SaeEvalConfig(
        n_texts=args.eval_texts, n_chats=args.eval_chats, held_out_tokens=args.held_out_tokens, batch_size=4
    )
    store = ActivationStore(hcfg.out_dir)
    t0 = time.perf_counter()
    before = evaluate_sae(lm.model, tok, sae, ecfg, store=store, corpus=corpus, conversations=chat_eval)
    eval_s = time.perf_counter() - t0
    fcfg = FinetuneConfig(tokens=args.ft_tokens, lr=args.ft_lr, warmup_steps=2, out_dir=str(out / "ft_ckpt"))
    windows = windows_after_harvest(hcfg.out_dir, tok, chat)
    res = finetune_kl(lm.model, sae, windows, fcfg, pad_id=tok.pad_token_id or 0)
    save_sae(res.sae, out / "sae_kl")
    after = evaluate_sae(lm.model, tok, res.sae, ecfg, store=store, corpus=corpus, conversations=chat_eval)
    report = {
        "model": lm.spec, "hook": args.hook, "harvest_tokens": store.n_tokens, "harvest_seconds": harvest_s,
        "sae": {"d_sae": args.d_sae, "k": args.k, "train_tokens_per_s": trained.tokens_per_s},
        "finetune": {"tokens": res.tokens, "seconds": res.seconds, "tokens_per_s": res.tokens_per_s, "lr": args.ft_lr,
                     "kl_first_steps": [e["kl"] for e in res.log[:3]], "kl_last_steps": [e["kl"] for e in res.log[-3:]]},
        "eval_seconds": eval_s, "before": before, "after": after,
        "note": "timings on a shared CPU (other jobs running): indicative only",
    }  # fmt: skip
    atomic_write_json(out / "finetune_kl.json", report)
    for side in ("web", "chat"):
        b, a = before[side], after[side]
        print(f"{side}: ΔCE {b['ce_increase']:.3f} -> {a['ce_increase']:.3f} nats, KL {b['kl_spliced']:.3f} -> "
              f"{a['kl_spliced']:.3f} (n={b['n_predictions']} predictions)")  # fmt: skip
    print(f"fine-tune: {res.tokens:,} tokens in {res.seconds:.0f} s ({res.tokens_per_s:,.0f} tokens/s)")
    print(json.dumps({k: report[k] for k in ("sae", "finetune")}, indent=1))


if __name__ == "__main__":
    main()
