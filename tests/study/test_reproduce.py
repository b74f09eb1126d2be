"""The whole study on a tiny random model with the real tokenizer: every stage runs, caches and resumes."""

import dataclasses
import json
from pathlib import Path

import pytest

from saesteer.evaluation.datasets import data_dir
from saesteer.evaluation.splits import check_disjoint
from saesteer.model.loading import load
from saesteer.study.config import StudyConfig
from saesteer.study.run import run_study
from tests.conftest import tiny_model


@pytest.fixture
def tiny_lm(tmp_path: Path, qwen_tokenizer):
    model = tiny_model("qwen2", vocab_size=len(qwen_tokenizer))
    model.config.num_hidden_layers = 4
    model.save_pretrained(tmp_path / "tiny")
    qwen_tokenizer.save_pretrained(tmp_path / "tiny")
    return load(str(tmp_path / "tiny"), dtype="fp32", device="cpu")


def tiny_config(out: Path, data: str, **extra) -> StudyConfig:
    return StudyConfig.from_profile(
        "tiny",
        {
            "out_dir": str(out),
            "hook": "blocks.2.hook_resid_post",
            "data_dir": data,
            "train": {"d_sae": 128, "k": 8},
            "harvest.n_tokens": 20_000,
            "sweep.clamp_values": [1.0, 2.0],
            "generation.batch_size": 8,
            **extra,
        },
    )


@pytest.mark.parametrize("with_data", [True, False], ids=["data-dir", "built-in"])
def test_reproduce_tiny_end_to_end_and_resume(tmp_path: Path, tiny_lm, with_data: bool, monkeypatch) -> None:
    root = data_dir()
    if with_data and root is None:
        pytest.skip("no data directory")
    if not with_data:
        monkeypatch.setenv("SAESTEER_DATA_DIR", "none")
    # the built-in run also repeats SAE, discovery and the headline clamp under a second seed
    cfg = tiny_config(tmp_path / "run", str(root) if with_data else "none", seeds=1 if with_data else 2)
    report = run_study(tiny_lm, cfg)
    md = (report / "report.md").read_text()
    names = {p.name for p in report.iterdir()}
    assert {"features.md", "sae_metrics.json", "splits.json", "resolved_config.json", ".saesteer-report"} <= names
    # the report opens with the headline and its plots, then the findings; no raw JSON blob in the setup
    assert md.index("## Headline") < md.index("## Findings") < md.index("## Setup") < md.index("## Details")
    assert "{" not in md[md.index("## Setup") : md.index("## Details")]
    # dev and test prompts are disjoint, recomputed from splits.json alone
    splits = json.loads((report / "splits.json").read_text())
    assert check_disjoint(splits) == {}
    assert {"sae_chat", "direction", "screen", "clamp_choice", "test"} <= set(splits["purposes"])
    tested = set(splits["purposes"]["test"]["datasets"])
    assert {"humaneval", "mmlu" if with_data else "builtin_mc"} <= tested
    out = Path(cfg.out_dir)
    results = json.loads(next(out.glob("sweep-*/results.json")).read_text())
    metrics = {r["metric"] for r in results["rows"]}
    assert {"unsafe_refusal", "safe_refusal", "mmlu", "gsm8k", "humaneval", "kl", "delta_ce"} <= metrics
    assert ("fractured_asr" in metrics) == with_data  # FRACTURED-SORRY-Bench has no built-in stand-in
    # the generalisation sets (datasets no dev purpose drew from) are scored apart from the pooled safety sets
    assert ({"unseen_unsafe_refusal", "unseen_safe_refusal"} <= metrics) == with_data
    if with_data:
        assert not {"donotanswer", "builtin_harmful", "builtin_harmless"} & set(splits["purposes"]["gate"]["datasets"])
        gates = md[md.index("**Gates on the test splits**") :]
        assert "| condition | gain kept | over-refusal, look-alikes | over-refusal, Alpaca |" in gates
        # every dev variant on test, composed from baseline and clamp outcomes: on the chosen variant the
        # composition reproduces the sweep's own gated generations item for item
        composed = json.loads(next(out.glob("gate_variants-*/gate_variants.json")).read_text())
        assert len(composed["variants"]) > 1 and "**Every gate variant on the test splits (composed)**" in md
        assert "**Every gate variant's firing rate per test dataset**" in md
        agree, n = next(v for v in composed["variants"] if v["variant"] == composed["chosen"])["composition_check"]
        assert n > 0 and agree == n
        assert all(v["asr_drop"] is not None for v in composed["variants"])  # FRACTURED, generated per variant
        from saesteer.report.results import ResultsTable
        from saesteer.study.gate_table import subset_diff

        table = ResultsTable.load(next(out.glob("sweep-*/results.json")))
        other = next(r.condition for r in table.rows if r.condition != "baseline")
        clamp, base = (table.items(c, "safe_refusal") for c in (other, "baseline"))
        diff = subset_diff(table, "safe_refusal", "baseline", other)  # steered minus baseline
        assert diff is not None and diff.value == pytest.approx(
            (sum(clamp.values()) - sum(base.values())) / len(base)  # type: ignore[union-attr]
        )
    assert all(r["n"] > 0 for r in results["rows"])
    # per-item outcomes behind every safety row (paired intervals), and a firing rate per gated condition
    items = {(i["condition"], i["metric"]): i["values"] for i in results["items"]}
    for r in results["rows"]:
        if r["metric"] in ("unsafe_refusal", "safe_refusal"):
            assert len(items[(r["condition"], r["metric"])]) == r["n"]
    gated = {r["condition"] for r in results["rows"] if r["kind"] == "conditional"}
    assert gated and all(any(m.startswith("gate_firing:") for (c, m) in items if c == g) for g in gated)
    # the dev choice picked the headline clamp, and only its gated versions were scored on test
    choice = json.loads(next(out.glob("choice-*/choice.json")).read_text())
    assert all(choice["clamp"] in g for g in gated)
    derived = json.loads((report / "derived.json").read_text())
    gain = next(d for d in derived if d["condition"] == choice["clamp"])["safety_gain"]
    assert gain["method"].startswith("Tango")
    # the fitted gate: saesteer.gating's variants compared on dev, the best one kept with its dev threshold
    assert list(out.glob("gate_fit-*/gate.safetensors")) and "**Gate variants (dev)**" in md
    sae_metrics = json.loads((report / "sae_metrics.json").read_text())
    assert {"activations", "web", "web_all_positions", "chat"} <= set(sae_metrics)
    # web text and chat fidelity side by side, before and after the KL fine-tune (which trained on real tokens)
    tuned = json.loads((report / "sae_finetune.json").read_text())
    assert tuned["cost"]["tokens"] > 0 and {"web", "chat"} <= set(tuned)
    fid = md[md.index("**SAE fidelity**") :]
    assert "| measure | web text | chat | web text, KL fine-tuned | chat, KL fine-tuned |" in fid
    if not with_data:
        seeds = json.loads((report / "seeds.json").read_text())
        assert [r["seed"] for r in seeds["seeds"]] == [0, 1] and "gain" in seeds
        assert all(r["n_unsafe"] > 0 for r in seeds["seeds"] if r["feature"] is not None)
        assert "**Seeds**" in md and list(out.glob("train_sae_seed1-*/sae"))
    # a second run is served from the stage caches
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")}
    run_study(tiny_lm, cfg)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/stage.json")} == stamps
    if not with_data:  # one seed again, in the same folder: the earlier seed summary does not linger
        single = run_study(tiny_lm, dataclasses.replace(cfg, seeds=1))
        assert not (single / "seeds.json").exists() and "**Seeds**" not in (single / "report.md").read_text()


def test_cpu_profile_shape_skips_what_it_sizes_out(tmp_path: Path, tiny_lm) -> None:
    """The cpu profile's choices on the tiny model: no log-likelihood benchmarks, no fine-tune, FRACTURED only
    under the chosen gate; the report still renders, with HumanEval and the KL/CE measure as capability."""
    root = data_dir()
    if root is None:
        pytest.skip("no data directory")
    sized_out = {"capability.mmlu_n": 0, "capability.truthfulqa_n": 0, "capability.gsm8k_n": 0, "finetune.tokens": 0}
    cfg = tiny_config(tmp_path / "run", str(root), **sized_out, **{"evaluate.variant_attacks": False})
    report = run_study(tiny_lm, cfg)
    md = (report / "report.md").read_text()
    out = Path(cfg.out_dir)
    metrics = {r["metric"] for r in json.loads(next(out.glob("sweep-*/results.json")).read_text())["rows"]}
    assert {"humaneval", "kl", "delta_ce", "fractured_asr"} <= metrics
    assert not {"mmlu", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k"} & metrics
    assert not (report / "sae_finetune.json").exists() and not list(out.glob("sae_finetune-*"))
    composed = json.loads(next(out.glob("gate_variants-*/gate_variants.json")).read_text())
    with_attacks = {v["variant"] for v in composed["variants"] if v.get("asr_drop") is not None}
    assert with_attacks == {composed["chosen"]} and len(composed["variants"]) > 1
    assert "## Headline" in md and "**Every gate variant on the test splits (composed)**" in md
    assert "mmlu" not in set(json.loads((report / "splits.json").read_text())["purposes"]["test"]["datasets"])


def test_full_profile_composes_gated_outcomes_as_generating_them_would(tmp_path: Path, tiny_lm) -> None:
    """The full profile's shortcuts on the tiny model, with one gate as there: a gated condition's safety and
    capability composed from the baseline's and its clamp's outcomes equal generating and scoring it under the
    gate; the clamp value the dev choice did not pick is not scored on test; the gate variants still compose."""
    root = data_dir()
    if root is None:
        pytest.skip("no data directory")
    shortcuts = {"evaluate.compose_gated": True, "evaluate.unchosen": False, "finetune.tokens": 0}
    cfg = tiny_config(tmp_path / "run", str(root), **shortcuts, **{"evaluate.variant_attacks": False})
    cfg.sweep.gate = "fitted"
    report = run_study(tiny_lm, cfg)
    out = Path(cfg.out_dir)
    from saesteer.report.results import ResultsTable

    composed = ResultsTable.load(next(out.glob("sweep-*/results.json")))
    choice = json.loads(next(out.glob("choice-*/choice.json")).read_text())
    steered = {r.condition for r in composed.by_metric("unsafe_refusal") if r.kind != "baseline"}
    assert {c for c in steered if c.startswith(("clamp ", "conditional "))} == {choice["clamp"], choice["gate"]}
    md = (report / "report.md").read_text()
    assert "composed, not generated again" in md and "**Every gate variant on the test splits (composed)**" in md
    variants = json.loads(next(out.glob("gate_variants-*/gate_variants.json")).read_text())["variants"]
    assert not any("composition_check" in v for v in variants)  # nothing generated to check against
    generated_cfg = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, compose_gated=False))
    run_study(tiny_lm, generated_cfg)  # the same stages up to the sweep, then the gated condition generated
    sweeps = sorted(out.glob("sweep-*/results.json"), key=lambda p: p.stat().st_mtime_ns)
    generated = ResultsTable.load(sweeps[-1])
    lines = [len(p.with_name("completions.jsonl").read_text().splitlines()) for p in sweeps]
    assert lines[0] < lines[-1]  # the composed sweep generated no safety completions for the gated condition
    gated = choice["gate"]
    for m in ("unsafe_refusal", "safe_refusal", "mmlu", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k", "humaneval"):
        assert composed.items(gated, m) and composed.items(gated, m) == generated.items(gated, m), m
        a, b = composed.get(gated, m), generated.get(gated, m)
        assert a is not None and b is not None and (a.n, a.score) == (b.n, pytest.approx(b.score)), m
        if m not in ("unsafe_refusal", "safe_refusal"):
            assert composed.get(gated, f"gate_firing:{m}").k == generated.get(gated, f"gate_firing:{m}").k  # type: ignore[union-attr]


def test_report_dir_with_user_files_is_refused_before_any_work(tmp_path: Path, tiny_lm) -> None:
    from saesteer.errors import SaesteerError

    dest = tmp_path / "docs"
    dest.mkdir()
    (dest / "thesis.tex").write_text("years of work")
    cfg = tiny_config(tmp_path / "run", "none", report_dir=str(dest))
    with pytest.raises(SaesteerError, match="not a saesteer report"):
        run_study(tiny_lm, cfg)
    assert [p.name for p in dest.iterdir()] == ["thesis.tex"] and (dest / "thesis.tex").read_text() == "years of work"
    assert not Path(cfg.out_dir).exists()  # nothing ran
