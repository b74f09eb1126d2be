"""Gate consistency on log-likelihood benchmarks: one decision per question, shared by all its options."""

from __future__ import annotations

from typing import Any

import torch

from saesteer.evaluation.capability import CapabilityConfig, load_capability_data, mc_block, run_capability
from saesteer.evaluation.gated import gate_decisions
from saesteer.steering import AddDirection, Steering
from saesteer.steering.gate import Gate, ProjectionScorer, prompt_scores

HOOK = "blocks.1.hook_resid_post"


def test_one_gate_decision_per_question(tiny_qwen_chat: tuple[Any, Any]) -> None:
    model, tok = tiny_qwen_chat
    cfg = CapabilityConfig(mmlu_n=10, mmlu_shots=0, builtin=True, batch_size=4)
    data = load_capability_data(cfg, ["mmlu"])
    r = torch.randn(64, generator=torch.Generator().manual_seed(0))
    gate = Gate(ProjectionScorer(torch.randn(64, generator=torch.Generator().manual_seed(1))), 0.0, HOOK, "mean")
    scores = prompt_scores(model, tok, [mc_block(q) for q in data.mmlu], gate)
    mid = scores.sort().values[4:6]
    gate = gate.with_threshold(float(mid.mean()))  # half the questions fire, none sits at the threshold
    edits = [AddDirection(r, 8.0)]
    gated = Steering(model, None, edits, hook=HOOK, gate=gate)
    always = Steering(model, None, edits, hook=HOOK)

    fired = gate_decisions(model, tok, gate, [mc_block(q) for q in data.mmlu])
    assert 0 < sum(fired) < len(fired)
    res = run_capability(model, tok, cfg, ["mmlu"], steering=gated, data=data)["mmlu"]
    on = run_capability(model, tok, cfg, ["mmlu"], steering=always, data=data)["mmlu"]
    off = run_capability(model, tok, cfg, ["mmlu"], data=data)["mmlu"]

    assert [rec["id"] for rec in res.records] == [q.id for q in data.mmlu]
    for rec, a, b, f in zip(res.records, on.records, off.records, fired, strict=True):
        expect = a if f else b  # every option of the question under one condition
        assert torch.allclose(torch.tensor(rec["loglik"]), torch.tensor(expect["loglik"]), atol=1e-4)
        assert not torch.allclose(torch.tensor(a["loglik"]), torch.tensor(b["loglik"]), atol=1e-3)  # steering bites
    assert res.settings["gate"]["fired"] == sum(fired) and res.settings["gate"]["n"] == len(fired)
    assert res.score == sum(rec["correct"] for rec in res.records) / len(res.records)
