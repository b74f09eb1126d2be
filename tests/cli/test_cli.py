import json
import subprocess
import sys

import pytest

from saesteer.cli.main import COMMAND_MODULES, main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saesteer.cli.main", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("name", list(COMMAND_MODULES))
def test_every_command_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*name.split(), "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: saesteer {name}" in out and "--config FILE" in out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMAND_MODULES)
    assert main(["model", "--help"]) == 0 and "model info" in capsys.readouterr().out
    assert main([]) == 2


def test_field_help_is_the_option_help(capsys: pytest.CaptureFixture[str]) -> None:
    from saesteer.model.generation import GenerationConfig

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    help_text = GenerationConfig.__dataclass_fields__["batch_size"].metadata["help"]
    assert f"--batch-size INT {help_text}" in out


def test_bad_model_spec_one_line_exit_2() -> None:
    r = _run("model", "info", "--model", "no such model")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "unknown model spec" in r.stderr and "Traceback" not in r.stderr


def test_generate_without_prompts_is_a_clear_error() -> None:
    r = _run("generate")
    assert r.returncode == 2
    assert "no prompts given" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_model_info_default() -> None:
    r = _run("model", "info", "--model", "default", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["architecture"], info["n_layers"], info["d_model"]) == ("qwen2", 24, 896)
