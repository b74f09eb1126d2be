"""The machine's measured speed: the reference beside which every wall time and throughput is read.

Machines of the same kind differ 2-3x, so a time budget only means something next to a measurement made in
the same run: the best time of a bf16 4096x4096 matmul (``2 * 4096^3`` FLOPs) gives GFLOP/s, and the best
time of a 256 MiB copy (read + write) gives the memory bandwidth in GB/s.
"""

from __future__ import annotations

import time

import torch


def machine_limits(seconds: float = 2.0) -> tuple[float, float]:
    """(bf16 matmul GFLOP/s, memory bandwidth GB/s) measured now, each the best of repeated runs for ``seconds``."""
    a = torch.randn(4096, 4096).to(torch.bfloat16)
    b = torch.randn(4096, 4096).to(torch.bfloat16)
    torch.mm(a, b)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    gflops = 2 * 4096**3 / best / 1e9
    src = torch.ones(256 * 2**20 // 4)  # 256 MiB, well beyond the caches
    dst = torch.empty_like(src)
    dst.copy_(src)
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return gflops, 2 * src.numel() * 4 / best / 1e9  # read + write
