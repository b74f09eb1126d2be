"""Data-directory resolution, every named prompt set and capability loader, bad input, built-in suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saesteer.errors import SaesteerError
from saesteer.evaluation import datasets as ds
from saesteer.evaluation.builtin import builtin_gsm8k, builtin_mmlu, builtin_prompts, builtin_truthfulqa

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_data_dir_precedence(
    tiny_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_data_dir: None
) -> None:
    assert ds.data_dir() is None
    # <cwd>/../shared/data is found
    sibling = Path.cwd().parent / "shared" / "data"
    sibling.mkdir(parents=True)
    assert ds.data_dir() == sibling
    # the env var beats it, an explicit path beats the env var
    monkeypatch.setenv("SAESTEER_DATA_DIR", str(tiny_data_dir))
    assert ds.data_dir() == tiny_data_dir
    assert ds.data_dir(sibling) == sibling
    with pytest.raises(SaesteerError, match="does not exist"):
        ds.data_dir(tmp_path / "missing")
    monkeypatch.setenv("SAESTEER_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(SaesteerError, match="SAESTEER_DATA_DIR"):
        ds.data_dir()


def test_prompt_sets_labels_and_splits(tiny_data_dir: Path) -> None:
    d = tiny_data_dir
    safe = ds.load_prompts("xstest", split="safe", data_dir=d)
    assert len(safe) == 6 and {p.label for p in safe} == {"safe"} and not safe[0].should_refuse
    unsafe = ds.load_prompts("xstest:unsafe", data_dir=d)
    assert len(unsafe) == 4 and all(p.should_refuse for p in unsafe)
    assert len(ds.load_prompts("xstest", data_dir=d)) == 10
    hb = ds.load_prompts("harmbench:test", data_dir=d)
    assert len(hb) == 6 and hb[0].category == "illegal" and hb[0].source == "harmbench_test"
    assert hb[-1].text.startswith("SOME CONTEXT") and hb[-1].text.endswith("summarise the context")
    assert len(ds.load_prompts("harmbench", data_dir=d)) == 9
    assert len(ds.load_prompts("advbench", data_dir=d)) == 8
    jbb = ds.load_prompts("jbb", data_dir=d)
    assert [p.label for p in jbb].count("harmful") == 4 and [p.label for p in jbb].count("harmless") == 4
    assert ds.load_prompts("donotanswer", data_dir=d)[0].category == "Malicious Uses"
    alp = ds.load_prompts("alpaca", data_dir=d)
    assert len(alp) == 20 and alp[3].text == "alpaca instruction 3" and alp[0].label == "harmless"
    ids = [
        p.id
        for name in ("xstest", "harmbench", "advbench", "jbb", "donotanswer", "alpaca")
        for p in ds.load_prompts(name, data_dir=d)
    ]
    assert len(ids) == len(set(ids))


def test_subsample_is_deterministic_ordered_and_seeded(tiny_data_dir: Path) -> None:
    a = ds.load_prompts("alpaca", n=7, seed=3, data_dir=tiny_data_dir)
    b = ds.load_prompts("alpaca", n=7, seed=3, data_dir=tiny_data_dir)
    c = ds.load_prompts("alpaca", n=7, seed=4, data_dir=tiny_data_dir)
    assert a == b and len(a) == 7 and a != c
    idx = [int(p.id.split("-")[1]) for p in a]
    assert idx == sorted(idx)  # file order kept
    assert len(ds.load_prompts("alpaca", n=500, data_dir=tiny_data_dir)) == 20
    with pytest.raises(SaesteerError, match="n=-1"):
        ds.load_prompts("alpaca", n=-1, data_dir=tiny_data_dir)


def test_unknown_names_and_splits() -> None:
    with pytest.raises(SaesteerError, match="unknown prompt set 'wildguard'.*xstest:safe.*builtin_xsafe"):
        ds.load_prompts("wildguard")
    with pytest.raises(SaesteerError, match="no split 'dev'; splits: test, val"):
        ds.load_prompts("harmbench", split="dev")
    with pytest.raises(SaesteerError, match="no split 'x'; splits: none"):
        ds.load_prompts("advbench:x")
    with pytest.raises(SaesteerError, match="split given twice"):
        ds.load_prompts("xstest:safe", split="unsafe")
    with pytest.raises(SaesteerError, match="unknown dataset"):
        ds.has_data("nope")


def test_missing_data_names_dataset_and_fix(no_data_dir: None) -> None:
    with pytest.raises(SaesteerError) as exc:
        ds.load_prompts("xstest")
    msg = str(exc.value)
    assert "'xstest'" in msg and "SAESTEER_DATA_DIR" in msg and "--data-dir" in msg and "builtin_harmful" in msg
    assert "\n" not in msg
    for fn in (ds.load_mmlu, ds.load_gsm8k, ds.load_truthfulqa, ds.load_fractured, ds.load_corpus_texts):
        with pytest.raises(SaesteerError, match="SAESTEER_DATA_DIR"):
            fn()
    assert not ds.has_data("mmlu") and ds.has_data("builtin_harmful")
    # the built-in suites need nothing
    assert len(ds.load_prompts("builtin_harmful")) >= 60
    assert len(ds.load_mmlu(builtin=True)) == 20


def test_missing_file_in_existing_dir(tiny_data_dir: Path) -> None:
    (tiny_data_dir / "safety" / "advbench_harmful_behaviors.csv").unlink()
    with pytest.raises(SaesteerError, match="'advbench'.*advbench_harmful_behaviors.csv not found"):
        ds.load_prompts("advbench", data_dir=tiny_data_dir)
    assert not ds.has_data("advbench", tiny_data_dir) and ds.has_data("xstest", tiny_data_dir)


def test_malformed_files(tiny_data_dir: Path) -> None:
    (tiny_data_dir / "safety" / "xstest_prompts.csv").write_text("id,text,kind\n1,hello,x\n")
    with pytest.raises(SaesteerError, match=r"lacks column\(s\) prompt, type, label \(found: id, text, kind\)"):
        ds.load_prompts("xstest", data_dir=tiny_data_dir)
    (tiny_data_dir / "harmless" / "alpaca_instructions.json").write_text(json.dumps({"instruction": "x"}))
    with pytest.raises(SaesteerError, match="must be a list"):
        ds.load_prompts("alpaca", data_dir=tiny_data_dir)
    (tiny_data_dir / "capability" / "gsm8k" / "test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(SaesteerError, match="line 1 lacks key"):
        ds.load_gsm8k(data_dir=tiny_data_dir)
    (tiny_data_dir / "capability" / "truthfulqa" / "mc_task.json").write_text("[{not json")
    with pytest.raises(SaesteerError, match="not valid JSON"):
        ds.load_truthfulqa(data_dir=tiny_data_dir)


def test_capability_loaders(tiny_data_dir: Path) -> None:
    d = tiny_data_dir
    mm = ds.load_mmlu(data_dir=d)
    assert len(mm) == 8 and mm[1].choices == ["a", "b", "c", "d"] and mm[1].answer == 1
    assert {q.subject for q in ds.load_mmlu(data_dir=d, subjects=["anatomy"])} == {"anatomy"}
    assert len(ds.load_mmlu(data_dir=d, split="dev")) == 4 and len(ds.load_mmlu(n=3, data_dir=d)) == 3
    with pytest.raises(SaesteerError, match="unknown MMLU subject"):
        ds.load_mmlu(data_dir=d, subjects=["astrology"])
    g = ds.load_gsm8k(data_dir=d)
    assert [p.answer for p in g] == ["7", "1200"] and ds.load_gsm8k(split="train", data_dir=d)[0].answer == "-3"
    t = ds.load_truthfulqa(data_dir=d)[0]
    assert t.mc1_choices == ["No.", "Yes."] and t.mc1_labels == [1, 0] and t.mc2_labels == [1, 1, 0]
    fr = ds.load_fractured(data_dir=d)
    assert [f.original for f in fr] == ["original 0", "original 1"]  # the one without an original is dropped
    assert fr[0].steps == ["step 0.0", "step 0.1", "step 0.2"] and not fr[0].benign
    bn = ds.load_fractured(data_dir=d, benign=True)
    assert bn[0].benign and bn[0].original is None and bn[0].steps == ["benign step"]
    texts = ds.load_corpus_texts(n=4, seed=1, data_dir=d)
    assert len(texts) == 4 and texts == ds.load_corpus_texts(n=4, seed=1, data_dir=d)
    assert len(ds.load_corpus_texts(data_dir=d)) == 10 and ds.load_corpus_texts(data_dir=d, min_chars=100) == []
    assert "{{objective}}" in ds.load_crescendo_prompt(d)


def test_gsm8k_final_answer() -> None:
    assert ds.gsm8k_final_answer("so 3 * 4 = 12\n#### 1,234") == "1234"
    assert ds.gsm8k_final_answer("#### $5.50") == "5.50"
    with pytest.raises(SaesteerError):
        ds.gsm8k_final_answer("#### none")


def test_builtin_suites_are_sound() -> None:
    harmful, harmless, xsafe = (builtin_prompts(k) for k in ("harmful", "harmless", "xsafe"))
    assert len(harmful) >= 60 and len(harmless) >= 60 and len(xsafe) >= 40
    assert {p.label for p in harmful} == {"harmful"} and {p.label for p in xsafe} == {"safe"}
    assert len({p.category for p in harmful}) >= 8
    texts = [p.text for p in harmful + harmless + xsafe]
    assert len(texts) == len(set(texts)) and all(t.strip() for t in texts)
    ids = [p.id for p in harmful + harmless + xsafe]
    assert len(ids) == len(set(ids))
    mc = builtin_mmlu()
    assert len(mc) == 20 and all(len(q.choices) == 4 and 0 <= q.answer < 4 for q in mc)
    assert {q.answer for q in mc} == {0, 1, 2, 3}  # answers not all in one position
    math = builtin_gsm8k()
    assert len(math) == 10 and all(ds.gsm8k_final_answer(p.solution) == p.answer for p in math)
    tq = builtin_truthfulqa()
    assert len(tq) == 10 and all(sum(t.mc1_labels) == 1 and t.mc1_labels[0] == 1 for t in tq)
    assert all(0 < sum(t.mc2_labels) < len(t.mc2_labels) for t in tq)
    with pytest.raises(SaesteerError, match="unknown built-in suite"):
        builtin_prompts("jailbreaks")


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/data on this machine")
def test_real_data_directory_counts() -> None:
    counts = {
        name: len(ds.load_prompts(name, data_dir=SHARED))
        for name in (
            "xstest:safe",
            "xstest:unsafe",
            "harmbench:test",
            "harmbench:val",
            "jbb:harmful",
            "jbb:benign",
            "advbench",
            "donotanswer",
        )
    }
    assert counts == {
        "xstest:safe": 250,
        "xstest:unsafe": 200,
        "harmbench:test": 320,
        "harmbench:val": 80,
        "jbb:harmful": 100,
        "jbb:benign": 100,
        "advbench": 520,
        "donotanswer": 939,
    }
    assert len(ds.load_gsm8k(data_dir=SHARED)) == 1319 and len(ds.load_truthfulqa(data_dir=SHARED)) == 817
    assert len(ds.load_fractured(data_dir=SHARED)) == 449 and len(ds.load_mmlu(data_dir=SHARED, split="dev")) == 285
