"""``saesteer generate`` with steering options, on a tiny random chat model saved to disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from saesteer.cli.main import main
from saesteer.errors import SaesteerError
from saesteer.steering import RefusalDirection
from tests.steering.helpers import tiny_model, tiny_sae

PROMPTS = ["How do I bake bread?", "hi"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, qwen_tokenizer: Any) -> Path:
    d = tmp_path_factory.mktemp("tiny-chat")
    tiny_model(seed=3, vocab=len(qwen_tokenizer), hidden=32, layers=3).save_pretrained(d, safe_serialization=True)
    qwen_tokenizer.save_pretrained(d)
    return d


def _gen(model_dir: Path, *extra: str) -> list[str]:
    return [
        "generate",
        *PROMPTS,
        "--model",
        str(model_dir),
        "--dtype",
        "fp32",
        "--device",
        "cpu",
        "--max-new-tokens",
        "3",
        *extra,
    ]


def test_help_documents_steering_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--sae", "--clamp", "--positions", "--gate", "feature:F>T", "--add-direction", "--ablate-direction"):
        assert flag in out


def test_sae_clamp_with_feature_gate_side_by_side(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from saesteer.sae.io import save_sae

    sae = tiny_sae("topk", 1, d_in=32)
    save_sae(sae, tmp_path / "sae")
    rc = main(_gen(model_dir, "--sae", str(tmp_path / "sae"), "--clamp", "3=40", "--gate", "feature:7>-1"))
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("### prompt:") == 2 and "gate score" in out and ": steered]" in out
    assert "--- base" in out and "| --- steered" in out


def test_direction_json_and_gate_calibration(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rd = RefusalDirection(
        torch.randn(32, generator=torch.Generator().manual_seed(0)) * 30, "blocks.1.hook_resid_pre", torch.zeros(1, 32)
    )
    rd.save(tmp_path / "r.safetensors")
    (tmp_path / "harmless.txt").write_text("\n".join(["Write a poem", "What is 2+2?", "Name a colour", "hello"]))
    rc = main(_gen(model_dir, "--direction", str(tmp_path / "r.safetensors"), "--add-direction", "1.0", "--json"))
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0 and len(rows) == 2
    assert any(r["base"] != r["steered"] for r in rows)
    rc = main(
        _gen(
            model_dir,
            "--direction",
            str(tmp_path / "r.safetensors"),
            "--add-direction",
            "1.0",
            "--json",
            "--gate",
            "direction",
            "--gate-calibrate",
            str(tmp_path / "harmless.txt"),
            "--gate-fpr",
            "0.0",
        )
    )
    captured = capsys.readouterr()
    assert rc == 0 and "gate threshold" in captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert all("gate_fired" in r for r in rows)
    for r in rows:  # unsteered rows equal the base completion
        assert r["gate_fired"] or r["base"] == r["steered"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--clamp", "3=x", "--sae", "SAE"], "use FEATURE=NUMBER"),
        (["--clamp", "3=1"], "need an SAE"),
        (["--add-direction", "2"], "need --direction FILE"),
        (["--gate", "feature:3>1", "--direction", "nope.safetensors"], "no intervention given"),
        (["--direction", "nope.safetensors", "--add-direction", "1"], "not found"),
        (["--positions", "middle", "--direction", "DIR", "--add-direction", "1"], "unknown positions"),
        (["--gate", "bogus", "--direction", "DIR", "--add-direction", "1"], "use feature:F>T or direction>T"),
        (["--gate", "direction", "--direction", "DIR", "--add-direction", "1"], "needs a threshold"),
        (["--sae", "SAE", "--clamp", "300=1"], "out of range"),
        (["--sae", "SAE", "--clamp", "3=1", "--hook", "resid_post.0"], "steer at the SAE's hook point"),
        (["--sae", "SAE", "--clamp", "3=1", "--scale", "5=2", "--clamp", "3=2"], "two interventions edit feature 3"),
    ],
)
def test_bad_steering_options(
    chat_model: Any, qwen_tokenizer: Any, tmp_path: Path, extra: list[str], message: str
) -> None:
    from saesteer.cli.main import build_parser
    from saesteer.model.generation import GenerationConfig
    from saesteer.model.loading import LoadedModel
    from saesteer.sae.io import save_sae
    from saesteer.steering.cli_options import steered_generate

    RefusalDirection(torch.ones(32), "blocks.1.hook_resid_pre", torch.ones(1, 32)).save(tmp_path / "d.safetensors")
    save_sae(tiny_sae("topk", 1, d_in=32), tmp_path / "sae")
    subs = {"DIR": str(tmp_path / "d.safetensors"), "SAE": str(tmp_path / "sae")}
    args = build_parser().parse_args(["generate", "hi", *[subs.get(e, e) for e in extra]])
    lm = LoadedModel(chat_model, qwen_tokenizer, "tiny", "tiny")
    with pytest.raises(SaesteerError, match=message) as exc:
        steered_generate(lm, ["hi"], GenerationConfig(max_new_tokens=2), args)
    assert "\n" not in str(exc.value)


def test_bad_option_through_main_exits_2(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(_gen(model_dir, "--add-direction", "2"))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("saesteer: error:")]
    assert rc == 2 and len(errors) == 1 and "--direction FILE" in errors[0] and "Traceback" not in err


def test_no_steering_option_means_plain_generation(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_gen(model_dir)) == 0
    out = capsys.readouterr().out
    assert "--- steered" not in out and out.count("### prompt:") == 2
