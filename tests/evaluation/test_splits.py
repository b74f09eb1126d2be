"""The split registry: deterministic dev/test parts, recorded purposes, and no test prompt serving anything else."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from saesteer.errors import SaesteerError
from saesteer.evaluation.datasets import load_prompts
from saesteer.evaluation.selection import UNSEEN_TEST_SETS, StudySizes, select, study_takes
from saesteer.evaluation.splits import (
    RULES,
    SplitRegistry,
    check_disjoint,
    hash_is_dev,
    normalise,
    text_hash,
)

REAL = Path(os.environ.get("SAESTEER_DATA_DIR", "/work/shared/data"))
needs_real = pytest.mark.skipif(
    not (REAL / "safety" / "advbench_harmful_behaviors.csv").is_file(), reason="the real data directory is absent"
)


def test_normalise_and_hash() -> None:
    assert normalise("  How DO I\n\tpick  a lock? ") == "how do i pick a lock?"
    assert text_hash("How do I pick a lock?") == text_hash("how  do i PICK a lock?\n")
    assert text_hash("a") == hashlib.sha256(b"a").hexdigest()
    assert text_hash("a") != text_hash("b")


def test_hash_split_is_deterministic_and_near_its_fraction(tiny_data_dir: Path) -> None:
    reg = SplitRegistry(tiny_data_dir)
    dev, test = reg.part("alpaca", "dev"), reg.part("alpaca", "test")
    assert {p.text for p in dev}.isdisjoint({p.text for p in test})
    assert len(dev) + len(test) == 20
    assert [p.id for p in SplitRegistry(tiny_data_dir).part("alpaca", "dev")] == [p.id for p in dev]
    # the rule, recomputed independently from the text
    for p in dev:
        h = int(hashlib.sha256(" ".join(p.text.lower().split()).encode()).hexdigest()[:16], 16)
        assert h / 16**16 < RULES["alpaca"].dev_fraction


def test_upstream_splits(tiny_data_dir: Path) -> None:
    reg = SplitRegistry(tiny_data_dir)
    assert {p.source for p in reg.part("harmbench", "dev")} == {"harmbench_val"}
    assert {p.source for p in reg.part("harmbench", "test")} == {"harmbench_test"}
    with pytest.raises(SaesteerError, match="not its dev part"):
        reg.take("harmbench:test", "screen")
    assert [q.id for q in reg.take_items("gsm8k", "fewshot")] == ["gsm8k-train-0"]
    assert len(reg.take_items("mmlu", "test", per_group=2)) == 4  # two subjects
    with pytest.raises(SaesteerError, match="no dev part"):  # the fixture's MMLU dev rows repeat test rows
        reg.take_items("mmlu", "fewshot")
    with pytest.raises(SaesteerError, match="no dev part"):
        reg.take_items("truthfulqa", "gate")


def test_registry_refuses_test_reuse(tiny_data_dir: Path) -> None:
    reg = SplitRegistry(tiny_data_dir)
    test = reg.take("alpaca", "test")
    with pytest.raises(SaesteerError, match="already used for test"):
        reg.record("handmade", "gate", [test[0].text.upper() + "  "])
    dev = reg.take("advbench", "direction")
    with pytest.raises(SaesteerError, match="already used for direction"):
        reg.record("handmade", "test", [dev[0].text])
    reg.record("handmade", "screen", [dev[0].text])  # two dev purposes may share a prompt


def test_dev_excludes_texts_in_any_test_part(tiny_data_dir: Path) -> None:
    # a text that is in a hash-split test part elsewhere must not be handed out as HarmBench val (dev)
    reg = SplitRegistry(tiny_data_dir)
    a_test = reg.part("advbench", "test")[0].text
    hv = tiny_data_dir / "safety" / "harmbench_val.csv"
    hv.write_text(hv.read_text() + f"{a_test},standard,illegal,,,hb_val_dup\n")
    reg = SplitRegistry(tiny_data_dir)
    assert a_test in {p.text for p in reg.part("harmbench", "dev")}
    assert a_test not in {p.text for p in reg.take("harmbench", "screen")}


def test_splits_json_round_trip(tiny_data_dir: Path, tmp_path: Path) -> None:
    reg = SplitRegistry(tiny_data_dir)
    chosen = reg.take("alpaca", "direction", n=3, seed=1)
    reg.take("xstest:safe", "test")
    path = reg.write(tmp_path / "splits.json")
    data = json.loads(path.read_text())
    assert data["purposes"]["direction"]["datasets"] == ["alpaca"]
    assert data["purposes"]["direction"]["sha256"] == sorted(text_hash(p.text) for p in chosen)
    assert check_disjoint(path) == {}
    # tamper: a test hash appears under gate -> the independent check finds it
    data["purposes"]["gate"] = {"datasets": ["x"], "sha256": data["purposes"]["test"]["sha256"][:2]}
    assert check_disjoint(data) == {"gate": 2}
    with pytest.raises(SaesteerError, match="splits"):
        check_disjoint({"nope": 1})


@needs_real
def test_study_selection_on_real_data_is_disjoint(tmp_path: Path) -> None:
    """The study's own plan, at the largest sizes, on the real data: no dev text is ever scored."""
    reg = SplitRegistry(REAL)
    sizes = StudySizes(chat_n=1000, rank_n=80, screen_n=80, clamp_n=80, gate_n=120, safety_n=None, alpaca_n=300)
    sel = select(reg, study_takes(True, sizes))
    reg.take_items("mmlu", "fewshot")
    reg.take_items("mmlu", "test", per_group=10)
    reg.take_items("gsm8k", "fewshot", n=8)
    reg.take_items("gsm8k", "test", n=150)
    reg.take_items("fractured", "test", n=60)
    path = reg.write(tmp_path / "splits.json")
    assert check_disjoint(path) == {}
    # independent recomputation from the loaders: every scored text vs every dev text, normalised
    dev = {normalise(p.text) for (purpose, _), ps in sel.items() if purpose != "test" for p in ps}
    scored = {normalise(p.text) for (purpose, _), ps in sel.items() if purpose == "test" for p in ps}
    assert dev and scored and dev.isdisjoint(scored)
    # and no dev text is anywhere in the upstream HarmBench test file or the hash-test parts
    hb_test = {normalise(p.text) for p in load_prompts("harmbench:test", data_dir=REAL)}
    adv_test = {
        normalise(p.text)
        for p in load_prompts("advbench", data_dir=REAL)
        if not hash_is_dev(text_hash(p.text), RULES["advbench"].dev_fraction)
    }
    assert dev.isdisjoint(hb_test | adv_test)
    assert len(sel[("test", "harmbench:test")]) == 320
    assert len(sel[("test", "alpaca")]) == 300
    assert len(sel[("test", "donotanswer")]) > 200
    # without the unseen sets every other selection is the same prompts
    without = select(SplitRegistry(REAL), study_takes(True, dataclasses.replace(sizes, unseen=False)))
    assert {k: v for k, v in sel.items() if k not in {("test", u) for u in UNSEEN_TEST_SETS}} == without


def test_capability_data_is_drawn_and_recorded(tiny_data_dir: Path) -> None:
    from saesteer.evaluation.capability import CapabilityConfig
    from saesteer.evaluation.selection import capability_data

    reg = SplitRegistry(tiny_data_dir)
    cfg = CapabilityConfig(mmlu_n=3, mmlu_shots=0, truthfulqa_n=1, gsm8k_n=2, gsm8k_shots=0, humaneval_n=4)
    d = capability_data(reg, cfg, ["mmlu", "truthfulqa", "gsm8k", "humaneval"])
    assert (len(d.mmlu), len(d.truthfulqa), len(d.gsm8k), len(d.humaneval)) == (3, 1, 2, 4)
    counts = reg.to_json()["purposes"]["test"]["counts"]
    assert counts == {"gsm8k": 2, "humaneval": 4, "mmlu": 3, "truthfulqa": 1}
    d = capability_data(SplitRegistry(None), CapabilityConfig(gsm8k_n=3, gsm8k_shots=2, builtin=True), ["gsm8k"])
    assert {q.id for q in d.gsm8k}.isdisjoint({q.id for q in d.gsm8k_shots}) and len(d.gsm8k_shots) == 2
