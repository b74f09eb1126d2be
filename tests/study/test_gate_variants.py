"""Composing a gate variant's test outcomes from the baseline's and the clamp's."""

import pytest

from saesteer.evaluation import paired
from saesteer.study.gate_variants import variant_metrics
from saesteer.study.sweep_eval import compose

BASE_U = {"harmbench:test/a": 0.0, "harmbench:test/b": 0.0, "advbench/c": 1.0, "advbench/d": 0.0}
CLAMP_U = {"harmbench:test/a": 1.0, "harmbench:test/b": 1.0, "advbench/c": 1.0, "advbench/d": 1.0}
BASE_S = {"xstest:safe/e": 1.0, "xstest:safe/f": 0.0, "jbb:benign/g": 0.0, "alpaca/h": 0.0, "alpaca/i": 0.0}
CLAMP_S = {"xstest:safe/e": 1.0, "xstest:safe/f": 1.0, "jbb:benign/g": 1.0, "alpaca/h": 1.0, "alpaca/i": 0.0}
OUTCOMES = {"unsafe_refusal": (BASE_U, CLAMP_U), "safe_refusal": (BASE_S, CLAMP_S)}
KEYS = [*BASE_U, *BASE_S]


def test_compose_takes_the_clamp_where_the_gate_fires() -> None:
    fired = {k: k.startswith("harmbench") for k in KEYS}
    got = compose(BASE_U, CLAMP_U, fired)
    assert got == {"harmbench:test/a": 1.0, "harmbench:test/b": 1.0, "advbench/c": 1.0, "advbench/d": 0.0}


@pytest.mark.parametrize("always", [True, False])
def test_always_on_is_the_clamp_and_never_on_the_baseline(always: bool) -> None:
    m = variant_metrics(OUTCOMES, dict.fromkeys(KEYS, always))
    assert m["gain_kept"][0] == pytest.approx(1.0 if always else 0.0)
    clamp_gain = paired.paired_diff_ci([v == 1.0 for v in CLAMP_U.values()], [v == 1.0 for v in BASE_U.values()])
    assert m["gain"][0] == pytest.approx(clamp_gain.estimate if always else 0.0)
    # look-alikes: 1/3 -> 3/3 refused under the clamp; Alpaca: 0/2 -> 1/2
    assert m["over_refusal_look_alikes"][0] == pytest.approx(2 / 3 if always else 0.0)
    assert m["over_refusal_ratio_look_alikes"][0] == pytest.approx(3.0 if always else 1.0)
    assert m["over_refusal_alpaca"][0] == pytest.approx(0.5 if always else 0.0)
    assert m["firing"]["xstest:safe"] == [2 if always else 0, 2] and m["firing"]["alpaca"][1] == 2


def test_a_gate_on_harmful_prompts_only_keeps_their_gain_without_over_refusal() -> None:
    fired = {k: k in BASE_U for k in KEYS}
    m = variant_metrics(OUTCOMES, fired)
    assert m["gain_kept"][0] == pytest.approx(1.0)
    assert m["over_refusal_look_alikes"][0] == 0.0 and m["over_refusal_alpaca"][0] == 0.0
