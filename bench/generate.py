"""Decoding throughput: eager Hugging Face ``generate`` vs saesteer's fast path, unsteered and steered.

One process, one model, the same prompts and token counts for every variant (EOS suppressed until
``--new-tokens``), runs interleaved round by round so machine noise hits all alike. For each batch
size it prints tokens/s (prefill included) of

* ``eager``: ``model.generate`` (KV cache, SDPA), as the library ran before the fast path;
* ``fast``: :func:`saesteer.model.decode.decode` (own KV-cache loop, prepacked oneDNN bf16 weights);

each unsteered (``base``) and steered: ``clamp`` (one Top-k SAE feature clamped, exact membership),
``clamp-cols`` (the same clamp reading only the feature's encoder column) and ``gated`` (``clamp``
under a gate that steers about half of the conversations). Then the ratios fast/eager and
steered/unsteered, the greedy token agreement of fast vs eager (bf16: accumulation order may flip
near-ties), and the machine's limit: a bf16 4096^2 matmul's GFLOP/s and a large copy's bandwidth
give a floor on the time per decode step (the larger of FLOPs / GFLOP/s and weight bytes / bandwidth),
and each path's share of the tokens/s that floor allows.

Without ``--sae`` a random Top-k SAE (16,384 latents, k=32) at layer 12 stands in: the cost is the same.

    python bench/generate.py                           # default model, batches 1,16,64, 32 new tokens
    python bench/generate.py --batches 16 --new-tokens 16 --variants base,clamp
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from saesteer.machine import machine_limits
from saesteer.model.adapter import ArchAdapter
from saesteer.model.decode import decode
from saesteer.model.generation import encode_chats, eos_ids
from saesteer.steering import ClampFeature, FeatureScorer, Gate, Steering
from steer_overhead import PROMPTS, build_sae


def step_cost(model: Any, batch: int) -> tuple[float, float]:
    """(FLOPs, weight bytes) of one decode step: every linear layer (lm_head included) once per row."""
    flops = weights = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            flops += 2.0 * batch * m.weight.numel()
            weights += m.weight.numel() * m.weight.element_size()
    return flops, weights


def make_steerings(model: Any, sae: Any, enc: dict[str, torch.Tensor], names: list[str]) -> dict[str, Any]:
    """The steered variants (see the module docstring), built from the batch's own activations."""
    hook = sae.cfg.hook_name
    x = ArchAdapter(model).run_to(hook, enc["input_ids"], enc["attention_mask"]).float()
    real = enc["attention_mask"].bool()
    z = sae.encode(x)
    feat = int(((z > 0) & real.unsqueeze(-1)).sum((0, 1)).argmax())
    value = 4.0 * float(x[real].norm(dim=-1).median())
    scores = sae.pre_acts(x[:, -1])  # the last (real) token: left padding
    scores[:, feat] = -1e9
    gate_feat = int((scores > 0).float().mean(0).sub(0.5).abs().argmin())  # active on about half the prompts
    out: dict[str, Any] = {}
    for n in names:
        if n == "base":
            out[n] = None
        elif n == "clamp":
            out[n] = Steering(model, sae, [ClampFeature(feat, value)])
        elif n == "clamp-cols":
            out[n] = Steering(model, sae, [ClampFeature(feat, value)], topk_exact=False)
        elif n == "gated":
            gate = Gate(FeatureScorer(sae, gate_feat, topk_exact=False), 0.0, hook, reduce="last")
            out[n] = Steering(model, sae, [ClampFeature(feat, value)], gate=gate)
        else:
            raise SystemExit(f"unknown variant {n!r}; use base, clamp, clamp-cols, gated")
    return out


def runner(model: Any, enc: dict[str, torch.Tensor], n: int, pad: int, eos: list[int], path: str) -> Callable[[], Any]:
    if path == "eager":
        kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None)
        return lambda: model.generate(**enc, **kw, pad_token_id=pad, eos_token_id=eos)[:, enc["input_ids"].shape[1] :]
    ids, mask = enc["input_ids"], enc["attention_mask"]
    return lambda: decode(model, ids, mask, max_new_tokens=n, min_new_tokens=n, eos_ids=eos, pad_id=pad)


def bench_batch(model: Any, tok: Any, sae: Any, args: argparse.Namespace, batch: int, limit: Any) -> None:
    enc = encode_chats(tok, [PROMPTS[i % len(PROMPTS)] for i in range(batch)])
    steerings = make_steerings(model, sae, enc, ["base", *[v for v in args.variants.split(",") if v != "base"]])
    pad, eos, n = tok.pad_token_id, eos_ids(model, tok), args.new_tokens
    paths = args.paths.split(",")
    runs = [(p, v) for p in paths for v in steerings]
    times: dict[tuple[str, str], list[float]] = {r: [] for r in runs}
    cpu: dict[tuple[str, str], list[float]] = {r: [] for r in runs}
    tokens: dict[tuple[str, str], torch.Tensor] = {}

    def once(p: str, v: str, n_new: int) -> float:
        st = steerings[v]
        handle = st.attach() if st is not None else None
        try:
            f = runner(model, enc, n_new, pad, eos, p)
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                tokens[(p, v)] = f()
            cpu[(p, v)].append(time.process_time() - c0)
            return time.perf_counter() - t0
        finally:
            if handle is not None:
                handle.remove()

    prefill: dict[tuple[str, str], float] = {}
    for p, v in runs:  # warm-up (packs the weights, builds readers), then the prompt pass + 1 token alone
        once(p, v, 1)
        prefill[(p, v)] = once(p, v, 1)
        cpu[(p, v)].clear()
    for r in range(args.rounds):
        order = runs[r % len(runs) :] + runs[: r % len(runs)]
        for p, v in order:
            times[(p, v)].append(once(p, v, n))
    tps = {rv: batch * n / statistics.median(ts) for rv, ts in times.items()}
    cps = {rv: batch * n / statistics.median(ts) for rv, ts in cpu.items()}
    dec = {rv: batch * (n - 1) / max(statistics.median(ts) - prefill[rv], 1e-9) for rv, ts in times.items()}
    prompt_w = enc["input_ids"].shape[1]
    print(f"\n## batch {batch} (prompt width {prompt_w}, {n} new tokens, {args.rounds} round(s))")
    lim_tps = limit(batch)
    print(
        f"{'path':<6} {'variant':<11} {'tokens/s':>9} {'/base':>6} {'/eager':>7} {'limit share':>11}"
        f" {'tok/cpu-s':>10} {'/base':>6} {'/eager':>7} {'decode tok/s':>12} {'/base':>6} {'/eager':>7}"
    )
    for p, v in runs:
        line = f"{p:<6} {v:<11}"
        for d in (tps, cps, dec):
            vs_eager = f"{d[(p, v)] / d[('eager', v)]:7.2f}" if ("eager", v) in d else "      -"
            share = f" {d[(p, v)] / lim_tps:10.1%}" if d is tps else ""
            line += f" {d[(p, v)]:{12 if d is dec else 9}.1f} {d[(p, v)] / d[(p, 'base')]:6.3f} {vs_eager}{share}"
        print(line)
    if args.rounds > 1:  # each round's steered time against the same round's unsteered one: drift cancels
        print("paired per round (steered tokens/s over the same round's unsteered): median [min, max]")
        for p, v in runs:
            if v != "base":
                q = [b / t for b, t in zip(times[(p, "base")], times[(p, v)], strict=True)]
                print(f"  {p:<6} {v:<11} {statistics.median(q):.3f} [{min(q):.3f}, {max(q):.3f}]")
    if "eager" in paths and "fast" in paths:
        for v in steerings:
            a, b = tokens[("eager", v)], tokens[("fast", v)]
            agree = float((a == b).float().mean())
            rows = float((a == b).all(-1).float().mean())
            print(f"token agreement fast vs eager ({v}): {agree:.1%} of tokens, {rows:.1%} of rows identical")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The model, SAE and workload options the decoding benches share."""
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--sae", help="a trained SAE folder (default: a random Top-k SAE)")
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--new-tokens", type=int, default=32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--paths", default="eager,fast")
    p.add_argument("--variants", default="base,clamp,clamp-cols,gated")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from saesteer.model.loading import load

    lm = load(args.model, dtype=args.dtype, device="cpu")
    model, tok = lm.model, lm.tokenizer
    args.device = "cpu"
    sae = build_sae(args, ArchAdapter(model).d_model, torch.device("cpu"))
    gflops, bw = machine_limits()
    dtype = next(model.parameters()).dtype

    def limit(batch: int) -> float:
        flops, weights = step_cost(model, batch)
        return batch / max(flops / (gflops * 1e9), weights / (bw * 1e9))

    print(
        f"# {args.model} ({dtype}) on cpu, {torch.get_num_threads()} threads; SAE {sae.cfg.architecture} "
        f"d_sae={sae.d_sae} k={sae.cfg.k} at {sae.cfg.hook_name}\n"
        f"# machine: bf16 matmul {gflops:.0f} GFLOP/s, copy bandwidth {bw:.1f} GB/s; decode-step floor at "
        + ", ".join(f"batch {b}: {limit(int(b)):.0f} tok/s" for b in args.batches.split(","))
    )
    for b in args.batches.split(","):
        bench_batch(model, tok, sae, args, int(b), limit)
    print(
        "\n'/base': tokens/s over the same path's unsteered run; '/eager': over eager generate's same variant; "
        "'limit share': tokens/s over the floor the measured matmul rate and bandwidth allow; 'tok/cpu-s': tokens "
        "per second of this process's CPU time (less sensitive to other processes, with --threads 1 above all); "
        "'decode tok/s': the new tokens after the first over the run's time minus a prompt-pass-plus-one-token run. "
        "Ratios on a busy machine are noisy: rerun with --rounds 5 on an idle one and read the paired ratios."
    )


if __name__ == "__main__":
    main()
