"""The study's nested config: profiles as defaults, overrides by section or dotted key, typos and owned fields refused."""

import dataclasses

import pytest

from saesteer.config import config_to_dict
from saesteer.errors import SaesteerError
from saesteer.study.config import PROFILES, STUDY_OWNED, StudyConfig


def test_profile_sets_nested_defaults_and_overrides_win() -> None:
    cfg = StudyConfig.from_profile("tiny", {"train": {"d_sae": 128}, "harvest.n_tokens": 1234})
    assert cfg.profile == "tiny" and cfg.train.d_sae == 128 and cfg.harvest.n_tokens == 1234
    assert cfg.features.max_screen == PROFILES["tiny"]["features.max_screen"]
    assert cfg.sweep.clamp_units == "max" and cfg.sweep.gate == "fitted,direction:last"
    # from_profile never shares mutable defaults between configs
    other = StudyConfig.from_profile("tiny")
    other.sweep.clamp_values.append(9.0)
    assert 9.0 not in cfg.sweep.clamp_values


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"train.d_sea": 8}, "unknown option 'd_sea'"),
        ({"trian": {"k": 8}}, "unknown option 'trian'"),
        ({"train": 8}, "is a section"),
        ({"seed.x": 1}, "has no sub-options"),
        ({"train.seed": 3}, "train.seed is set by the study; set seed instead"),
        ({"harvest.out_dir": "x"}, "set out_dir instead"),
        ({"seeds": 0}, "seeds=0"),
        ({"seeds": 2, "sae": "some/sae"}, "drop --sae"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(SaesteerError, match=match) as exc:
        StudyConfig.from_profile("cpu", overrides)
    assert "\n" not in str(exc.value)


def test_unknown_profile() -> None:
    with pytest.raises(SaesteerError, match="unknown profile 'fast'; use one of tiny, cpu, gpu, full"):
        StudyConfig.from_profile("fast")


def test_full_profile_reuses_the_cpu_harvest_and_sae() -> None:
    cpu, full = StudyConfig.from_profile("cpu"), StudyConfig.from_profile("full")
    for section in ("harvest", "chat", "train"):
        assert config_to_dict(getattr(cpu, section)) == config_to_dict(getattr(full, section)), section
    assert full.safety.n is None and full.safety.alpaca_n >= 300
    assert full.evaluate.humaneval_n == 164 and full.capability.gsm8k_n >= 150
    assert full.evaluate.mmlu_per_subject * 57 >= 570 and full.capability.mmlu_shots == 5
    assert full.multiturn.n >= 60 and full.evaluate.crescendo_n >= 20


def test_every_owned_field_exists() -> None:
    cfg = StudyConfig()
    for dotted in STUDY_OWNED:
        section, name = dotted.split(".")
        assert name in {f.name for f in dataclasses.fields(getattr(cfg, section))}, dotted


def test_skips_leave_kinds_out_of_capability_and_crescendo() -> None:
    from saesteer.study.design import SweepConfig, build_grid
    from saesteer.study.dev_stages import Choice
    from saesteer.study.sweep_eval import _multiturn_metrics
    from saesteer.study.sweep_stage import capability_conditions

    grid = build_grid(SweepConfig(clamp_values=[4.0, 8.0], gate="direction"), [1234], [77])
    choice = Choice(clamp="clamp f=1234 c=8", gate="conditional clamp f=1234 c=8", dev={})
    cfg = StudyConfig.from_profile("full")
    everything = capability_conditions(cfg, grid, choice)
    assert everything == {
        "baseline", "clamp f=1234 c=8", "conditional clamp f=1234 c=8", "control f=77 c=4", "control f=77 c=8",
        "diff-in-means add 1",
    }  # fmt: skip
    cfg = StudyConfig.from_profile("full", {"evaluate.capability_skip": ["direction", "control"]})
    assert capability_conditions(cfg, grid, choice) == everything - {
        "control f=77 c=4",
        "control f=77 c=8",
        "diff-in-means add 1",
    }
    cfg = StudyConfig.from_profile("full", {"evaluate.crescendo_skip": ["conditional"]})
    by = {c.name: c for c in grid}
    assert _multiturn_metrics(cfg, by["baseline"]) == ("fractured_asr", "crescendo_asr")
    assert _multiturn_metrics(cfg, by["conditional clamp f=1234 c=8"]) == ("fractured_asr",)
    with pytest.raises(SaesteerError, match="unknown condition kind 'gated'; use baseline"):
        StudyConfig.from_profile("full", {"evaluate.crescendo_skip": ["gated"]})
