"""torch.distributed plumbing shared by the data-parallel stages (harvest, SAE training).

Processes are started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous); nothing here spawns processes. :func:`distributed` opens the process group (gloo on CPU,
nccl on GPU) when ``WORLD_SIZE > 1`` and always closes what it opened. Without torchrun every helper is
a no-op for one process (rank 0 of 1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(rank, world size) of an initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def local_device(device: str) -> str:
    """The device this process should use: ``auto`` becomes ``cuda:LOCAL_RANK`` under torchrun with CUDA."""
    if device == "auto" and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if device == "auto":
        return "cpu"
    return device


def backend_device() -> torch.device:
    """Where collective tensors must live: the local GPU for nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextmanager
def distributed(device: str = "auto") -> Iterator[tuple[int, int]]:
    """Open the torchrun process group for the ``with`` block; yields (rank, world).

    gloo when ``device`` resolves to the CPU, nccl on CUDA. A group opened by the caller is reused and
    left open; one opened here is destroyed on exit, after a barrier on success.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        yield rank_world()
        return
    use_cuda = local_device(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield rank_world()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def gather_rows(x: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``x`` [n_r, ...] (n_r may differ), in rank order; ``[x]`` for one process."""
    rank, world = rank_world()
    if world == 1:
        return [x]
    dev = backend_device()
    dtype = x.dtype
    if dtype in (torch.bfloat16, torch.float16):  # sent as raw 16-bit words
        x = x.view(torch.int16)
    if dev.type == "cpu" and x.dtype in (torch.int16, torch.uint8, torch.bool):
        x = x.to(torch.int32)  # gloo's all_gather takes no 8- or 16-bit integers
    n = torch.tensor([x.shape[0]], device=dev)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    width = max(1, int(max(c.item() for c in counts)))  # empty tensors are awkward for some backends
    padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=dev)
    padded[: x.shape[0]] = x.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = [p[: int(c.item())].cpu() for p, c in zip(parts, counts, strict=True)]
    if dtype in (torch.bfloat16, torch.float16):
        return [o.to(torch.int16).view(dtype) for o in out]
    return [o.to(dtype) for o in out]


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every process."""
    if rank_world()[1] == 1:
        return flag
    t = torch.tensor([int(flag)], device=backend_device())
    dist.broadcast(t, 0)
    return bool(t.item())
