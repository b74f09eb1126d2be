"""Config trees: files in three formats, strict keys, precedence, and resolved_config.json recording everything."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from saesteer.cli.common import parse
from saesteer.cli.main import command, main
from saesteer.config import config_from_dict, config_to_dict, merge_config, opt, read_config_file
from saesteer.errors import SaesteerError
from tests.sae.test_cli import TRAIN_FLAGS, make_cache


@dataclass
class Inner:
    k: int = opt(4, "k")
    lr: float = opt(0.1, "lr")
    shape: tuple[int, int] = opt((1, 2), "shape")


@dataclass
class Outer:
    name: str | None = opt(None, "name")
    tags: list[str] = opt([], "tags")
    inner: Inner = field(default_factory=Inner)


def test_merge_config_nested_strict_and_typed() -> None:
    cfg = config_from_dict(Outer, {"name": "x", "inner": {"k": 8, "lr": 1, "shape": [3, 4]}, "tags": ("a",)})
    assert cfg == Outer("x", ["a"], Inner(8, 1.0, (3, 4))) and isinstance(cfg.inner.lr, float)
    assert merge_config(cfg, {"inner": {"k": 2}}).inner == Inner(2, 1.0, (3, 4)) and cfg.inner.k == 8
    with pytest.raises(SaesteerError, match=r"unknown key 'inner.kk' in my.yaml \(known under 'inner': k, lr, shape\)"):
        config_from_dict(Outer, {"inner": {"kk": 1}}, "my.yaml")
    with pytest.raises(SaesteerError, match=r"unknown key 'nme' in f \(known: name, tags, inner\)"):
        config_from_dict(Outer, {"nme": 1}, "f")
    for bad, where in (({"inner": {"k": "8"}}, "inner.k"), ({"tags": [1]}, "tags"), ({"inner": 3}, "inner")):
        with pytest.raises(SaesteerError, match=where):
            config_from_dict(Outer, bad)
    assert config_from_dict(Outer, {}) == Outer()
    with pytest.raises(SaesteerError, match="inner.k"):
        config_from_dict(Outer, {"inner": {"k": True}})  # a bool is not an int here


def test_three_file_formats_read_alike(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('name = "x"\n[inner]\nk = 3\n')
    (tmp_path / "c.yaml").write_text("name: x\ninner:\n  k: 3\n")
    (tmp_path / "c.json").write_text('{"name": "x", "inner": {"k": 3}}')
    (tmp_path / "empty.yaml").write_text("")
    dicts = [read_config_file(tmp_path / f"c.{ext}") for ext in ("toml", "yaml", "json")]
    assert dicts[0] == dicts[1] == dicts[2] == {"name": "x", "inner": {"k": 3}}
    assert read_config_file(tmp_path / "empty.yaml") == {}


def test_config_file_sets_model_dtype_and_device(ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'[model]\nmodel = "{ws / "model"}"\ndtype = "fp32"\ndevice = "cpu"\n')
    assert main(["model", "info", "--config", str(cfg), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["dtype"], info["device"], info["n_layers"]) == ("float32", "cpu", 3)
    assert main(["model", "info", "--config", str(cfg), "--json", "--dtype", "bf16"]) == 0  # flags win
    assert json.loads(capsys.readouterr().out)["dtype"] == "bfloat16"


def test_resolved_config_records_every_option_and_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acts = make_cache(tmp_path / "acts")
    (tmp_path / "t.yaml").write_text(
        f"acts: {acts}\nexpect_hook: blocks.1.hook_resid_post\ntrain_sae:\n  k: 4\n  lr: 0.003\n"
    )
    out = tmp_path / "run"
    argv = ["train-sae", "--config", str(tmp_path / "t.yaml"), "--out-dir", str(out), *TRAIN_FLAGS, "--seed", "7"]
    assert main(argv) == 0
    resolved = json.loads((out / "resolved_config.json").read_text())
    tree = parse(command("train-sae"), argv[1:])
    assert resolved == config_to_dict(tree)
    assert resolved["expect_hook"] == "blocks.1.hook_resid_post" and resolved["train_sae"]["seed"] == 7
    assert resolved["train_sae"]["d_sae"] == 128 and resolved["train_sae"]["k"] == 4
    again = parse(command("train-sae"), ["--config", str(out / "resolved_config.json")])
    assert config_to_dict(again) == resolved  # resolved_config.json is itself a valid --config file
    capsys.readouterr()


def test_reproduce_profile_from_file_then_flags(tmp_path: Path) -> None:
    from saesteer.study.config import StudyConfig

    (tmp_path / "s.yaml").write_text("study:\n  profile: tiny\n  train:\n    k: 8\n")
    cfg = parse(command("reproduce"), ["--config", str(tmp_path / "s.yaml"), "--seed", "3", "--train.d-sae", "96"])
    tiny = StudyConfig.from_profile("tiny")
    assert cfg.study.profile == "tiny" and cfg.study.seed == 3
    assert (cfg.study.train.k, cfg.study.train.d_sae) == (8, 96)
    assert cfg.study.harvest == tiny.harvest and cfg.study.safety == tiny.safety  # the profile's sizes
    assert parse(command("reproduce"), ["--profile", "tiny"]).study == tiny


def test_reproduce_hides_the_flags_the_study_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fields in STUDY_OWNED have no flag: --help leaves them out, a flag for one says what to set instead,
    and a file that names one still reaches the study's own check; the neighbouring fields keep their flags."""
    from saesteer.study.config import STUDY_OWNED

    with pytest.raises(SystemExit):
        parse(command("reproduce"), ["--help"])
    help_text = capsys.readouterr().out
    flags = {w.strip("│ ,") for w in help_text.split() if w.startswith("--")}
    owned = {"--" + dotted.replace("_", "-") for dotted in STUDY_OWNED}
    assert len(owned) == len(STUDY_OWNED) >= 20 and not owned & flags
    assert {"--harvest.n-tokens", "--train.d-sae", "--features.n-harmful", "--out-dir", "--seed"} <= flags
    with pytest.raises(SaesteerError, match=r"^--train\.seed: train\.seed is set by the study; set seed instead$"):
        parse(command("reproduce"), ["--profile", "tiny", "--train.seed=3"])
    (tmp_path / "s.yaml").write_text("study:\n  profile: tiny\n  features:\n    sae: elsewhere\n")
    cfg = parse(command("reproduce"), ["--config", str(tmp_path / "s.yaml")])
    assert cfg.study.features.sae == "elsewhere"
    with pytest.raises(SaesteerError, match="features.sae is set by the study; set sae instead"):
        cfg.study.validate()


def test_harvest_records_every_option(ws: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The model and the chat options, outside the harvest config before, are in resolved_config.json too."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i} about bread, cats and the weather in town\n" for i in range(40)))
    (tmp_path / "h.toml").write_text(f'chat_max_new_tokens = 5\n[model]\nmodel = "{ws / "model"}"\ndtype = "fp32"\n')
    out = tmp_path / "acts"
    argv = ["harvest", "--config", str(tmp_path / "h.toml"), "--device", "cpu", "--corpus", str(corpus)]
    argv += ["--hook", "blocks.1.hook_resid_post", "--n-tokens", "96", "--held-out-tokens", "16"]
    argv += ["--context-len", "16", "--out-dir", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    resolved = json.loads((out / "resolved_config.json").read_text())
    assert resolved == config_to_dict(parse(command("harvest"), argv[1:]))
    assert resolved["model"] == {
        "model": str(ws / "model"),
        "dtype": "fp32",
        "device": "cpu",
        "cache_dir": None,
        "trust_remote_code": False,
    }
    assert resolved["chat_max_new_tokens"] == 5 and resolved["harvest"]["n_tokens"] == 96
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hook_name"] == "blocks.1.hook_resid_post" and manifest["d_model"] == 32


@pytest.mark.parametrize("utf8", [True, False])
def test_tyro_errors_become_one_line(utf8: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """tyro draws its errors in a UTF-8 or an ASCII box (by the terminal's encoding); both end as one line."""
    import tyro

    monkeypatch.setitem(tyro._experimental_options, "utf8_boxes", utf8)
    monkeypatch.setattr("tyro._fmtlib._FORCE_UTF8_BOXES", utf8)
    cases = [
        (["--max-new-tokns", "3"], "Unrecognized options: --max-new-tokns, 3 (did you mean --max-new-tokens?)"),
        (["--seed"], "Missing value for argument '--seed'. Expected 1 values."),
        (["--batch-size", "many"], "Error parsing --batch-size: invalid literal for int() with base 10: 'many'"),
    ]
    for argv, message in cases:
        with pytest.raises(SaesteerError) as exc:
            parse(command("generate"), ["hi", *argv])
        assert str(exc.value) == message
