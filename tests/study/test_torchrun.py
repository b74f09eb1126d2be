"""`torchrun --nproc_per_node 2 ... reproduce` (gloo, CPU): the sweep split over two processes scores exactly what
one process scores, resumes without regenerating, and the harvest inside the study writes one process's shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from saesteer.evaluation.datasets import data_dir
from tests.conftest import tiny_model

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")]

TINY = {
    "study": {
        "hook": "blocks.2.hook_resid_post",
        "train": {"d_sae": 128, "k": 8},
        "harvest": {"n_tokens": 20_000},
        "sweep": {"clamp_values": [1.0, 2.0]},
        "generation": {"batch_size": 4},
    }
}


def _reproduce(out: Path, flags: list[str], nproc: int) -> subprocess.CompletedProcess[str]:
    # one thread each (the same kernels); the tree under test first on the path
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    cmd = [sys.executable, *launcher, "-m", "saesteer.cli.main", "reproduce", "--out-dir", str(out), *flags]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _sweep(out: Path) -> tuple[dict, list[str]]:  # type: ignore[type-arg]
    folder = next(out.glob("sweep-*"))
    results = json.loads((folder / "results.json").read_text())
    lines = (folder / "completions.jsonl").read_text().splitlines()
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in results["rows"]]  # all but the wall times
    return {"rows": rows, "items": results["items"]}, lines


def test_torchrun_study_equals_one_process_and_resumes(tmp_path: Path, qwen_tokenizer) -> None:
    root = data_dir()
    if root is None:
        pytest.skip("no data directory")
    model = tiny_model("qwen2", vocab_size=len(qwen_tokenizer))
    model.config.num_hidden_layers = 4
    model.save_pretrained(tmp_path / "tiny")
    qwen_tokenizer.save_pretrained(tmp_path / "tiny")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    flags = ["--profile", "tiny", "--config", str(tmp_path / "tiny.json"), "--model", str(tmp_path / "tiny")]
    flags += ["--device", "cpu", "--dtype", "fp32", "--data-dir", str(root)]

    one = _reproduce(tmp_path / "one", flags, 1)
    two = _reproduce(tmp_path / "two", flags, 2)
    assert two.stdout.count("report") == one.stdout.count("report") > 0  # rank 0 alone reports
    assert "[harvest] running" in two.stdout and "on 2 processes" in two.stdout
    # the harvest inside the study: each rank ran its share of the windows; rank 0 wrote one process's shards
    man = [json.loads(next((tmp_path / d).glob("harvest-*/manifest.json")).read_text()) for d in ("one", "two")]
    assert [s["sha256"] for s in man[1]["shards"]] == [s["sha256"] for s in man[0]["shards"]]

    # the sweep on one process's SAE: two processes score every condition exactly as one does (in about half the
    # generation time, not asserted here)
    sae = next((tmp_path / "one").glob("train_sae-*/sae"))
    shared = _reproduce(tmp_path / "shared", [*flags, "--sae", str(sae)], 2)
    assert "[sweep] running" in shared.stdout
    (rows, lines), (rows_one, lines_one) = _sweep(tmp_path / "shared"), _sweep(tmp_path / "one")
    assert rows == rows_one and rows["rows"]
    assert sorted(lines) == sorted(lines_one)  # one completion per prompt and condition, none twice

    # an interrupted sweep resumes from rank 0's cache and table: nothing is generated again
    folder = next((tmp_path / "shared").glob("sweep-*"))
    (folder / "stage.json").unlink()
    results = json.loads((folder / "results.json").read_text())
    results["rows"] = results["rows"][:2]
    kept = {(r["condition"], r["metric"]) for r in results["rows"]}
    results["items"] = [i for i in results["items"] if (i["condition"], i["metric"]) in kept]
    (folder / "results.json").write_text(json.dumps(results))
    _reproduce(tmp_path / "shared", [*flags, "--sae", str(sae)], 2)
    assert _sweep(tmp_path / "shared") == (rows, lines)
