"""The report: all sections in Markdown and HTML, the paper's numbers, findings that follow the data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from saesteer.report.derived import derive
from saesteer.report.findings import findings, trade_off_verdict
from saesteer.report.render import ReportData, build_sections, fmt_seconds, to_html, to_markdown, write_report
from tests.report.helpers import make_table

STAGES = {"harvest": 610.0, "train SAE": 1325.4, "find features": 95.0, "sweep": 1800.0, "report": 3.2}


def _data(overrides: dict | None = None, **kw) -> ReportData:  # type: ignore[no-untyped-def, type-arg]
    table, conds = make_table(overrides=overrides)
    return ReportData(
        table, conds, model_info={"name": "qwen2.5-coder-0.5b-instruct", "layers": 24},
        sae_info={"architecture": "topk", "d_sae": 8192, "k": 32, "hook": "blocks.12.hook_resid_post"},
        feature_info={"refusal": [10], "control": [3]}, stage_seconds=STAGES, **kw,
    )  # fmt: skip


def _text(data: ReportData) -> str:
    return " ".join(findings(data.table, derive(data.table, data.conditions)))


def test_markdown_has_every_section_and_number() -> None:
    data = _data()
    md = to_markdown(data.title, build_sections(data))
    for heading in ("Findings", "Setup", "Summary beside the paper", "Derived metrics", "Results by metric",
                    "Wall time by stage"):  # fmt: skip
        assert f"\n## {heading}\n" in md
    # the paper's numbers
    for s in ("62.0% -> 100.0%", "x3.4", "68.8% -> 36.0%", "82.5% -> 35.6%", "65.0% -> 53.8%", "55.9% -> 32.6%",
              "control feature clamped the same way also degrades"):  # fmt: skip
        assert s in md, s
    # a table per metric with n and the interval: baseline unsafe refusal 124/200 = 62.0%, Wilson [55.1, 68.4]
    assert "| baseline | 200 | 62.0% | [55.1, 68.4] (wilson) | set_a, set_b | 2 |" in md
    assert md.count("| condition | n | score | 95% CI |") == 7
    # setup and stage times
    assert "| d_sae | 8192 |" in md and "| refusal | [10] |" in md
    assert "| train SAE | 22m 05s |" in md and "| total | 1h 03m 54s | 100% |" in md
    # markdown tables stay well formed: every row of a table has as many cells as its header
    for block in re.split(r"\n\n", md):
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        if lines:
            assert len({len(re.split(r"(?<!\\)\|", ln)) for ln in lines}) == 1, block


def test_findings_state_the_trade_off_and_the_goal_with_numbers() -> None:
    text = _text(_data())
    assert "The paper's trade-off reproduced" in text
    assert "clamp f=10 c=8" in text and "62.0% (n=200) to 100.0% (n=200)" in text
    assert "Conditional steering met the goal" in text and "95%" in text  # 72/76 of the gain kept
    assert "x1.20" in text
    assert "as in the paper, 1 of 2 control clamps significantly degraded" in text
    assert "difference-in-means baseline (diff-in-means add 1)" in text
    assert "Multi-turn attack success went from 56.0% (n=100) to 33.0% (n=100)" in text


def test_findings_flip_when_the_numbers_do() -> None:
    # the gate lets through too much over-refusal: goal not met
    text = _text(_data({"conditional clamp f=10 c=8": {"safe_refusal": 40}, "conditional clamp f=10 c=4": {
        "safe_refusal": 40}}))  # fmt: skip
    assert "Conditional steering did not meet the goal" in text and "met the goal (" not in text
    # the clamps barely move refusals: the trade-off did not reproduce
    flat = {"clamp f=10 c=4": {"unsafe_refusal": 126}, "clamp f=10 c=8": {"unsafe_refusal": 128}}
    text = _text(_data(flat))
    assert text.startswith("The paper's trade-off did not reproduce")
    assert "interval includes 0" in text
    # refusals rise but nothing is lost: partly reproduced
    free = {"clamp f=10 c=4": {"safe_refusal": 20, "mmlu": 60, "gsm8k": 50, "truthfulqa_mc2": 45},
            "clamp f=10 c=8": {"safe_refusal": 20, "mmlu": 60, "gsm8k": 50, "truthfulqa_mc2": 45}}  # fmt: skip
    data = _data(free)
    assert _text(data).startswith("The paper's trade-off partly reproduced")
    # controls that cost nothing contradict the paper
    harmless_ctrl = {"control f=3 c=8": {"mmlu": 60, "gsm8k": 50, "truthfulqa_mc2": 45}}
    assert "unlike the paper, none of the 2 control clamps" in _text(_data(harmless_ctrl))


def test_verdict_uses_intervals_not_point_estimates() -> None:
    data = _data()
    d = {x.condition: x for x in derive(data.table, data.conditions)}
    assert trade_off_verdict(d["clamp f=10 c=8"]) == "reproduced"
    assert trade_off_verdict(d["control f=3 c=4"]) == "did not reproduce"  # +1 point, interval spans 0


def test_html_is_self_contained_and_escaped() -> None:
    data = _data(plots={"Pareto <front>": "plots/pareto.svg"}, notes=["judge: **keyword**", "<script>x</script>"])
    page = to_html(data.title, build_sections(data))
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # no CDN or remote asset
    assert '<img src="plots/pareto.svg" alt="Pareto &lt;front&gt;">' in page
    assert "<strong>keyword</strong>" in page
    for heading in ("Findings", "Summary beside the paper", "Derived metrics", "Wall time by stage", "Notes"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("<table>") == 3 + 1 + 1 + 7 + 1  # setup x3, summary, derived, per metric x7, stages


def test_write_report_with_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = write_report(tmp_path / "report", _data())
    md = (tmp_path / "report" / "report.md").read_text()
    assert "![Safety gain vs capability loss (Pareto front ringed)](plots/pareto.svg)" in md
    for link in re.findall(r"\]\((plots/[^)]+)\)", md):  # every relative link resolves
        assert (tmp_path / "report" / link).is_file()
    assert written["pareto.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "derived.json").is_file()


def test_write_report_without_plots(tmp_path: Path) -> None:
    written = write_report(tmp_path, _data(), plots="off")
    assert sorted(written) == ["derived.json", "report.html", "report.md"]
    assert not (tmp_path / "plots").exists() and "## Plots" not in (tmp_path / "report.md").read_text()


def test_fmt_seconds() -> None:
    assert [fmt_seconds(s) for s in (4.4, 65, 3600 + 62)] == ["4s", "1m 05s", "1h 01m 02s"]
