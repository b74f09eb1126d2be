"""The whole study on a tiny random model with the real tokenizer: every stage runs, caches and resumes."""

import json
from pathlib import Path

import pytest

from saesteer.evaluation.datasets import data_dir
from saesteer.model.loading import load
from saesteer.study.config import StudyConfig
from saesteer.study.run import run_study
from tests.conftest import tiny_model


@pytest.fixture
def tiny_lm(tmp_path: Path, qwen_tokenizer):
    model = tiny_model("qwen2", vocab_size=len(qwen_tokenizer))
    model.config.num_hidden_layers = 4
    model.save_pretrained(tmp_path / "tiny")
    qwen_tokenizer.save_pretrained(tmp_path / "tiny")
    return load(str(tmp_path / "tiny"), dtype="fp32", device="cpu")


@pytest.mark.parametrize("with_data", [True, False], ids=["data-dir", "built-in"])
def test_reproduce_tiny_end_to_end_and_resume(tmp_path: Path, tiny_lm, with_data: bool, monkeypatch) -> None:
    root = data_dir()
    if with_data and root is None:
        pytest.skip("no data directory")
    if not with_data:
        monkeypatch.setenv("SAESTEER_DATA_DIR", "none")
    cfg = StudyConfig(
        profile="tiny",
        out_dir=str(tmp_path / "run"),
        hook="blocks.2.hook_resid_post",
        d_sae=128,
        k=8,
        n_tokens=20_000,
        data_dir=str(root) if with_data else "none",
        clamp_multiples=[2.0],
        batch_size=8,
    )
    report = run_study(tiny_lm, cfg)
    md = (report / "report.md").read_text()
    assert {"features.md", "sae_metrics.json", "sae_train_summary.json", "harvest_manifest.json"} <= {
        p.name for p in report.iterdir()
    }
    assert "baseline" in md and "unsafe_refusal" in md
    results = json.loads((Path(cfg.out_dir).glob("sweep-*/results.json").__next__()).read_text())
    rows = results["rows"] if isinstance(results, dict) else results
    metrics = {r["metric"] for r in rows}
    assert {"unsafe_refusal", "safe_refusal", "mmlu", "gsm8k"} <= metrics
    assert ("multiturn_asr" in metrics) == with_data  # FRACTURED-SORRY-Bench has no built-in stand-in
    assert all(r["n"] > 0 for r in rows)
    out = Path(cfg.out_dir)
    # conditional steering gates on a fitted harm probe when dev data exist, else on the direction
    assert bool(list(out.glob("gate_probe-*/probe.safetensors"))) == with_data
    gates = {r["condition"] for r in rows if r["kind"] == "conditional"}
    assert gates
    manifest = json.loads(next(out.glob("harvest-*/manifest.json")).read_text())
    assert all("n_chat" in s for s in manifest["shards"]) and sum(s["n_chat"] for s in manifest["shards"]) > 0
    metrics_json = json.loads(next(out.glob("sae_metrics-*/sae_metrics.json")).read_text())
    assert metrics_json["spliced"]["spliced_frac"] <= metrics_json["spliced_all_positions"]["spliced_frac"] == 1.0
    # a second run is served from the stage caches
    stamps = {p: p.stat().st_mtime_ns for p in Path(cfg.out_dir).glob("*/stage.json")}
    run_study(tiny_lm, cfg)
    assert {p: p.stat().st_mtime_ns for p in Path(cfg.out_dir).glob("*/stage.json")} == stamps
