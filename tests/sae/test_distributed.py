"""Data-parallel training with torch.distributed (gloo, 2 CPU processes) keeps the replicas identical."""

from __future__ import annotations

import json
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


def _no_resume_worker(rank: int, world: int, rdv: str, out: str) -> None:
    import shutil
    import time

    import saesteer.sae.train as train_mod

    torch.set_num_threads(1)
    real = shutil.rmtree

    def spy(path, *args, **kwargs):  # records who deletes; rank 0 is slow, so a racing rank would show up
        with open(f"{out}/deleted_by_rank{rank}", "a") as fh:
            fh.write(f"{path}\n")
        if rank == 0:
            time.sleep(0.5)
        real(path, *args, **kwargs)

    shutil.rmtree = spy
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    try:
        src = SparseSource(batch=64, seed=rank)
        cfg = _small_cfg(out, resume=False)
        train_mod.train_sae(cfg, src.batches, src.d)
    finally:
        dist.destroy_process_group()


def _small_cfg(out: str, **kw) -> TrainConfig:
    base = dict(k=4, d_sae=128, batch_size=128, total_tokens=128 * 4, lr=3e-3, warmup_steps=1, dead_tokens=128)
    base.update(compute_dtype="fp32", out_dir=out, progress=False, checkpoint_every=1, keep_checkpoints=5, **kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_no_resume_under_two_processes_only_rank0_deletes(tmp_path: Path) -> None:
    from saesteer.sae.checkpoint import list_checkpoints
    from saesteer.sae.train import train_sae

    src = SparseSource(batch=128)
    train_sae(_small_cfg(str(tmp_path), total_tokens=128 * 3), src.batches, src.d)
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 3
    mp.start_processes(
        _no_resume_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    assert (tmp_path / "deleted_by_rank0").is_file()
    assert not (tmp_path / "deleted_by_rank1").exists()
    # the new run's checkpoints replaced the old ones
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [f"step_{s:08d}" for s in (4, 3, 2, 1)]
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps"] == 4


TORCHRUN_FLAGS = ["--k", "4", "--d-sae", "128", "--batch-size", "128", "--total-tokens", "2560", "--lr", "0.003"]
TORCHRUN_FLAGS += ["--no-progress", "--device", "cpu", "--compute-dtype", "fp32", "--warmup-steps", "2"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_torchrun_train_sae_matches_single_process(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 ... train-sae` (gloo) vs one process on the same cache and flags.

    Tolerance: held-out FVU within 0.02 absolute (the ranks init b_dec / the input scale from rank 0's half of
    the first batch and normalise each half's loss separately, so the runs are close, not identical).
    """
    import os
    import subprocess
    import sys
    import time

    from saesteer.activations.store import ActivationStore
    from saesteer.cli.main import main
    from saesteer.sae.io import load_sae
    from saesteer.sae.metrics import activation_metrics
    from tests.sae.test_cli import make_cache

    acts = make_cache(tmp_path / "acts", n_shards=6)  # 512-token shards: global batches align in both runs
    assert main(["train-sae", "--acts", str(acts), "--out-dir", str(tmp_path / "one"), *TORCHRUN_FLAGS]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "saesteer.cli.main", "train-sae", "--acts", str(acts), "--out-dir", str(tmp_path / "two")]
    t0 = time.perf_counter()
    run = subprocess.run(cmd + TORCHRUN_FLAGS, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert run.returncode == 0, run.stderr[-3000:]
    assert "destroy_process_group" not in run.stderr  # the process group was closed
    assert run.stdout.count("SAE in ") == 1  # rank 0 alone reports

    one = json.loads((tmp_path / "one" / "train_summary.json").read_text())
    two = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["tokens"] == one["tokens"] == 2560 and two["steps"] == one["steps"] == 20
    # throughput counts every token once: tokens / seconds of the training loop, within the process's life
    assert two["tokens_per_s"] * two["seconds"] == pytest.approx(2560, rel=1e-6)
    assert two["seconds"] < wall
    held = ActivationStore(acts).held_out()
    fvu = [activation_metrics(load_sae(tmp_path / r / "sae"), [held])["fvu"] for r in ("one", "two")]
    assert fvu[0] < 0.6 and abs(fvu[0] - fvu[1]) < 0.02, fvu


def _from_cache_worker(rank: int, world: int, port: int, acts: str, out: str) -> None:
    import os

    from saesteer.sae.train import train_from_cache

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    cfg = TrainConfig(k=4, d_sae=128, batch_size=128, total_tokens=1280, lr=3e-3, warmup_steps=2,
                      compute_dtype="fp32", device="cpu", out_dir=out, progress=False)  # fmt: skip
    result = train_from_cache(cfg, acts)
    assert not dist.is_initialized()  # the process group it opened is closed again
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump({"steps": result.steps, "tokens": result.tokens}, fh)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_train_from_cache_opens_and_closes_the_process_group(tmp_path: Path) -> None:
    import socket

    from tests.sae.test_cli import make_cache

    acts = make_cache(tmp_path / "acts", n_shards=6)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    mp.start_processes(_from_cache_worker, args=(2, port, str(acts), str(out)), nprocs=2, join=True,
                       start_method="fork")  # fmt: skip
    for rank in (0, 1):
        assert json.loads((out / f"rank{rank}.json").read_text()) == {"steps": 10, "tokens": 1280}
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["tokens_per_s"] * summary["seconds"] == pytest.approx(1280)
