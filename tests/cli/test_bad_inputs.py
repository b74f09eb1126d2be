"""Bad input to every command: exit code 2, one stderr line without a traceback, and no file changed.

Each case runs ``saesteer.cli.main.main`` in-process inside a workspace holding a real tiny model,
SAE, direction and activation cache (``tests/cli/conftest.py``), so the checked error is the one the
command really reaches (the files it names exist unless the case is about a missing one).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from saesteer.cli.main import main
from tests.cli.conftest import snapshot

PROGRESS = re.compile(r"\d+/\d+ \[[\d:<?]+")

M = "--model {ws}/model --dtype fp32 --device cpu"
GEN = f"generate hi {M} --max-new-tokens 2"
SAE = "--sae {ws}/sae"

CASES: list[tuple[str, str, str]] = [
    # (id, command line, expected part of the error line)
    ("unknown-command", "frobnicate", "unknown command 'frobnicate'"),
    ("group-without-subcommand", "model", "'model' needs a subcommand"),
    ("unknown-model", "model info --model no-such-model-here", "unknown model spec"),
    ("bad-dtype", "model info --model {ws}/model --dtype fp7", "unknown dtype 'fp7'"),
    ("no-prompts", f"generate {M}", "no prompts given"),
    ("missing-prompts-file", f"generate {M} --prompts-file {{ws}}/nope.txt", "not found"),
    ("prompts-file-is-a-folder", f"generate {M} --prompts-file {{ws}}/empty_dir", "not found"),
    ("prompts-jsonl-bad-json", f"generate {M} --prompts-file {{ws}}/bad.jsonl", "bad.jsonl:2 is not valid JSON"),
    ("prompts-jsonl-no-key", f"generate {M} --prompts-file {{ws}}/nokey.jsonl", "neither 'prompt' nor 'messages'"),
    ("unknown-flag", f"{GEN} --max-new-tokns 3", "--max-new-tokns"),
    ("flag-bad-int", f"{GEN} --batch-size many", "--batch-size"),
    ("flag-bad-choice", f"{GEN} --layout diagonal", "invalid choice 'diagonal'"),
    ("flag-missing-value", f"{GEN} --seed", "--seed"),
    ("config-missing", f"{GEN} --config {{ws}}/nope.yaml", "cannot read config file"),
    ("config-is-a-folder", f"{GEN} --config {{ws}}/cfg_dir.yaml", "cannot read config file"),
    ("config-unknown-key", f"{GEN} --config {{ws}}/typo.yaml", "unknown key 'generation.max_new_tokns' in"),
    ("config-unknown-section", f"{GEN} --config {{ws}}/section.toml", "unknown key 'generaton' in"),
    ("config-wrong-type", f"{GEN} --config {{ws}}/type.json", "'generation.batch_size' in"),
    ("config-malformed", f"{GEN} --config {{ws}}/broken.yaml", "is malformed"),
    ("config-not-a-mapping", f"{GEN} --config {{ws}}/list.json", "must hold a mapping"),
    ("config-unknown-format", f"{GEN} --config {{ws}}/cfg.ini", "unknown format '.ini'"),
    ("config-no-value", f"{GEN} --config", "--config needs a value"),
    ("clamp-syntax", f"{GEN} {SAE} --clamp 3=x", "use FEATURE=NUMBER"),
    ("clamp-without-sae", f"{GEN} --clamp 3=1", "need an SAE"),
    ("add-direction-without-file", f"{GEN} --add-direction 2", "need --direction FILE"),
    ("missing-direction-file", f"{GEN} --direction {{ws}}/nope.safetensors --add-direction 1", "not found"),
    ("missing-sae-folder", f"{GEN} --sae {{ws}}/nope --clamp 3=1", "--sae /"),
    ("sae-feature-out-of-range", f"{GEN} {SAE} --clamp 300=1", "out of range"),
    ("sae-hook-mismatch", f"{GEN} {SAE} --clamp 3=1 --hook resid_post.0", "steer at the SAE's hook point"),
    ("two-edits-one-feature", f"{GEN} {SAE} --clamp 3=1 --clamp 3=2", "two interventions edit feature 3"),
    ("bad-positions", f"{GEN} {SAE} --clamp 3=1 --positions middle", "unknown positions"),
    ("bad-gate", f"{GEN} {SAE} --clamp 3=1 --gate bogus", "use feature:F>T or direction>T"),
    ("gate-without-threshold", f"{GEN} {SAE} --clamp 3=1 --gate feature:7", "needs a threshold"),
    ("gate-without-intervention", f"{GEN} {SAE} --gate feature:3>1", "no intervention given"),
    (
        "gate-calibrate-missing",
        f"{GEN} --direction {{ws}}/dir.safetensors --add-direction 1 --gate direction --gate-calibrate {{ws}}/no.txt",
        "not found",
    ),
    ("harvest-nothing", f"harvest {M} --out-dir {{ws}}/new_acts", "nothing to harvest"),
    ("harvest-missing-chat-file", f"harvest {M} --chat-file {{ws}}/nope.jsonl --out-dir {{ws}}/new", "not found"),
    (
        "harvest-hook-out-of-range",
        f"harvest {M} --corpus {{ws}}/harmless.txt --hook blocks.9.hook_resid_post --out-dir {{ws}}/new",
        "out of range",
    ),
    (
        "harvest-out-dir-is-a-file",
        f"harvest {M} --corpus {{ws}}/harmless.txt --hook blocks.1.hook_resid_post --out-dir {{ws}}/a_file.txt",
        "a_file.txt is a file where a folder is needed",
    ),
    ("train-no-acts", "train-sae --out-dir {ws}/run", "pass --acts DIR"),
    ("train-acts-not-a-cache", "train-sae --acts {ws}/empty_dir --out-dir {ws}/run", "is not an activation cache"),
    (
        "train-expect-hook",
        "train-sae --acts {ws}/acts --expect-hook blocks.2.hook_resid_post --out-dir {ws}/run",
        "not 'blocks.2.hook_resid_post'",
    ),
    ("train-tokens-from", "train-sae --acts {ws}/acts --tokens-from web", "invalid choice 'web'"),
    (
        "train-out-dir-under-a-file",
        "train-sae --acts {ws}/acts --out-dir {ws}/a_file.txt/run",
        "is a file where a folder is needed",
    ),
    ("sae-eval-no-sae", "sae-eval --no-spliced", "pass --sae DIR"),
    ("sae-eval-nothing", "sae-eval --sae {ws}/sae --no-spliced", "nothing to measure"),
    ("sae-eval-missing-sae", "sae-eval --sae {ws}/nope --acts {ws}/acts --no-spliced", "SAE folder"),
    ("find-features-no-sae", f"find-features {M} --out {{ws}}/ff", "no SAE given"),
    ("find-features-bad-count", f"find-features {M} {SAE} --n-harmful 0 --out {{ws}}/ff", "n_harmful"),
    ("find-features-config-section", f"find-features {M} --config {{ws}}/ff.yaml", "unknown key 'find_features.d_sea'"),
    ("feature-show-no-id", f"feature show {SAE} {M}", "no feature given"),
    ("feature-show-out-of-range", f"feature show 999 {SAE} {M}", "out of range"),
    ("feature-show-bad-id", f"feature show seven {SAE} {M}", "seven"),
    ("feature-show-no-contexts", f"feature show 3 {SAE} {M} --data-dir none", "no contexts to show"),
    (
        "feature-show-no-corpus",
        f"feature show 3 {SAE} {M} --data-dir {{ws}}/empty_dir",
        "english_mix_corpus.jsonl.gz not found",
    ),
    (
        "gate-file-missing",
        f"{GEN} {SAE} --clamp 3=1 --gate {{ws}}/nope.safetensors",
        "nope.safetensors not found; pass a gate file",
    ),
    ("gate-file-not-a-gate", f"{GEN} {SAE} --clamp 3=1 --gate {{ws}}/dir.safetensors", "is not a saesteer gate file"),
    ("app-no-sae", f"app {M}", "no SAE given"),
    ("app-bad-port", f"app {M} {SAE} --port 70000", "--port 70000 out of range"),
    ("fit-gate-missing-sae", f"fit-gate {M} --sae {{ws}}/nope --out {{ws}}/g.safetensors", "SAE folder"),
    ("reproduce-bad-profile", f"reproduce {M} --profile huge", "unknown profile 'huge'"),
    ("reproduce-seeds", f"reproduce {M} --profile tiny --seeds 0", "seeds=0"),
    ("reproduce-config-typo", f"reproduce {M} --config {{ws}}/study.yaml", "unknown key 'study.train.d_sea'"),
]

CONFIG_FILES = {
    "typo.yaml": "generation:\n  max_new_tokns: 3\n",
    "section.toml": "[generaton]\nmax_new_tokens = 3\n",
    "type.json": '{"generation": {"batch_size": "eight"}}',
    "broken.yaml": "generation: [unclosed\n",
    "list.json": "[1, 2]",
    "cfg.ini": "[generation]\n",
    "ff.yaml": "find_features:\n  d_sea: 1\n",
    "study.yaml": "study:\n  profile: tiny\n  train:\n    d_sea: 1\n",
}


@pytest.fixture(scope="module")
def bad_ws(ws: Path) -> Path:
    for name, text in CONFIG_FILES.items():
        (ws / name).write_text(text)
    (ws / "cfg_dir.yaml").mkdir(exist_ok=True)
    return ws


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "line", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    case: str,
    line: str,
    expected: str,
    bad_ws: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(bad_ws)  # a command that wrongly wrote a default output folder would show in the snapshot
    monkeypatch.setenv("SAESTEER_DATA_DIR", str(bad_ws / "empty_dir"))
    before = snapshot(bad_ws)
    rc = main(shlex.split(line.format(ws=bad_ws)))
    err = capsys.readouterr().err
    # progress meters (tqdm, e.g. transformers' "Loading weights") are not error output
    lines = [ln for ln in err.splitlines() if ln.strip() and not PROGRESS.search(ln)]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("saesteer: error: "), err
    assert expected in lines[0]
    assert snapshot(bad_ws) == before, f"{case} changed files"


def test_hook_point_never_reached_is_a_user_error() -> None:
    """A hook on a layer the forward pass skips ends in a one-line SaesteerError, not a RuntimeError."""
    import torch

    from saesteer.errors import SaesteerError
    from saesteer.model.adapter import ArchAdapter
    from tests.steering.helpers import tiny_model

    adapter = ArchAdapter(tiny_model(layers=2))
    adapter.layers.append(torch.nn.Identity())  # listed as a layer, never called by the model
    adapter.n_layers += 1
    ids = torch.ones(1, 4, dtype=torch.long)
    assert adapter.run_to("blocks.1.hook_resid_post", ids).shape == (1, 4, 64)
    with pytest.raises(SaesteerError, match="blocks.2.hook_resid_post was never reached") as exc:
        adapter.run_to("blocks.2.hook_resid_post", ids)
    assert "\n" not in str(exc.value)
