"""Top-k SAE training: it learns, folds the input scale, resumes exactly, and stops cleanly on bad data."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.sae.checkpoint import STATE_FILE, list_checkpoints, load_latest
from saesteer.sae.data_init import geometric_median, init_b_dec
from saesteer.sae.io import load_sae
from saesteer.sae.train import TrainConfig, make_trainer, train_sae
from tests.sae.conftest import SparseSource


def small_cfg(out: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        k=4,
        d_sae=256,
        batch_size=128,
        total_tokens=128 * 12,
        lr=3e-3,
        warmup_steps=2,
        dead_tokens=128 * 4,
        checkpoint_every=4,
        out_dir=str(out),
        progress=False,
        log_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


class Killed(Exception):
    pass


def test_training_learns_and_keeps_decoder_unit_norm(tmp_path: Path, source: SparseSource) -> None:
    cfg = small_cfg(tmp_path, total_tokens=128 * 150, warmup_steps=10, checkpoint_every=1000, lr=1e-2)
    res = train_sae(cfg, source.batches, source.d, hook_name="blocks.2.hook_resid_post", model_name="tiny")
    assert res.steps == 150 and res.tokens == 150 * 128
    first, last = res.log[0], res.log[-1]
    assert last["fvu"] < 0.25 < first["fvu"]
    assert last["l0"] == pytest.approx(4.0)
    torch.testing.assert_close(res.sae.W_dec.norm(dim=1), torch.ones(256))
    saved = load_sae(res.sae_dir)
    assert saved.cfg.hook_name == "blocks.2.hook_resid_post" and saved.cfg.k == 4
    x = source.held_out(1024)
    fvu = (x - saved(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu < 0.3  # the exported SAE works on raw (unscaled) activations
    assert (tmp_path / "train_log.jsonl").read_text().count("\n") == len(res.log)


def test_exported_sae_folds_the_input_scale(tmp_path: Path, source: SparseSource) -> None:
    trainer = make_trainer(small_cfg(tmp_path, compute_dtype="fp32"), source.d)
    first = next(source.batches())
    trainer.init_from_data(first, "mean")
    assert (first * trainer.scale).norm(dim=1).mean().item() == pytest.approx(math.sqrt(source.d), rel=1e-4)
    torch.testing.assert_close(trainer.b_dec.detach(), first.mean(0) * trainer.scale)
    for batch in [next(source.batches(s)) for s in range(3)]:
        trainer.train_step(batch)
    sae = trainer.to_sae()
    x = source.held_out(256)
    xs = x * trainer.scale
    with torch.no_grad():
        out = trainer.compute(xs, None)
        recon = torch.nn.functional.embedding_bag(out.idx, trainer.W_dec, per_sample_weights=out.vals, mode="sum")
        recon_scaled = recon + trainer.b_dec
    torch.testing.assert_close(sae(x) * trainer.scale, recon_scaled, rtol=1e-4, atol=1e-4)


def test_geometric_median_resists_outliers() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g) * 0.1 + 3.0
    x[:20] = 1000.0  # 10% far outliers drag the mean, not the median
    gm = geometric_median(x)
    assert (gm - 3.0).abs().max() < 0.1
    assert (init_b_dec(x, "mean") - 3.0).abs().max() > 50
    with pytest.raises(SaesteerError, match="b_dec_init"):
        init_b_dec(x, "median-ish")


def test_lr_schedule_warmup_constant_decay(tmp_path: Path) -> None:
    tr = make_trainer(small_cfg(tmp_path, total_tokens=128 * 100, warmup_steps=10, decay_frac=0.2, lr=1.0), 8)
    assert tr.lr_at(0) == pytest.approx(0.1) and tr.lr_at(9) == pytest.approx(1.0)
    assert tr.lr_at(50) == 1.0 and tr.lr_at(80) == pytest.approx(1.0) and tr.lr_at(90) == pytest.approx(0.5)
    assert tr.lr_at(99) == pytest.approx(0.05)


@pytest.mark.parametrize("compute_dtype", ["bf16", "fp32"])
def test_resume_after_kill_equals_a_straight_run(tmp_path: Path, source: SparseSource, compute_dtype: str) -> None:
    straight = train_sae(small_cfg(tmp_path / "a", compute_dtype=compute_dtype), source.batches, source.d)

    def kill_at_6(trainer: Any, entry: dict[str, Any]) -> None:
        if trainer.step == 6:
            raise Killed

    cfg_b = small_cfg(tmp_path / "b", compute_dtype=compute_dtype)
    with pytest.raises(Killed):
        train_sae(cfg_b, source.batches, source.d, on_step=kill_at_6)
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step_00000004"]
    seen: list[int] = []

    def record(trainer: Any, entry: dict[str, Any]) -> None:
        seen.append(trainer.step)

    resumed = train_sae(cfg_b, source.batches, source.d, on_step=record)
    assert seen == list(range(5, 13))  # steps 5 and 6 are redone, at most one checkpoint interval lost
    for name, p in straight.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], p), name
    assert [e["fvu"] for e in resumed.log] == [e["fvu"] for e in straight.log]


def test_nan_batch_stops_with_message_and_keeps_last_checkpoint(tmp_path: Path, source: SparseSource) -> None:
    def poisoned(start: int) -> Iterator[torch.Tensor]:
        for i, b in enumerate(source.batches(start), start=start):
            if i == 6:
                b = b.clone()
                b[3, 1] = float("nan")
            yield b

    cfg = small_cfg(tmp_path)
    with pytest.raises(SaesteerError, match="step 6 holds NaN or inf"):
        train_sae(cfg, poisoned, source.d)
    found = load_latest(tmp_path / "checkpoints")
    assert found is not None and found[1]["step"] == 4
    res = train_sae(cfg, source.batches, source.d)  # clean data: resumes from step 4 and finishes
    assert res.steps == 12


def test_corrupt_checkpoint_falls_back_then_errors(
    tmp_path: Path, source: SparseSource, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = small_cfg(tmp_path, total_tokens=128 * 8)
    train_sae(cfg, source.batches, source.d)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000008", "step_00000004"]
    blob = bytearray((ckpts[0] / STATE_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (ckpts[0] / STATE_FILE).write_bytes(bytes(blob))
    found = load_latest(tmp_path / "checkpoints")
    assert found is not None and found[1]["step"] == 4
    assert "corrupt" in capsys.readouterr().err
    (ckpts[1] / "meta.json").write_text("{")
    with pytest.raises(SaesteerError, match="every checkpoint .* is corrupt"):
        train_sae(cfg, source.batches, source.d)


def test_stale_temp_checkpoint_is_ignored(tmp_path: Path, source: SparseSource) -> None:
    """A run killed while writing a checkpoint leaves only a hidden temp folder, never a half checkpoint."""
    stale = tmp_path / "checkpoints" / ".tmp-step_00000004-abc"
    stale.mkdir(parents=True)
    (stale / STATE_FILE).write_bytes(b"half written")
    assert list_checkpoints(tmp_path / "checkpoints") == []
    train_sae(small_cfg(tmp_path, total_tokens=128 * 4), source.batches, source.d)
    assert not stale.exists()


def test_resume_with_another_config_is_refused(tmp_path: Path, source: SparseSource) -> None:
    train_sae(small_cfg(tmp_path, total_tokens=128 * 4), source.batches, source.d)
    with pytest.raises(SaesteerError, match="different run .*k: checkpoint 4 vs now 8"):
        train_sae(small_cfg(tmp_path, total_tokens=128 * 4, k=8), source.batches, source.d)
    res = train_sae(small_cfg(tmp_path, total_tokens=128 * 4, k=8, resume=False), source.batches, source.d)
    assert res.sae.cfg.k == 8


def test_bad_inputs(tmp_path: Path, source: SparseSource) -> None:
    with pytest.raises(SaesteerError, match="no batches"):
        train_sae(small_cfg(tmp_path), lambda s: iter(()), source.d)
    with pytest.raises(SaesteerError, match="width 32 but d_in is 48"):
        train_sae(small_cfg(tmp_path), source.batches, 48)
    with pytest.raises(SaesteerError, match="at least one batch"):
        small_cfg(tmp_path, total_tokens=10).validate()


def test_short_source_stops_early_with_warning(
    tmp_path: Path, source: SparseSource, capsys: pytest.CaptureFixture[str]
) -> None:
    def five(start: int) -> Iterator[torch.Tensor]:
        for _, b in zip(range(start, 5), source.batches(start), strict=False):
            yield b

    res = train_sae(small_cfg(tmp_path), five, source.d)
    assert res.steps == 5
    assert "ran out after 5 of 12 steps" in capsys.readouterr().err
