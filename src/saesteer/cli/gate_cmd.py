"""``saesteer fit-gate``: fit gate variants on dev prompts, compare them, save the chosen gate as one file.

Example::

    saesteer fit-gate --out gate.safetensors --layers 6 9 12 --sae runs/sae
    saesteer generate --prompts-file p.txt --sae runs/sae --clamp 1234=10 --gate gate.safetensors

Writes OUT (the gate: scorer, hook, position, threshold, provenance), OUT's stem + ``.variants.json``
(every variant's dev measurement) and ``.variants.md`` (the comparison table).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from saesteer.cli.common import FLAT, Command
from saesteer.config import atomic_write_text
from saesteer.gating.fit import FitGateConfig, fit_gate, gate_dev_data
from saesteer.gating.variants import variant_table
from saesteer.model.loading import ModelConfig, load


@dataclass
class FitGateCommand:
    """Fit gate variants (probes, directions, sparse SAE-latent probes, self-judge) on dev prompts, measure each
    on held-out dev prompts, and save the best (or a named) one as a gate file for `generate --gate FILE`."""

    model: Annotated[ModelConfig, FLAT] = field(default_factory=ModelConfig)
    gate: Annotated[FitGateConfig, FLAT] = field(default_factory=FitGateConfig)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def run(cfg: FitGateCommand) -> int:
    g = cfg.gate
    out = Path(g.out)
    sae = None
    if g.sae:
        from saesteer.sae.io import load_sae

        sae = load_sae(g.sae, dtype="float32").eval()
    specs = g.specs(sae.cfg.hook_name if sae is not None else None)
    data = gate_dev_data(g.data_dir, n=g.n, seed=g.seed)
    lm = load(cfg.model)
    if sae is not None:
        sae = sae.to(lm.device)
    result = fit_gate(
        lm.model, lm.tokenizer, data, specs, out=out, variant=g.variant, objective=g.objective(), sae=sae,
        sae_dir=g.sae, model_name=lm.spec, batch_size=g.batch_size, system_prompt=g.system_prompt, log=print,
    )  # fmt: skip
    headers, rows = variant_table(result.results)
    table = markdown_table(headers, rows)
    stem = out.with_suffix("")
    payload = {"objective": g.objective().describe(), "provenance": result.provenance,
               "variants": [r.to_dict() for r in result.results]}  # fmt: skip
    atomic_write_text(f"{stem}.variants.json", json.dumps(payload, indent=1) + "\n")
    atomic_write_text(f"{stem}.variants.md", table)
    print(table)
    c = result.chosen
    print(f"gate {c.spec.name} (threshold {c.threshold:.4g}, J={c.objective:+.3f}) written to {out}")
    return 0


COMMANDS = [Command("fit-gate", "fit, compare and save a gate for conditional steering", FitGateCommand, run)]
