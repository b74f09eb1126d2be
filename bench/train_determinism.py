"""What a repeatable SAE training run costs: bf16 autocast vs fp32, 1 vs 2 threads, each run twice.

For one seed, the trained weights can differ between runs through the encoder's dtype (bf16 autocast
rounds, and its kernels may reduce in another order) and through the CPU thread count (the order of
the matmul's partial sums). This trains saesteer's Top-k SAE (d_in 896, 16,384 latents, k 32, batch
4,096, AuxK on) for ``--steps`` steps on the same batches under each setting, twice, and prints:

- tokens/s per setting and its ratio to bf16 on all threads (the default);
- max |W_dec difference| between the two runs of a setting (0: repeatable on this machine);
- max |W_dec difference| between 1 and 2 threads of one dtype (0: independent of the thread count).

    python bench/train_determinism.py [--steps 20] [--acts runs/study/harvest-*]
"""

from __future__ import annotations

import argparse
import time

import torch

from saesteer.sae.trainer import TopKTrainer


def batches(args: argparse.Namespace) -> list[torch.Tensor]:
    if args.acts:
        from saesteer.activations.store import ActivationStore

        it = ActivationStore(args.acts).batches(args.batch, shuffle=True, seed=0)
        return [next(it).float() for _ in range(args.steps)]
    g = torch.Generator().manual_seed(0)
    scales, offset = torch.rand(896, generator=g) * 2 + 0.2, torch.randn(896, generator=g)
    return [torch.randn(args.batch, 896, generator=g) * scales + offset for _ in range(args.steps)]


def train(
    data: list[torch.Tensor], dtype: torch.dtype, threads: int, args: argparse.Namespace
) -> tuple[float, torch.Tensor]:
    """(tokens/s over all but the first step, final W_dec) of one run."""
    torch.set_num_threads(threads)
    tr = TopKTrainer(
        data[0].shape[1], args.d_sae, args.k, lr=2e-4, warmup_steps=0, decay_frac=0.0, total_steps=10**9,
        auxk_alpha=1 / 32, k_aux=None, dead_tokens=4 * args.batch, compute_dtype=dtype,
        device=torch.device("cpu"), seed=0,
    )  # fmt: skip
    tr.init_from_data(data[0], "mean")
    tr.train_step(data[0])
    t0 = time.perf_counter()
    for b in data[1:]:
        tr.train_step(b)
    rate = (len(data) - 1) * args.batch / (time.perf_counter() - t0)
    return rate, tr.W_dec.detach().clone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d-sae", type=int, default=16_384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--acts", default=None, help="harvested activations instead of random ones")
    args = ap.parse_args()
    data = batches(args)
    most = torch.get_num_threads()
    runs: dict[tuple[str, int], list[tuple[float, torch.Tensor]]] = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for threads in sorted({1, most}, reverse=True):
            runs[name, threads] = [train(data, dtype, threads, args) for _ in range(2)]
    torch.set_num_threads(most)
    base = runs["bf16", most][0][0]
    print(f"{args.steps} steps of batch {args.batch}, {args.d_sae} latents, k {args.k}, {most} threads available")
    print(f"{'setting':<16}{'tokens/s':>10}{'vs bf16':>9}{'run-to-run max|dW|':>20}")
    for (name, threads), (a, b) in runs.items():
        diff = (a[1] - b[1]).abs().max().item()
        print(f"{name + f', {threads} thr':<16}{a[0]:>10.0f}{a[0] / base:>8.2f}x{diff:>20.3g}")
    for name in ("bf16", "fp32"):
        if (name, 1) in runs and (name, most) in runs and most != 1:
            diff = (runs[name, 1][0][1] - runs[name, most][0][1]).abs().max().item()
            print(f"{name}: 1 vs {most} threads, max|dW| {diff:.3g}")


if __name__ == "__main__":
    main()
