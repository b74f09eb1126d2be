"""`torchrun --nproc_per_node 2 ... harvest` (gloo, CPU) writes the shards one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from saesteer.cli.main import main
from tests.activations.test_harvest_split import _write_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_torchrun_harvest_equals_single_process(tmp_path: Path, tiny_qwen_chat) -> None:
    model, tok = tiny_qwen_chat
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    corpus = _write_corpus(tmp_path / "corpus.jsonl.gz", seed=0)
    flags = ["--model", str(tmp_path / "model"), "--device", "cpu", "--dtype", "fp32", "--corpus", str(corpus)]
    flags += ["--hook", "blocks.2.hook_resid_post", "--n-tokens", "1200", "--held-out-tokens", "256"]
    flags += ["--context-len", "32", "--batch-size", "4", "--shard-tokens", "300"]
    assert main(["harvest", "--out-dir", str(tmp_path / "one"), *flags]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    cmd += ["saesteer.cli.main", "harvest", "--out-dir", str(tmp_path / "two"), *flags]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("activations in") == 1  # rank 0 alone reports
    one, two = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert len(one["shards"]) >= 4 and one["complete"] and two["complete"]
    assert [s["sha256"] for s in two["shards"]] == [s["sha256"] for s in one["shards"]]
    assert two["windows_consumed"] == one["windows_consumed"] and two["identity"] == one["identity"]
