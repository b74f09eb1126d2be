"""``saesteer train-sae`` and ``saesteer sae-eval`` end to end on tiny caches and a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saesteer.activations.store import write_manifest, write_shard
from saesteer.cli.main import main
from saesteer.sae.io import save_sae
from tests.conftest import tiny_model
from tests.sae.conftest import SparseSource, random_sae

HOOK = "blocks.1.hook_resid_post"


def make_cache(path: Path, d: int = 32, model: str = "tiny", hook: str = HOOK, n_shards: int = 4) -> Path:
    src = SparseSource(d=d, batch=512)
    shards = [write_shard(path, i, b) for i, b in zip(range(n_shards), src.batches(), strict=False)]
    write_manifest(path, {"model": model, "hook_name": hook, "d_model": d, "shards": shards})
    return path


TRAIN_FLAGS = [
    "--k",
    "4",
    "--d-sae",
    "128",
    "--batch-size",
    "128",
    "--total-tokens",
    "1280",
    "--no-progress",
    "--checkpoint-every",
    "5",
    "--lr",
    "0.003",
]


def test_train_sae_then_eval_on_held_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acts = make_cache(tmp_path / "acts")
    out = tmp_path / "run"
    assert main(["train-sae", "--acts", str(acts), "--out-dir", str(out), *TRAIN_FLAGS]) == 0
    cfg = json.loads((out / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["metadata"]["model_name"] == "tiny" and cfg["k"] == 4
    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved["train_sae"]["d_sae"] == 128
    assert "10 steps" in capsys.readouterr().out
    speed = json.loads((out / "train_summary.json").read_text())["tokens_per_s"]
    assert main(["train-sae", "--acts", str(acts), "--out-dir", str(out), *TRAIN_FLAGS]) == 0  # resumes: done
    assert json.loads((out / "train_summary.json").read_text())["tokens_per_s"] == speed > 0
    assert main(["sae-eval", "--sae", str(out / "sae"), "--acts", str(acts), "--no-spliced"]) == 0
    res = json.loads((out / "eval" / "sae_eval.json").read_text())
    act = res["activations"]["all"]
    assert 0 < act["fvu"] < 1 and act["l0"] == pytest.approx(4.0) and act["n_tokens"] == 512
    assert (out / "eval" / "resolved_config.json").is_file()


def test_train_sae_refuses_a_cache_from_another_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acts = make_cache(tmp_path / "acts")
    rc = main(
        [
            "train-sae",
            "--acts",
            str(acts),
            "--expect-hook",
            "blocks.6.hook_resid_post",
            "--out-dir",
            str(tmp_path / "run"),
            *TRAIN_FLAGS,
        ]
    )
    assert rc == 2
    assert "is at 'blocks.1.hook_resid_post', not 'blocks.6.hook_resid_post'" in capsys.readouterr().err


def test_sae_eval_refuses_mismatched_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acts = make_cache(tmp_path / "acts", hook="blocks.2.hook_resid_post")
    save_sae(random_sae("topk", d_in=32, d_sae=64, hook=HOOK), tmp_path / "sae")
    assert main(["sae-eval", "--sae", str(tmp_path / "sae"), "--acts", str(acts), "--no-spliced"]) == 2
    assert "harvest at that hook point or pick the matching SAE" in capsys.readouterr().err
    assert main(["sae-eval", "--no-spliced"]) == 2
    assert "pass --sae DIR" in capsys.readouterr().err


WORDS = "text number talks about cats , dogs and the weather .".split() + [str(i) for i in range(10)]


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A tiny random Qwen2 model with a word-level tokenizer over WORDS (fast to build and load)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    folder = tmp_path / "tiny-qwen"
    tiny_model("qwen2", vocab_size=64).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_sae_eval_spliced_on_tiny_model(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": f"text number {i} talks about cats , dogs and the weather ."}) + "\n" for i in range(6)
        )
    )
    save_sae(random_sae("topk", d_in=64, d_sae=128, k=8, hook=HOOK), tmp_path / "sae")
    model_flags = ["--model", str(tiny_model_dir), "--dtype", "fp32", "--device", "cpu"]
    rc = main(
        [
            "sae-eval",
            "--sae",
            str(tmp_path / "sae"),
            "--corpus",
            str(corpus),
            "--n-texts",
            "4",
            "--batch-size",
            "3",
            *model_flags,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "eval" / "sae_eval.json").read_text())["web"]
    assert res["n_windows"] == 4 and abs(res["delta_ce_error_term"]) < 1e-5 and res["kl_spliced"] > 0
    save_sae(random_sae("topk", d_in=32, d_sae=64, hook=HOOK), tmp_path / "narrow")
    assert main(["sae-eval", "--sae", str(tmp_path / "narrow"), "--corpus", str(corpus), *model_flags]) == 2
    assert "SAE d_in 32 != model d_model 64" in capsys.readouterr().err


def test_train_sae_rejects_nan_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "acts"
    good = SparseSource(d=32, batch=512).held_out(512)
    bad = good.clone()
    bad[::7, 3] = float("inf")
    shards = [write_shard(path, 0, good), write_shard(path, 1, bad), write_shard(path, 2, bad)]
    write_manifest(path, {"model": "tiny", "hook_name": HOOK, "d_model": 32, "shards": shards})
    assert main(["train-sae", "--acts", str(path), "--out-dir", str(tmp_path / "run"), *TRAIN_FLAGS]) == 2
    assert "NaN or inf" in capsys.readouterr().err
    assert torch.isinf(bad).any()
