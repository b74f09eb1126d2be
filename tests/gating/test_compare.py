"""Variant comparison, fit-gate and steering with a gate read back from its file (tiny models)."""

from __future__ import annotations

import json

import pytest

from saesteer.gating import GateData, VariantSpec, compare_variants, fit_gate, load_gate, variant_table
from saesteer.gating.threshold import Objective, choose_threshold
from saesteer.model.generation import GenerationConfig, generate
from saesteer.sae.io import save_sae
from saesteer.steering import ClampFeature, Steering, prompt_scores
from tests.gating.prompts import ALPACA, HARD, HARMFUL
from tests.steering.helpers import tiny_sae

HOOK = "blocks.1.hook_resid_post"
SPECS = [
    VariantSpec("probe", HOOK, "instruction"),
    VariantSpec("probe_alpaca", HOOK, "template"),
    VariantSpec("harm_direction", HOOK, "instruction"),
    VariantSpec("refusal_direction", "blocks.0.hook_resid_post", "template_last"),
    VariantSpec("latent_probe", HOOK, "mean"),
    VariantSpec("judge"),
]


@pytest.fixture
def data() -> GateData:
    return GateData(HARMFUL, HARD, ALPACA, sources={"harmful": ["t"], "hard": ["t"], "alpaca": ["t"]})


def test_compare_measures_what_the_gate_does(chat_model, qwen_tokenizer, data):  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", 1, d_in=32, k=8)
    obj = Objective(1.0, 2.0)
    results = compare_variants(chat_model, qwen_tokenizer, data, SPECS, obj, sae=sae, l1=0.01)
    assert [r.spec.name for r in results] == [s.name for s in SPECS]
    _, cal = data.split()
    for r in results:
        assert r.ms_per_prompt > 0 and {n for _, n in r.fired.values()} <= {
            len(cal.harmful),
            len(cal.hard),
            len(cal.alpaca),
        }
        if r.spec.kind == "judge":
            assert r.gate is None
            continue
        # the gate, run through the steering path on the calibration prompts, fires exactly as measured
        scores = {role: prompt_scores(chat_model, qwen_tokenizer, cal.role(role), r.gate) for role in r.fired}
        for role, s in scores.items():
            assert int(r.gate.decide(s).sum()) == r.fired[role][0], (r.spec.name, role)
        assert r.threshold == pytest.approx(
            choose_threshold(scores["harmful"], scores["hard"], scores["alpaca"], obj), abs=1e-4
        )
    latent = results[4]
    assert latent.features and latent.features == latent.gate.scorer.features
    headers, rows = variant_table(results)
    assert len(rows) == len(SPECS) and all(len(row) == len(headers) for row in rows)


def test_fit_gate_file_steers_only_where_it_fires(chat_model, qwen_tokenizer, data, tmp_path):  # type: ignore[no-untyped-def]
    res = fit_gate(chat_model, qwen_tokenizer, data, SPECS[:3], out=tmp_path / "g.safetensors", model_name="tiny")
    gate = load_gate(tmp_path / "g.safetensors")
    assert gate.threshold == res.chosen.threshold and gate.hook == HOOK
    prompts = HARMFUL[:4] + HARD[:4]
    s = prompt_scores(chat_model, qwen_tokenizer, prompts, gate).sort().values
    gate = gate.with_threshold(float(s[3] + s[4]) / 2)  # half the prompts fire, so both branches are exercised
    fired = gate.decide(prompt_scores(chat_model, qwen_tokenizer, prompts, gate)).tolist()
    assert sum(fired) == 4
    sae = tiny_sae("topk", 2, d_in=32)
    cfg = GenerationConfig(max_new_tokens=4, batch_size=8)
    base = generate(chat_model, qwen_tokenizer, prompts, cfg)
    with Steering(chat_model, sae, [ClampFeature(3, 40.0)]).apply():
        always = generate(chat_model, qwen_tokenizer, prompts, cfg)
    with Steering(chat_model, sae, [ClampFeature(3, 40.0)], gate=gate).apply():
        gated = generate(chat_model, qwen_tokenizer, prompts, cfg)
    assert base != always
    assert gated == [a if f else b for a, b, f in zip(always, base, fired, strict=True)]


def test_fit_gate_command(chat_model, qwen_tokenizer, tmp_path, capsys):  # type: ignore[no-untyped-def]
    from saesteer.cli.main import main

    chat_model.save_pretrained(tmp_path / "m")
    qwen_tokenizer.save_pretrained(tmp_path / "m")
    save_sae(tiny_sae("topk", 1, d_in=32, k=8), tmp_path / "sae")
    out = tmp_path / "gate.safetensors"
    argv = ["fit-gate", "--model", str(tmp_path / "m"), "--dtype", "fp32", "--device", "cpu", "--data-dir", "none",
            "--n", "16", "--layers", "0", "1", "--sae", str(tmp_path / "sae"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = json.loads((tmp_path / "gate.variants.json").read_text())
    names = [v["variant"] for v in table["variants"]]
    assert "judge" in names and "latent_probe@1:instruction" in names and "probe@0:template" in names
    head = load_gate(out)
    assert head.hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
    assert "written to" in capsys.readouterr().out
    assert main([*argv[:-2], "--out", str(out), "--variant", "judge"]) == 2  # the judge is not a steering-hook gate


def test_gate_dev_data_is_dev_only_and_leaves_do_not_answer_unseen() -> None:
    from saesteer.evaluation.datafiles import data_dir
    from saesteer.evaluation.splits import SplitRegistry, text_hash
    from saesteer.gating import gate_dev_data

    if data_dir() is None:
        pytest.skip("no data directory (set SAESTEER_DATA_DIR)")
    reg = SplitRegistry()
    data = gate_dev_data(n=40, seed=1, registry=reg)
    assert (len(data.harmful), len(data.hard), len(data.alpaca)) == (40, 40, 40)
    used = {text_hash(t) for role in ("harmful", "hard", "alpaca") for t in data.role(role)}
    assert not used & reg.test_universe()  # no prompt of any test split
    assert not used & {text_hash(p.text) for p in reg.part("donotanswer", "dev")}  # the unseen set stays unseen
    assert reg.to_json()["purposes"]["gate"]["counts"]["xstest:safe"] > 0
