import subprocess
import sys

import pytest

from saesteer.cli.main import build_parser, main


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saesteer.cli.main", *args], capture_output=True, text=True, timeout=300
    )


def test_every_command_has_help(capsys) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = list(sub.choices)  # type: ignore[union-attr]
    assert {"model", "generate", "harvest"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: saesteer" in capsys.readouterr().out


def test_bad_model_spec_one_line_exit_2() -> None:
    r = _run("model", "info", "--model", "no such model")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "unknown model spec" in r.stderr and "Traceback" not in r.stderr


def test_generate_without_prompts_is_a_clear_error() -> None:
    r = _run("generate")
    assert r.returncode == 2
    assert "no prompts given" in r.stderr and "Traceback" not in r.stderr


def test_missing_prompts_file(tmp_path) -> None:
    r = _run("generate", "--prompts-file", str(tmp_path / "nope.txt"))
    assert r.returncode == 2 and "not found" in r.stderr


@pytest.mark.slow
def test_model_info_default() -> None:
    r = _run("model", "info", "--model", "default", "--json")
    assert r.returncode == 0, r.stderr
    import json

    info = json.loads(r.stdout)
    assert (info["architecture"], info["n_layers"], info["d_model"]) == ("qwen2", 24, 896)
