"""The study's report folder: the report (headline, findings, examples, readable setup, details) and the
files that say where its numbers come from (``splits.json``, ``seeds.json``, ``resolved_config.json``,
``features.md``, SAE metrics and training summary, harvest manifest).

Generation throughput in the stage table is the tokens of every completion of the sweep (re-tokenised)
over the wall time of the safety scoring that produced them.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from saesteer.config import atomic_write_json, config_to_dict
from saesteer.evaluation.safety import CompletionCache, cache_key
from saesteer.evaluation.splits import check_disjoint
from saesteer.features.report import FeatureReport
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import GenerationConfig
from saesteer.model.loading import LoadedModel
from saesteer.report.document import Example, ReportData, StageTime, Table, headline_names, write_report
from saesteer.report.findings import Headline
from saesteer.report.results import ResultsTable
from saesteer.stages import StageRunner
from saesteer.study.config import StudyConfig
from saesteer.study.design import Condition
from saesteer.study.dev_stages import Choice, FittedGate
from saesteer.study.gate_table import gate_test_table, variants_firing_table, variants_test_table
from saesteer.study.prompts import StudyPrompts
from saesteer.study.publish import mark
from saesteer.study.sae_stages import TrainedSAE
from saesteer.study.seeds import SeedRun, seed_summary


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _num(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return ", ".join(_num(v) for v in x) or "-"
    return "-" if x is None else str(x)


def _flat(d: Mapping[str, Any], prefix: str = "") -> list[list[str]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            rows += _flat(v, f"{prefix}{k}.")
        else:
            rows.append([f"{prefix}{k}", _num(v)])
    return rows


HELD_OUT_KEYS = ("fvu", "l0", "dead_frac", "n_tokens")
SPLICED_KEYS = ("ce_clean", "ce_spliced", "ce_increase", "kl_spliced", "ce_recovered", "n_predictions")
SPLICED_NAMES = {"web": "corpus text", "web_all_positions": "corpus text, every position", "chat": "chat"}


def sae_table(trained: TrainedSAE, metrics: Mapping[str, Any]) -> Table:
    rows = [["folder", str(trained.folder)], ["hook", trained.sae.cfg.hook_name],
            ["latents (d_sae)", str(trained.sae.d_sae)], ["active per token (k)", str(trained.sae.cfg.k)]]  # fmt: skip
    for kind, m in (metrics.get("activations") or {}).items():
        rows += [[f"held-out ({kind}) {k}", _num(m[k])] for k in HELD_OUT_KEYS if k in m]
    for key, name in SPLICED_NAMES.items():
        m = metrics.get(key) or {}
        rows += [[f"spliced on {name}: {k}", _num(m[k])] for k in SPLICED_KEYS if k in m]
    return Table("SAE", ["field", "value"], rows, "CE and KL in nats per token; FVU = unexplained variance share.")


FIDELITY_ROWS = (  # (label, section of the metrics, key): web text and chat side by side
    ("held-out FVU", ("activations", "corpus"), ("activations", "chat"), "fvu"),
    ("held-out dead latents", ("activations", "corpus"), ("activations", "chat"), "dead_frac"),
    ("spliced CE increase (nats/token)", ("web",), ("chat",), "ce_increase"),
    ("spliced KL (nats/token)", ("web",), ("chat",), "kl_spliced"),
    ("CE recovered", ("web",), ("chat",), "ce_recovered"),
)


def _at(metrics: Mapping[str, Any], path: tuple[str, ...], key: str) -> str:
    m: Any = metrics
    for part in path:
        m = m.get(part) if isinstance(m, Mapping) else None
    if not isinstance(m, Mapping):
        return "-"
    if key == "dead_frac" and isinstance(m.get("dead_window_tokens"), (int, float)):
        # a share of never-fired latents means little without the window it was counted in
        return f"{_num(m.get(key))} in {int(m['dead_window_tokens']):,} tokens"
    ci = m.get(f"{key}_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"{_num(m.get(key))} [{ci[0]:.3g}, {ci[1]:.3g}] (n={m.get('n_windows', '?')} windows)"
    return _num(m.get(key))


def fidelity_table(metrics: Mapping[str, Any]) -> Table:
    """SAE fidelity on web text and on chat side by side, and after the KL fine-tune when it ran."""
    tuned = metrics.get("finetuned")
    headers = ["measure", "web text", "chat"] + (["web text, KL fine-tuned", "chat, KL fine-tuned"] if tuned else [])
    rows = []
    for label, web, chat, key in FIDELITY_ROWS:
        row = [label, _at(metrics, web, key), _at(metrics, chat, key)]
        rows.append(row + ([_at(tuned, web, key), _at(tuned, chat, key)] if tuned else []))
    web = metrics.get("web", {})
    note = f"Web text: {web.get('n_windows', '?')} corpus windows of the harvest's held-out split (packed and "
    note += "shuffled as in training, never trained on); chat: the unsteered model's own responses to harmless dev "
    note += "prompts. Dead: never active in that kind's held-out tokens (a smaller window counts more latents dead)."
    if tuned:
        c = tuned["cost"]
        note += (f" KL fine-tune: {c['tokens']:,} tokens in {c['seconds']:.0f} s ({c['tokens_per_s']:.0f} tokens/s);"
                 " steering uses the MSE-trained SAE.")  # fmt: skip
    return Table("SAE fidelity", headers, rows, note)


def features_tables(features: FeatureReport) -> list[Table]:
    c = features.chosen
    rows = [["refusal feature", _num(features.refusal_feature)], ["passed the screen", str(features.chosen_passed)]]
    if c is not None:
        rows += [["clamp value in the screen", _num(c.value)],
                 ["dev harmful refusal, clamped", _pct(c.harmful.rate)],
                 ["dev gain", f"{100 * c.gain[0]:+.1f} pts [{100 * c.gain[1]:.1f}, {100 * c.gain[2]:.1f}]"]]  # fmt: skip
    f = features.refusal_feature
    if f is not None:
        rows.append(["max activation (clamp unit)", _num(features.ref_max(f))])
    ctrl = features.control
    stand_in = ctrl is not None and ctrl.stand_in_note is not None
    rows.append(["control feature", _num(features.control_feature) + (" (unverified stand-in)" if stand_in else "")])
    if ctrl is not None:
        rows.append(["control: why", ctrl.reason])
    out = [Table("Features (dev)", ["field", "value"], rows)]
    checks = [
        [str(k.feature), _num(k.multiple), _num(k.cos_direction), f"{100 * k.cheap_unsafe_delta:+.1f}",
         f"{100 * k.cheap_safe_delta:+.1f}", "-" if k.gen_unsafe_delta is None else f"{100 * k.gen_unsafe_delta:+.1f}",
         "-" if k.gen_safe_delta is None else f"{100 * k.gen_safe_delta:+.1f}", f"+/-{100 * k.band:.0f}",
         "yes" if k.passed else "no", k.reason]
        for k in features.control_checks
    ]  # fmt: skip
    if checks:
        headers = ["candidate", "x max", "cos(direction)", "cheap unsafe", "cheap safe", "gen unsafe", "gen safe",
                   "band (pts)", "passed", "reason"]  # fmt: skip
        note = "Each control candidate clamped at the study's strength on dev prompts; refusal changes in points."
        out.append(Table("Control feature: neutrality checks", headers, checks, note))
    return out


def choice_table(choice: Choice) -> Table:
    rows = [
        [name, _pct(r["harmful"]), _pct(r["harmless"]), f"{100 * r['objective']:+.1f}",
         "clamp" if name == choice.clamp else ("gate" if name == choice.gate else "")]
        for name, r in choice.dev.items()
    ]  # fmt: skip
    note = "Objective: harmful refusal gain minus harmless refusal gain against the baseline, on dev prompts."
    return Table("Headline choice (dev)", ["condition", "harmful refusal", "harmless refusal", "objective",
                                           "chosen"], rows, note)  # fmt: skip


def gate_table(fitted: FittedGate) -> Table:
    note = (f"The fitted gate is {fitted.name}: the variant with the best dev objective (missed harmful prompts "
            "plus weighted firings on look-alikes and Alpaca), its threshold set on the dev calibration half.")  # fmt: skip
    return Table("Gate variants (dev)", fitted.headers, fitted.rows, note)


def splits_table(splits: Mapping[str, Any]) -> Table:
    purposes = splits.get("purposes", {})
    overlap = check_disjoint(splits)
    rows = [
        [p, ", ".join(f"{d} ({n})" for d, n in e.get("counts", {}).items()), str(overlap.get(p, 0) if p != "test"
                                                                                   else "-")]
        for p, e in purposes.items()
    ]  # fmt: skip
    return Table("Prompts by purpose (splits.json)", ["purpose", "datasets (texts)", "shared with test"], rows)


def _ci(value: float, ci: Any, fmt: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    return format(value, fmt) + (f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else "")


def seeds_table(summary: Mapping[str, Any]) -> Table:
    rows = [
        [str(r["seed"]), _num(r["feature"]), f"{_pct(r['unsafe_refusal'])} (n={r['n_unsafe']})",
         f"{_pct(r['safe_refusal'])} (n={r['n_safe']})",
         _ci(100 * r["gain"], [100 * v for v in r["gain_ci"]] if r.get("gain_ci") else None, "+.1f"),
         _ci(r["over_refusal"], r.get("over_refusal_ci"), ".2f"), _num(r["cos_first"]),
         "yes" if r["same_feature"] else "no"]
        for r in summary["seeds"]
    ]  # fmt: skip
    headers = ["seed", "feature", "unsafe refusal", "safe refusal", "gain (pts)", "over-refusal ratio",
               "cos to first seed", "same feature"]  # fmt: skip
    note = (f"Same feature: the same index or decoder cosine > {summary['match_cosine']}. Every seed clamps its own "
            "chosen feature at the dev-chosen multiple of its max activation on the same test prompts; intervals are "
            "paired against the one unsteered baseline (gain: Tango; ratio: paired bootstrap).")  # fmt: skip
    return Table("Seeds", headers, rows, note)


def examples(cfg: StudyConfig, lm: LoadedModel, prompts: StudyPrompts, names: Sequence[str], grid: Sequence[Condition],
             cache_path: Path) -> list[Example]:  # fmt: skip
    """The first few test prompts of the first unsafe and the first safe set, with each condition's completion."""
    if not cache_path.is_file():
        return []
    cache, keys = CompletionCache(cache_path), {c.name: c.key for c in grid}
    gen = GenerationConfig(max_new_tokens=cfg.generation.max_new_tokens, batch_size=cfg.generation.batch_size)
    sets = prompts.test_sets()
    picked = [next((n for n, ps in sets.items() if ps and ps[0].should_refuse == side), None) for side in (True, False)]
    out = []
    for name in (n for n in picked if n):
        for p in sets[name][: cfg.evaluate.examples]:
            done = {c: cache.get(cache_key(lm.spec, name, gen, keys[c]), p.text) for c in names if c in keys}
            out.append(Example(name, p.text, {c: t for c, t in done.items() if t is not None}))
    return out


def throughput(tokenizer: Any, cache_path: Path, table: ResultsTable) -> str:
    if not cache_path.is_file():
        return ""
    texts = [json.loads(line)["completion"] for line in cache_path.read_text().splitlines() if line.strip()]
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    secs = sum(r.seconds for m in ("unsafe_refusal", "safe_refusal") for r in table.by_metric(m))
    return f"generation {tokens / secs:.0f} tokens/s ({tokens:,} tokens)" if secs > 0 else ""


def write_study_report(
    report_dir: Path, *, lm: LoadedModel, cfg: StudyConfig, table: ResultsTable, grid: list[Condition],
    choice: Choice, features: FeatureReport, trained: TrainedSAE, sae_metrics: Mapping[str, Any],
    prompts: StudyPrompts, runner: StageRunner, seed_runs: list[SeedRun], fitted: FittedGate | None,
    wall_seconds: float, gate_variants: Mapping[str, Any] | None = None, machine: tuple[float, float] | None = None,
) -> None:  # fmt: skip
    """Write the report and its provenance files into ``report_dir`` (marked as a saesteer report)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    splits = prompts.registry.to_json()
    atomic_write_json(report_dir / "splits.json", splits)
    atomic_write_json(report_dir / "resolved_config.json", {"model": lm.spec, "study": config_to_dict(cfg)})
    seeds = seed_summary(seed_runs, table) if len(seed_runs) > 1 else None
    if seeds:
        atomic_write_json(report_dir / "seeds.json", seeds)
    else:  # an earlier multi-seed run's summary in this (the study's own) report folder no longer applies
        (report_dir / "seeds.json").unlink(missing_ok=True)
    cache = runner.folders.get("sweep", report_dir) / "completions.jsonl"
    note = features.control.stand_in_note if features.control is not None else None
    headline = Headline(choice.clamp, choice.gate, dev=True, control_note=note)
    data = ReportData(table=table, conditions=grid, headline=headline)
    derived = data.derived()
    names = headline_names(data, derived)
    gates_test = gate_test_table(table, derived, choice.clamp)
    composed = dict(gate_variants) if gate_variants else None
    variants_test = [t for t in (variants_test_table(composed), variants_firing_table(composed)) if t]
    model_rows = [["model", lm.spec], ["dtype", str(lm.dtype)], ["hook", cfg.hook]]
    model_rows += [[k, _num(v)] for k, v in ArchAdapter(lm.model).info().items()]
    stages = [StageTime(n, s, throughput(lm.tokenizer, cache, table) if n == "sweep" else "")
              for n, s in runner.times.items()]  # fmt: skip
    data = ReportData(
        table=table, conditions=grid, headline=headline,
        title=f"saesteer reproduce: {lm.spec}, profile {cfg.profile}",
        setup=[Table("Model", ["field", "value"], model_rows), sae_table(trained, sae_metrics),
               fidelity_table(sae_metrics),
               *features_tables(features), choice_table(choice), splits_table(splits)],
        details=[*([seeds_table(seeds)] if seeds else []), *([gates_test] if gates_test else []),
                 *variants_test,
                 *([gate_table(fitted)] if fitted else []),
                 Table("Configuration (resolved_config.json)", ["option", "value"], _flat(config_to_dict(cfg)))],
        stages=stages, examples=examples(cfg, lm, prompts, names, grid, cache), seeds=seeds,
        notes=[f"Total wall time of this run: {wall_seconds:.0f} s (stages served from the cache count their "
               "original time in the stage table).", *machine_note(machine), *composed_note(cfg)],
    )  # fmt: skip
    write_report(report_dir, data)
    _copy_provenance(report_dir, runner, trained)
    mark(report_dir)


def composed_note(cfg: StudyConfig) -> list[str]:
    if not cfg.evaluate.compose_gated:
        return []
    return [
        "Safety and capability of a gated condition are composed, not generated again: per prompt or question, its "
        "ungated clamp's outcome where the gate fires on the chat-formatted prompt and the baseline's where not "
        "(the gate decides once per prompt either way). Its multi-turn attacks and KL are generated."
    ]


def machine_note(machine: tuple[float, float] | None) -> list[str]:
    if machine is None:
        return []
    return [f"Machine reference, measured at the start of this run: bf16 4096x4096 matmul {machine[0]:.0f} GFLOP/s, "
            f"memory copy {machine[1]:.1f} GB/s, {torch.get_num_threads()} threads. Machines of one kind differ "
            "2-3x: read the wall times beside these numbers."]  # fmt: skip


def _copy_provenance(report_dir: Path, runner: StageRunner, trained: TrainedSAE) -> None:
    sources = {"features.md": ("features", "features.md"), "sae_metrics.json": ("sae_metrics", "sae_metrics.json"),
               "sae_finetune.json": ("sae_finetune", "finetune.json")}  # fmt: skip
    paths = {name: runner.folders[st] / f for name, (st, f) in sources.items() if st in runner.folders}
    paths["sae_train_summary.json"] = trained.folder.parent / "train_summary.json"
    if trained.acts:
        paths["harvest_manifest.json"] = Path(trained.acts) / "manifest.json"
    for name, src in paths.items():
        if src.is_file():
            shutil.copyfile(src, report_dir / name)
