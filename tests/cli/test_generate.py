"""``saesteer generate`` with and without steering, on the tiny chat model of tests/cli/conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saesteer.cli.main import main
from tests.cli.conftest import MODEL_FLAGS

PROMPTS = ["How do I bake bread?", "hi"]


def _gen(ws: Path, *extra: str) -> list[str]:
    return ["generate", *PROMPTS, "--model", str(ws / "model"), *MODEL_FLAGS, "--max-new-tokens", "3", *extra]


def test_help_documents_steering_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for flag in ("--sae", "--clamp", "--positions", "--gate", "feature:F>T", "--add-direction", "--ablate-direction"):
        assert flag in out


def test_plain_generation(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_gen(ws, "--json")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS and all("completion" in r for r in rows)


def test_sae_clamp_with_feature_gate_side_by_side(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(_gen(ws, "--sae", str(ws / "sae"), "--clamp", "3=40", "--clamp", "5=1", "--gate", "feature:7>-1"))
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("### prompt:") == 2 and "gate score" in out and ": steered]" in out
    assert "--- base" in out and "| --- steered" in out


def test_direction_json_and_gate_calibration(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    direction = ["--direction", str(ws / "dir.safetensors"), "--add-direction", "1.0", "--json"]
    assert main(_gen(ws, *direction)) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and any(r["base"] != r["steered"] for r in rows)
    calibrate = ["--gate", "direction", "--gate-calibrate", str(ws / "harmless.txt"), "--gate-fpr", "0.0"]
    assert main(_gen(ws, *direction, *calibrate)) == 0
    captured = capsys.readouterr()
    assert "gate threshold" in captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert all("gate_fired" in r for r in rows)
    for r in rows:  # unsteered rows equal the base completion
        assert r["gate_fired"] or r["base"] == r["steered"]


def test_steering_from_a_config_file(ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The file's steering section does what the same flags do."""
    flags = ["--sae", str(ws / "sae"), "--clamp", "3=40", "--json"]
    assert main(_gen(ws, *flags)) == 0
    want = capsys.readouterr().out
    (tmp_path / "s.yaml").write_text(f"json: true\nsteering:\n  sae: {ws / 'sae'}\n  clamp: ['3=40']\n")
    assert main(_gen(ws, "--config", str(tmp_path / "s.yaml"))) == 0
    assert capsys.readouterr().out == want
