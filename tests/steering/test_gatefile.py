"""One gate, one file: round trips of linear and latent-probe gates, provenance, bad files."""

from __future__ import annotations

import math

import pytest
import torch

from saesteer.errors import SaesteerError
from saesteer.sae.io import save_sae
from saesteer.steering import Gate, ProjectionScorer
from saesteer.steering.gate import LatentProbeScorer
from saesteer.steering.gatefile import load_gate, read_gate_header, save_gate
from tests.steering.helpers import tiny_sae

X = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(0))
REAL = torch.tensor([[1] * 7, [0, 0] + [1] * 5, [0] + [1] * 6], dtype=torch.bool)


def test_linear_gate_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gate = Gate(ProjectionScorer(torch.randn(32), 0.7), 1.25, "blocks.1.hook_resid_post", reduce="last", offset=5)
    prov = {"model": "tiny", "data": {"harmful": {"n": 3, "sha256": "ab"}}}
    save_gate(tmp_path / "g.safetensors", gate, position_rule="instruction", variant="probe@1:instruction",
              provenance=prov)  # fmt: skip
    back = load_gate(tmp_path / "g.safetensors")
    assert (back.hook, back.reduce, back.offset, back.threshold) == (gate.hook, "last", 5, 1.25)
    torch.testing.assert_close(back.scores(X, REAL), gate.scores(X, REAL))
    head, _ = read_gate_header(tmp_path / "g.safetensors")
    assert head["provenance"] == prov and head["position_rule"] == "instruction" and head["scorer"] == "linear"
    save_gate(tmp_path / "open.safetensors", gate.with_threshold(-math.inf))
    assert load_gate(tmp_path / "open.safetensors").threshold == -math.inf  # a gate that always fires survives


def test_latent_probe_gate_round_trip_checks_its_sae(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sae = tiny_sae("topk", 1, d_in=32)
    save_sae(sae, tmp_path / "sae")
    gate = Gate(LatentProbeScorer(sae, [3, 9], [1.0, -0.5], 0.1), 0.2, reduce="tail", tail=3)
    save_gate(tmp_path / "g.safetensors", gate, sae_dir=tmp_path / "sae")
    back = load_gate(tmp_path / "g.safetensors")  # loads the SAE from the recorded folder
    assert isinstance(back.scorer, LatentProbeScorer) and back.scorer.features == [3, 9]
    torch.testing.assert_close(back.scores(X, REAL), gate.scores(X, REAL))
    save_sae(tiny_sae("topk", 1, d_in=32, seed=5), tmp_path / "sae")  # another SAE in the same folder
    with pytest.raises(SaesteerError, match="not the one this gate was fit with"):
        load_gate(tmp_path / "g.safetensors")
    assert load_gate(tmp_path / "g.safetensors", sae=sae).threshold == 0.2  # an explicit SAE is taken as given
    with pytest.raises(SaesteerError, match="needs sae_dir"):
        save_gate(tmp_path / "h.safetensors", gate)


def test_bad_gate_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SaesteerError, match="not found"):
        load_gate(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(SaesteerError, match="not a saesteer gate file"):
        load_gate(tmp_path / "junk.safetensors")
    ProjectionScorer(torch.ones(4)).save(tmp_path / "probe.safetensors")  # a probe file is not a gate file
    with pytest.raises(SaesteerError, match="not a saesteer gate file"):
        load_gate(tmp_path / "probe.safetensors")
