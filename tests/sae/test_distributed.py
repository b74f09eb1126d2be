"""Data-parallel training with torch.distributed (gloo, 2 CPU processes) keeps the replicas identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from saesteer.sae.train import TrainConfig, make_trainer
from tests.sae.conftest import SparseSource


def _worker(rank: int, world: int, rdv: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        src = SparseSource(batch=64, seed=rank)  # each rank sees different data
        cfg = TrainConfig(
            k=4,
            d_sae=128,
            batch_size=128,
            total_tokens=128 * 4,
            lr=3e-3,
            warmup_steps=1,
            dead_tokens=128,
            compute_dtype="fp32",
            out_dir=out,
            progress=False,
        )
        trainer = make_trainer(cfg, src.d)
        assert trainer.world == world
        batches = src.batches()
        trainer.init_from_data(next(batches), "mean")
        for _ in range(4):
            trainer.train_step(next(batches))
        state = {k: v.clone() for k, v in trainer.state_tensors().items() if not k.startswith("rng")}
        state["scale"] = torch.tensor(trainer.scale)
        torch.save(state, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_training_keeps_replicas_in_sync(tmp_path: Path) -> None:
    # built before forking: the first optimizer imports torch._dynamo (seconds), which the children then share
    fresh = make_trainer(TrainConfig(k=4, d_sae=128, batch_size=128, total_tokens=512, out_dir=str(tmp_path)), 32)
    mp.start_processes(
        _worker, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["tokens_since_fired"].max() <= 4 * 128  # counted over both ranks' tokens (2 x 64 per step)
    assert not torch.equal(a["W_dec"], fresh.W_dec.detach())  # and they did train
