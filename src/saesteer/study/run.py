"""``saesteer reproduce``: the whole study, stage by stage, each cached by its inputs and resumable.

harvest -> train SAE -> SAE metrics -> refusal direction -> find features -> sweep -> report.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from saesteer.activations.chat import build_chat_data
from saesteer.activations.harvest import HarvestConfig, harvest
from saesteer.activations.store import ActivationStore
from saesteer.config import atomic_write_json, config_to_dict
from saesteer.errors import SaesteerError
from saesteer.evaluation.datasets import DATA_FILES, data_dir, load_prompts
from saesteer.evaluation.safety import CompletionCache
from saesteer.model.adapter import ArchAdapter
from saesteer.model.generation import GenerationConfig
from saesteer.model.loading import LoadedModel
from saesteer.report.render import ReportData, write_report
from saesteer.report.results import ResultsTable
from saesteer.report.sweep import SweepConfig, build_grid, gate_types
from saesteer.sae.base import SAE
from saesteer.sae.io import load_sae
from saesteer.study.config import StudyConfig
from saesteer.study.stages import StageRunner
from saesteer.study.sweep_eval import SweepContext, evaluate_condition

BUILTIN_MAX_TOKENS = 100_000  # what the stdlib-docstring corpus holds with a margin


def _corpus(cfg: StudyConfig, root: Path) -> tuple[str, bool]:
    """The corpus file: the data directory's, or the built-in stdlib-docstring corpus written under ``root``."""
    dd = data_dir(cfg.data_dir)
    if dd is not None and (dd / DATA_FILES["corpus"]).is_file():
        return str(dd / DATA_FILES["corpus"]), True
    from saesteer.study.corpus import stdlib_docstrings

    path = root / "builtin_corpus.jsonl"
    if not path.is_file():
        from saesteer.config import atomic_write_text

        atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in stdlib_docstrings()))
    return str(path), False


def _chat_prompts(cfg: StudyConfig, real_data: bool) -> list[str]:
    n = cfg.size("chat_n")
    names = ["donotanswer", "alpaca"] if real_data else ["builtin_harmful", "builtin_harmless"]
    out: list[str] = []
    for name in names:
        out += [p.text for p in load_prompts(name, n=n, seed=cfg.seed, data_dir=cfg.data_dir)]
    return out


def stage_sae(runner: StageRunner, lm: LoadedModel, cfg: StudyConfig) -> tuple[SAE, Path, str | None]:
    """Harvest and train (or reuse the given SAE / activations). Returns (sae, sae dir, activation dir)."""
    if cfg.sae:
        sae = load_sae(cfg.sae, dtype="float32")
        return sae, Path(cfg.sae), cfg.acts
    corpus, real = _corpus(cfg, runner.root)
    n_tokens = cfg.size("n_tokens")
    if not real and n_tokens > BUILTIN_MAX_TOKENS:
        print(
            f"saesteer: note: no data directory; the built-in corpus (stdlib docstrings + chat) gives "
            f"{BUILTIN_MAX_TOKENS:,} tokens, not {n_tokens:,}: expect a weaker SAE (pass --data-dir for more)"
        )
        n_tokens = BUILTIN_MAX_TOKENS
    if cfg.acts:
        acts_dir = Path(cfg.acts)
    else:
        h_inputs = {
            "model": lm.spec,
            "hook": cfg.hook,
            "n_tokens": n_tokens,
            "chat": cfg.chat_fraction,
            "chat_n": cfg.size("chat_n"),
            "chat_tokens": cfg.size("chat_tokens"),
            "corpus": Path(corpus).name,
            "seed": cfg.seed,
        }

        def do_harvest(folder: Path) -> Path:
            chat = build_chat_data(
                lm.model,
                lm.tokenizer,
                _chat_prompts(cfg, real),
                folder / "chat.jsonl",
                GenerationConfig(max_new_tokens=cfg.size("chat_tokens"), batch_size=cfg.batch_size),
            )
            hcfg = HarvestConfig(
                out_dir=str(folder),
                hook=cfg.hook,
                corpus=[corpus],
                n_tokens=n_tokens,
                chat_fraction=cfg.chat_fraction,
                seed=cfg.seed,
                held_out_tokens=min(65_536, max(4096, n_tokens // 10)),
                shard_tokens=min(262_144, max(8192, n_tokens // 8)),
            )
            return harvest(lm.model, lm.tokenizer, hcfg, lm.spec, chat=chat)

        acts_dir = runner.run("harvest", h_inputs, do_harvest, lambda f: f)
    store = ActivationStore(acts_dir)
    from saesteer.sae.train import TrainConfig, train_sae

    t_inputs = {
        "acts": store.manifest["shards"][-1]["sha256"],
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "seed": cfg.seed,
        "tokens": store.n_tokens,
    }

    def do_train(folder: Path) -> Path:
        tcfg = TrainConfig(
            k=cfg.k,
            d_sae=cfg.d_sae,
            total_tokens=max(store.n_tokens, 4096),
            out_dir=str(folder),
            seed=cfg.seed,
            # batch 4,096 (~490 steps for 2M tokens). Measured on the default model at layer 12, 2M tokens: batch
            # 1,024 led early (FVU 0.18 vs 0.22 after 614k tokens) but ended level (held-out FVU 0.138 vs 0.139)
            # with more dead latents (29% vs 8%) and a larger spliced CE increase (+1.20 vs +1.12 nats)
            batch_size=min(4096, max(256, store.n_tokens // 50)),
        )
        result = train_sae(
            tcfg,
            lambda s: store.batches(tcfg.batch_size, seed=cfg.seed, start_step=s),
            store.d_model,
            hook_name=store.hook_name,
            model_name=lm.spec,
            metadata={"activation_cache": str(acts_dir)},
        )
        return result.sae_dir

    sae_dir = runner.run("train_sae", t_inputs, do_train, lambda f: f / "sae")
    return load_sae(sae_dir, dtype="float32"), sae_dir, str(acts_dir)


def stage_sae_metrics(
    runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, sae: SAE, sae_dir: Path, acts: str | None
) -> dict[str, Any]:
    from saesteer.cli.sae_cmd import EvalConfig, _corpus_windows
    from saesteer.sae.metrics import activation_metrics, combine_spliced, spliced_metrics

    def run(folder: Path) -> dict[str, Any]:
        out: dict[str, Any] = {"sae": str(sae_dir)}
        if acts:
            out["activations"] = activation_metrics(sae, [ActivationStore(acts).held_out(65_536)])
        corpus, _ = _corpus(cfg, runner.root)
        ecfg = EvalConfig(corpus=corpus, n_texts=32 if cfg.profile != "tiny" else 4)
        ids, mask = _corpus_windows(ecfg, lm.tokenizer)
        adapter = ArchAdapter(lm.model)
        # as harvested: attention-sink positions (norm > 8x median, never in the training data) stay clean;
        # then every position, sinks included, for comparison with evaluations that splice everywhere
        for key, factor in (("spliced", ecfg.outlier_factor), ("spliced_all_positions", 0.0)):
            parts = [
                spliced_metrics(lm.model, adapter, sae, ids[i : i + 8], mask[i : i + 8], outlier_factor=factor)
                for i in range(0, len(ids), 8)
            ]
            out[key] = combine_spliced(parts)
        atomic_write_json(folder / "sae_metrics.json", out)
        return out

    return runner.run(
        "sae_metrics",
        {"sae": str(sae_dir), "profile": cfg.profile, "splice": "sinks-clean+all"},
        run,
        lambda f: json.loads((f / "sae_metrics.json").read_text()),
    )


def stage_direction(runner: StageRunner, lm: LoadedModel, cfg: StudyConfig) -> Any:
    from saesteer.steering.direction import RefusalDirection, compute_refusal_direction

    real = data_dir(cfg.data_dir) is not None
    harmful = "advbench" if real else "builtin_harmful"
    harmless = "alpaca" if real else "builtin_harmless"
    n = 64 if cfg.profile != "tiny" else 8

    def run(folder: Path) -> Any:
        h = [p.text for p in load_prompts(harmful, n=n, seed=cfg.seed + 11, data_dir=cfg.data_dir)]
        s = [p.text for p in load_prompts(harmless, n=n, seed=cfg.seed + 11, data_dir=cfg.data_dir)]
        d = compute_refusal_direction(lm.model, lm.tokenizer, h, s, cfg.hook, batch_size=cfg.batch_size)
        d.save(folder / "direction.safetensors")
        return d

    return runner.run(
        "direction",
        {"model": lm.spec, "hook": cfg.hook, "n": n, "sets": [harmful, harmless], "seed": cfg.seed},
        run,
        lambda f: RefusalDirection.load(f / "direction.safetensors"),
    )


def stage_gate_probe(runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, reduce: str) -> Any:
    """Fit the harm probe of conditional steering on dev prompts disjoint from every test set.

    Harmful: HarmBench val + a Do-Not-Answer sample; harmless: an Alpaca sample + the built-in safe prompts that
    merely look unsafe (so the probe learns harm, not alarming words). Logistic regression on the prompt
    activations at the SAE's hook point, reduced over tokens as the gate reduces them.
    """
    from saesteer.steering.gate import ProjectionScorer, fit_probe, prompt_activations

    n = 120 if cfg.profile != "tiny" else 8
    sets = {
        "harmful": [("harmbench:val", None), ("donotanswer", n)],
        "harmless": [("alpaca", 2 * n), ("builtin_xsafe", None)],
    }

    def run(folder: Path) -> Any:
        acts = {}
        for side, names in sets.items():
            texts = [
                p.text for name, k in names for p in load_prompts(name, n=k, seed=cfg.seed + 31, data_dir=cfg.data_dir)
            ]
            acts[side] = prompt_activations(
                lm.model, lm.tokenizer, texts, cfg.hook, reduce=reduce, batch_size=cfg.batch_size
            )
        probe = fit_probe(acts["harmful"], acts["harmless"], l2=1e-2)
        probe.save(folder / "probe.safetensors", {"hook": cfg.hook, "reduce": reduce})
        return probe

    return runner.run(
        "gate_probe",
        {"model": lm.spec, "hook": cfg.hook, "reduce": reduce, "sets": sets, "seed": cfg.seed},
        run,
        lambda f: ProjectionScorer.load(f / "probe.safetensors")[0],
    )


def stage_features(runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, sae: SAE, sae_dir: Path) -> dict[str, Any]:
    from saesteer.features.config import FindFeaturesConfig
    from saesteer.features.pipeline import find_features

    real = data_dir(cfg.data_dir) is not None
    n = cfg.size("find_n")
    fcfg = FindFeaturesConfig(
        sae=str(sae_dir),
        data_dir=cfg.data_dir,
        n_harmful=n,
        n_harmless=n,
        max_screen=cfg.size("find_screen"),
        n_generate=cfg.size("find_generate"),
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        harmful="harmbench:val" if real else "builtin_harmful",
        harmless="alpaca" if real else "builtin_harmless",
        rank_harmful="advbench" if real else "builtin_harmful",
        rank_harmless="alpaca" if real else "builtin_harmless",
        corpus=None if real else _corpus(cfg, runner.root)[0],
        n_rank=min(64, 2 * n),
        n_attribution=min(32, n),
    )

    def run(folder: Path) -> dict[str, Any]:
        fcfg.out = str(folder)
        try:
            try:
                return find_features(lm.model, lm.tokenizer, sae, fcfg, model_name=lm.spec)
            except SaesteerError as exc:
                if (folder / "features.json").is_file() or not fcfg.require_refusal:
                    raise
                # the model refused no archetype (e.g. a small or random model): read its plain responses
                print(f"saesteer: warning: {exc}; using the archetypes' responses without requiring refusals")
                fcfg.require_refusal = False
                return find_features(lm.model, lm.tokenizer, sae, fcfg, model_name=lm.spec)
        except SaesteerError as exc:  # no feature passed the screen: the study goes on with the best one
            if not (folder / "features.json").is_file():
                raise
            report = json.loads((folder / "features.json").read_text())
            cheap = report.get("screen", {}).get("cheap") or []
            if not cheap:
                raise
            best = max(cheap, key=lambda c: c.get("objective", float("-inf")))
            report["chosen"] = {"feature": int(best["feature"]), "passed_screen": False, "note": str(exc)}
            atomic_write_json(folder / "features.json", report)
            print(f"saesteer: warning: {exc}; the sweep uses the best screened feature {best['feature']}")
            return report

    return runner.run(
        "features",
        {"sae": str(sae_dir), **config_to_dict(fcfg)},
        run,
        lambda f: json.loads((f / "features.json").read_text()),
    )


def stage_sweep(
    runner: StageRunner, lm: LoadedModel, cfg: StudyConfig, sae: SAE, direction: Any, features: dict[str, Any]
) -> tuple[ResultsTable, list[Any]]:
    real = data_dir(cfg.data_dir) is not None
    # every gate with its reduction spelled out, so the probe is fit on activations reduced as its gate reduces
    gates = []
    for g in gate_types(SweepConfig(gate=cfg.gate)):
        kind, _, red = g.partition(":")
        gates.append(f"{kind}:{red or ('mean' if kind == 'probe' else 'last')}")
    if not real and any(g.startswith("probe:") for g in gates):
        print(
            "saesteer: note: no data directory, so no dev prompts disjoint from the built-in test suites to fit a "
            "harm probe on; conditional steering runs without the probe gate"
        )
        gates = [g for g in gates if not g.startswith("probe:")] or ["direction:last"]
    probe_reduce = next((g.partition(":")[2] for g in gates if g.startswith("probe:")), None)
    probe = stage_gate_probe(runner, lm, cfg, probe_reduce) if probe_reduce else None
    chosen = features.get("chosen") or {}
    control = features.get("control") or {}
    refusal_f = [int(chosen["feature"])] if chosen.get("feature") is not None else []
    control_f = [int(control["feature"])] if control.get("feature") is not None else []
    per = features.get("screen", {}).get("clamp", {}).get("per_feature", {})
    fmax = {f: float(per[str(f)]["ref_max"]) for f in refusal_f + control_f if str(f) in per}
    missing = [f for f in refusal_f + control_f if f not in fmax]
    if missing:
        from saesteer.features.contexts import ContextStore  # noqa: F401 - stats live with the contexts

        z = sae.encode(ActivationStore(cfg.acts).held_out(65_536).float()) if cfg.acts else None
        for f in missing:
            fmax[f] = float(z[:, f].max()) if z is not None else 1.0
    scfg = SweepConfig(
        clamp_values=list(cfg.clamp_multiples),
        control_values=[max(cfg.clamp_multiples)],  # the control and the gate at the strongest clamp only
        conditional_values=[max(cfg.clamp_multiples)],
        clamp_units="max",
        conditional=True,
        gate=",".join(gates),
        gate_fpr=cfg.gate_fpr,
        direction_coeffs=list(cfg.direction_coeffs),
    )
    grid = build_grid(scfg, refusal_f, control_f, feature_max=fmax, direction=True)
    dev = [
        p.text
        for p in load_prompts("alpaca" if real else "builtin_harmless", n=64, seed=cfg.seed + 23, data_dir=cfg.data_dir)
    ]
    inputs = {
        "sae": features.get("sae", {}).get("fingerprint"),
        "grid": [c.to_dict() for c in grid],
        **{k: v for k, v in config_to_dict(cfg.resolved()).items() if k not in ("out_dir", "report_dir")},
    }

    def run(folder: Path) -> ResultsTable:
        table = ResultsTable.open(folder / "results.json", meta={"model": lm.spec})
        ctx = SweepContext(
            lm.model,
            lm.tokenizer,
            lm.spec,
            sae,
            direction,
            cfg.resolved(),
            dev,
            CompletionCache(folder / "completions.jsonl"),
            probe=probe,
        )
        for i, cond in enumerate(grid, start=1):
            print(f"[sweep] condition {i}/{len(grid)}: {cond.name}", flush=True)
            evaluate_condition(ctx, cond, table)
        return table

    table = runner.run("sweep", inputs, run, lambda f: ResultsTable.load(f / "results.json"))
    return table, grid


def _copy_provenance(report_dir: Path, runner: StageRunner, sae_dir: Path, acts: str | None) -> None:
    """Small files that say where the report's numbers come from: features, SAE metrics and training, harvest."""
    sources = {
        "features.md": ("features", "features.md"),
        "sae_metrics.json": ("sae_metrics", "sae_metrics.json"),
    }
    paths = {name: runner.folders[stage] / file for name, (stage, file) in sources.items() if stage in runner.folders}
    paths["sae_train_summary.json"] = sae_dir.parent / "train_summary.json"
    if acts:
        paths["harvest_manifest.json"] = Path(acts) / "manifest.json"
    for name, src in paths.items():
        if src.is_file():
            shutil.copyfile(src, report_dir / name)


def run_study(lm: LoadedModel, cfg: StudyConfig) -> Path:
    """Run (or resume) the whole study; returns the report folder."""
    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    root = Path(cfg.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(root)
    t_all = time.time()
    sae, sae_dir, acts = stage_sae(runner, lm, cfg)
    cfg.acts = acts
    adapter = ArchAdapter(lm.model)
    if sae.d_in != adapter.d_model:
        raise SaesteerError(f"SAE d_in {sae.d_in} != model d_model {adapter.d_model}; use an SAE for this model")
    metrics = stage_sae_metrics(runner, lm, cfg, sae, sae_dir, acts)
    direction = stage_direction(runner, lm, cfg)
    features = stage_features(runner, lm, cfg, sae, sae_dir)
    table, grid = stage_sweep(runner, lm, cfg, sae, direction, features)
    report_dir = root / "report"
    data = ReportData(
        table=table,
        conditions=grid,
        model_info={"model": lm.spec, **adapter.info(), "dtype": str(lm.dtype)},
        sae_info={"path": str(sae_dir), "d_sae": sae.d_sae, "k": sae.cfg.k, "hook": sae.cfg.hook_name, **metrics},
        feature_info={
            "chosen": features.get("chosen"),
            "control": features.get("control"),
            "ranker_comparison": features.get("ranker_comparison"),
        },
        stage_seconds=dict(runner.times),
        title=f"saesteer reproduce: {lm.spec}, profile {cfg.profile}",
        notes=[f"config: {json.dumps(config_to_dict(cfg))}", f"total wall time this run: {time.time() - t_all:.0f} s"],
    )
    write_report(report_dir, data)
    _copy_provenance(report_dir, runner, sae_dir, acts)
    if cfg.report_dir:
        dest = Path(cfg.report_dir)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(report_dir, dest)
        print(f"report copied to {dest}")
    print(f"report: {report_dir / 'report.md'}")
    return report_dir
