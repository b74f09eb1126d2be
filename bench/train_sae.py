"""Training throughput of saesteer's Top-k SAE versus SAELens and EleutherAI sparsify, same config, one run.

Run it in the bench environment (sae-lens and eai-sparsify installed, pinned to the same torch)::

    python -m venv .venv-bench && . .venv-bench/bin/activate
    pip install torch==2.13.0 && pip install -c bench/constraints.txt -r bench/requirements.txt
    pip install --no-deps -e .
    python bench/train_sae.py                 # CPU, random activations
    python bench/train_sae.py --device cuda   # on a GPU
    python bench/train_sae.py --acts runs/acts  # harvested activations instead of random ones

Every implementation trains the same Top-k SAE (d_in 896, 16,384 latents, k 32, batch 4,096, AuxK on,
Adam, bf16 autocast) on the same batches; latents that did not fire in the last ``--dead-after`` steps
count as dead, so the AuxK path runs in all three. Each gets ``--warmup`` untimed steps, then ``--steps``
timed ones. Prints tokens/s per implementation and ``vs sae-lens: N.Nx`` / ``vs sparsify: N.Nx``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch


def make_batches(args: argparse.Namespace) -> list[torch.Tensor]:
    n = args.warmup + args.steps
    if args.acts:
        from saesteer.activations.store import ActivationStore

        store = ActivationStore(args.acts)
        it = store.batches(args.batch, shuffle=True, seed=0)
        out = [next(it).float() for _ in range(n)]
        args.d_in = out[0].shape[1]
        return out
    g = torch.Generator().manual_seed(0)
    scales = torch.rand(args.d_in, generator=g) * 2 + 0.2  # anisotropic, offset: residual-stream-like
    offset = torch.randn(args.d_in, generator=g)
    return [torch.randn(args.batch, args.d_in, generator=g) * scales + offset for _ in range(n)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step: Callable[[torch.Tensor], Any], batches: list[torch.Tensor], args: argparse.Namespace) -> float:
    """Tokens/s over the timed steps (after the warmup steps)."""
    batches = [b.to(args.device) for b in batches]
    for b in batches[: args.warmup]:
        step(b)
    _sync(args.device)
    t0 = time.perf_counter()
    for b in batches[args.warmup :]:
        step(b)
    _sync(args.device)
    return args.steps * args.batch / (time.perf_counter() - t0)


def bench_saesteer(batches: list[torch.Tensor], args: argparse.Namespace) -> float:
    from saesteer.sae.trainer import TopKTrainer

    tr = TopKTrainer(
        args.d_in,
        args.d_sae,
        args.k,
        lr=args.lr,
        warmup_steps=0,
        decay_frac=0.0,
        total_steps=10**9,
        auxk_alpha=1 / 32,
        k_aux=None,
        dead_tokens=args.dead_after * args.batch,
        compute_dtype=torch.bfloat16,
        device=torch.device(args.device),
        seed=0,
    )
    tr.init_from_data(batches[0], "mean")
    return timed(tr.train_step, batches, args)


def bench_saelens(batches: list[torch.Tensor], args: argparse.Namespace) -> float:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=args.d_in, d_sae=args.d_sae, k=args.k, device=args.device, aux_loss_coefficient=1 / 32
        )
    )
    cfg = SAETrainerConfig(
        total_training_samples=10**9,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        lr_end=args.lr / 10,
        device=args.device,
        autocast=True,
        dead_feature_window=args.dead_after - 1,
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))

    def step(b: torch.Tensor) -> None:
        trainer._train_step(sae, b)
        trainer.n_training_steps += 1

    return timed(step, batches, args)


def bench_sparsify(batches: list[torch.Tensor], args: argparse.Namespace) -> float:
    from sparsify import SparseCoder, SparseCoderConfig

    dev = torch.device(args.device)
    sae = SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k), device=dev)
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    since_fired = torch.zeros(args.d_sae, dtype=torch.long, device=dev)
    # sparsify autocasts its forward to bf16 on CUDA only; give it the same bf16 autocast on CPU
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dev.type == "cpu" else contextlib.nullcontext()
    first = [True]

    def step(b: torch.Tensor) -> None:
        if first[0]:  # sparsify's trainer: b_dec = batch mean on the first step
            sae.b_dec.data = b.mean(0).to(sae.dtype)
            first[0] = False
        sae.set_decoder_norm_to_unit_norm()
        with autocast:
            out = sae(b, dead_mask=since_fired > (args.dead_after * args.batch - 1))
        loss = out.fvu + (1 / 32) * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(b.shape[0])
            since_fired[out.latent_indices.flatten()] = 0

    return timed(step, batches, args)


IMPLS = {"saesteer": bench_saesteer, "sae-lens": bench_saelens, "sparsify": bench_sparsify}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d-in", type=int, default=896)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--dead-after", type=int, default=1, help="steps without firing after which a latent is dead")
    p.add_argument("--acts", help="activation cache folder to read batches from (default: random activations)")
    p.add_argument("--only", nargs="+", choices=sorted(IMPLS), help="run only these implementations")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    batches = make_batches(args)
    print(
        f"device {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}; d_in {args.d_in}, "
        f"d_sae {args.d_sae}, k {args.k}, batch {args.batch}, AuxK on, {args.warmup}+{args.steps} steps"
    )
    rates: dict[str, float] = {}
    for name in args.only or list(IMPLS):
        torch.manual_seed(0)
        try:
            rates[name] = IMPLS[name](batches, args)
        except ImportError as exc:
            print(f"{name:>9}: not installed ({exc})")
            continue
        print(f"{name:>9}: {rates[name]:9,.0f} tokens/s")
    if "saesteer" in rates:
        for other in ("sae-lens", "sparsify"):
            if other in rates:
                print(f"vs {other}: {rates['saesteer'] / rates[other]:.1f}x")


if __name__ == "__main__":
    main()
