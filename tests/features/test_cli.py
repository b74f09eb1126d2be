"""``saesteer find-features`` and ``saesteer feature show`` on a tiny saved model and SAE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from saesteer.cli.main import main
from saesteer.sae.io import save_sae
from tests.features.conftest import make_sae


@pytest.fixture
def saved(chat: tuple[Any, Any], tmp_path: Path) -> tuple[Path, Path]:
    model, tok = chat
    mdir, sdir = tmp_path / "model", tmp_path / "sae"
    model.save_pretrained(str(mdir))
    tok.save_pretrained(str(mdir))
    save_sae(make_sae(layer=1, d_sae=48, k=4), sdir)
    return mdir, sdir


def test_find_features_then_show(saved: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mdir, sdir = saved
    out = tmp_path / "run"
    common = ["--model", str(mdir), "--dtype", "fp32", "--device", "cpu"]
    args = [
        "find-features",
        "--sae",
        str(sdir),
        "--out",
        str(out),
        "--harmful",
        "builtin_harmful",
        "--harmless",
        "builtin_harmless",
        "--rank-harmful",
        "builtin_harmful",
        "--rank-harmless",
        "builtin_harmless",
        "--n-harmful",
        "3",
        "--n-harmless",
        "3",
        "--n-rank",
        "3",
        "--n-attribution",
        "2",
        "--archetype-tokens",
        "3",
        "--no-require-refusal",
        "--per-ranker",
        "2",
        "--max-screen",
        "3",
        "--n-generate",
        "1",
        "--max-new-tokens",
        "2",
        "--corpus",
        "none",
        "--topic-prompts",
        "What is Stoicism?",
        *common,
    ]
    rc = main(args)
    err = capsys.readouterr().err
    # a random model refuses nothing: the run ends with the one-line "no candidate passed" error, outputs written
    assert rc == 2 and "no candidate passed the screen" in err and "Traceback" not in err
    data = json.loads((out / "features.json").read_text())
    assert data["status"] == "no_candidate_passed" and len(data["screen"]["cheap"]) == 3
    assert json.loads((out / "resolved_config.json").read_text())["find_features"]["n_harmful"] == 3
    feat = data["screen"]["cheap"][0]["feature"]
    html = tmp_path / "card.html"
    assert (
        main(["feature", "show", str(feat), "--sae", str(sdir), "--run", str(out), "--html", str(html), *common]) == 0
    )
    shown = capsys.readouterr().out
    assert f"feature {feat}" in shown and "logit lens" in shown and "density" in shown
    assert html.read_text().lower().startswith("<!doctype html>")
    assert main(["feature", "show", "48", "--sae", str(sdir), "--run", str(out), *common]) == 2
    assert "feature 48 out of range; this SAE has features 0..47" in capsys.readouterr().err


def test_cli_bad_input(saved: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mdir, sdir = saved
    common = ["--model", str(mdir), "--dtype", "fp32", "--device", "cpu"]
    assert main(["find-features", "--out", str(tmp_path / "x"), *common]) == 2
    assert "no SAE given" in capsys.readouterr().err
    assert main(["find-features", "--sae", str(sdir), "--n-generate", "0", *common]) == 2
    assert "n_generate" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["feature", "show", "1", "--sae", str(sdir), "--corpus", str(empty), *common]) == 2
    assert "no token windows" in capsys.readouterr().err
