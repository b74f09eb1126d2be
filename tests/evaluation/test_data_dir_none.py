from saesteer.evaluation.datafiles import data_dir
from saesteer.evaluation.datasets import load_prompts


def test_none_means_builtin_suites(monkeypatch, tmp_path) -> None:
    assert data_dir("none") is None and data_dir("NONE") is None
    monkeypatch.setenv("SAESTEER_DATA_DIR", "none")
    assert data_dir() is None
    assert len(load_prompts("builtin_harmful")) >= 50
    monkeypatch.setenv("SAESTEER_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
