"""The results viewer over a study folder written with the study's own writers (results table, completion cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from saesteer.config import atomic_write_json, atomic_write_text
from saesteer.errors import SaesteerError
from saesteer.evaluation.datasets import load_prompts
from saesteer.evaluation.safety import CompletionCache, cache_key
from saesteer.model.generation import GenerationConfig
from saesteer.report.results import ResultsTable
from saesteer.study.design import BASELINE, Condition
from tests.app.conftest import build_state

MODEL = "tiny-qwen2"
CLAMP = Condition("clamp f=5 c=2", "refusal_feature", ({"op": "clamp", "feature": 5, "value": 2.0},), None, 5, 2.0)


def write_study(root: Path) -> list[Any]:
    """report/ (md, html, a plot) and one sweep stage: its grid, results with per-item verdicts, completions."""
    rep = root / "report"
    atomic_write_text(rep / "report.md", "# study\n")
    atomic_write_text(rep / "report.html", "<html><body><h1>study</h1></body></html>\n")
    atomic_write_text(rep / "plots" / "pareto.svg", "<svg xmlns='http://www.w3.org/2000/svg'></svg>\n")
    sweep = root / "sweep-0123456789ab"
    prompts = load_prompts("builtin_harmful", n=3, seed=0)
    atomic_write_json(
        sweep / "inputs.json",
        {"inputs": {"grid": [c.to_dict() for c in (BASELINE, CLAMP)], "generation": {"max_new_tokens": 24},
                    "test": {"builtin_harmful": [p.id for p in prompts]}}, "code": "x"},
    )  # fmt: skip
    cache = CompletionCache(sweep / "completions.jsonl")
    gen = GenerationConfig(max_new_tokens=24)
    cache.put_many(
        cache_key(MODEL, "builtin_harmful", gen, BASELINE.key), [(p.id, p.text, "Sure, step one.") for p in prompts]
    )
    cache.put_many(
        cache_key(MODEL, "builtin_harmful", gen, CLAMP.key),
        [(p.id, p.text, "I cannot help with that.") for p in prompts],
    )
    table = ResultsTable.open(sweep / "results.json", meta={"model": MODEL})
    items = {f"builtin_harmful/{p.id}": 0.0 for p in prompts}
    table.add(BASELINE.rate_row("unsafe_refusal", 0, 3, ["builtin_harmful"]), items=items)
    table.add(CLAMP.rate_row("unsafe_refusal", 3, 3, ["builtin_harmful"]))
    return prompts


@pytest.fixture
def results_client(tiny_chat: Any, app_files: Any, tmp_path: Path) -> tuple[Any, list[Any]]:
    from fastapi.testclient import TestClient

    from saesteer.app.server import create_app

    prompts = write_study(tmp_path / "study")
    return TestClient(create_app(build_state(tiny_chat, app_files, study=str(tmp_path / "study")))), prompts


def test_overview_and_files(results_client: Any) -> None:
    c, _ = results_client
    r = c.get("/api/results").json()
    assert r["available"] and set(r["report"]) == {"report.html", "report.md"} and r["plots"] == ["plots/pareto.svg"]
    assert r["conditions"] == ["baseline", "clamp f=5 c=2"] and r["meta"]["model"] == MODEL
    rows = {x["condition"]: x for x in r["table"]}
    assert rows["baseline"]["score"] == 0.0 and rows["clamp f=5 c=2"]["k"] == 3 and rows["baseline"]["n"] == 3
    assert c.get("/api/results/file/report.md").text == "# study\n"
    assert c.get("/api/results/file/plots/pareto.svg").status_code == 200
    for bad in ("../sweep-0123456789ab/results.json", "nothing.md", "%2e%2e/%2e%2e/etc/passwd"):
        r = c.get("/api/results/file/" + bad)
        assert r.status_code == 404 and r.json()["error"]


def test_per_prompt_drill_down(results_client: Any) -> None:
    c, prompts = results_client
    r = c.get("/api/results/prompts").json()
    assert r["total"] == 3 and r["sets"] == ["builtin_harmful"] and r["unmatched_records"] == 0
    by_id = {row["prompt_id"]: row for row in r["rows"]}
    for p in prompts:
        row = by_id[p.id]
        assert row["prompt"] == p.text and row["side"] == "unsafe"
        base, clamp = row["conditions"]["baseline"], row["conditions"]["clamp f=5 c=2"]
        assert base == {"completion": "Sure, step one.", "refused": False, "judge": "study"}
        assert clamp == {"completion": "I cannot help with that.", "refused": True, "judge": "keyword"}
    word = prompts[0].text.split()[-1]
    hits = c.get("/api/results/prompts", params={"q": word}).json()
    assert hits["total"] >= 1 and all(word.lower() in h["prompt"].lower() for h in hits["rows"])
    assert c.get("/api/results/prompts", params={"set": "nope"}).json()["total"] == 0
    assert len(c.get("/api/results/prompts", params={"limit": 2}).json()["rows"]) == 2
    assert c.get("/api/results/prompts", params={"limit": 0}).status_code == 422


def test_no_study(client: Any) -> None:
    assert client.get("/api/results").json()["available"] is False
    assert client.get("/api/results/prompts").json()["total"] == 0
    assert client.get("/api/results/file/report.md").status_code == 404


def test_bad_study_folder(tiny_chat: Any, app_files: Any, tmp_path: Path) -> None:
    with pytest.raises(SaesteerError, match="neither report"):
        build_state(tiny_chat, app_files, study=str(tmp_path))
    with pytest.raises(SaesteerError, match="not a folder"):
        build_state(tiny_chat, app_files, study=str(tmp_path / "missing"))


def test_torn_inputs_file_is_not_a_server_error(tiny_chat: Any, app_files: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from saesteer.app.server import create_app

    write_study(tmp_path / "study")
    (tmp_path / "study" / "sweep-0123456789ab" / "inputs.json").write_text('{"inputs": {"grid": [')
    c = TestClient(create_app(build_state(tiny_chat, app_files, study=str(tmp_path / "study"))))
    assert c.get("/api/results").json()["conditions"] == []
    r = c.get("/api/results/prompts").json()
    assert r["total"] == 0 and r["unmatched_records"] == 6  # no grid: no record can be matched to a condition
