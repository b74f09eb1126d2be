"""``saesteer reproduce``: the whole study, stage by stage, each cached by its inputs and code, resumable.

 1. prompts      every prompt the study uses, drawn by purpose (dev or test) from the split registry
 2. corpus       the data directory's text corpus, or the built-in one
 3. harvest      activations at the hook on corpus windows and the model's own chat conversations
 4. train_sae    a Top-k SAE on the harvest
 5. sae_metrics  held-out FVU, spliced CE / KL increase on corpus text and on the model's own chat responses
                (the unsteered responses to harmless dev prompts, also the text of the KL / CE measure);
                the same after a KL fine-tune of the SAE (``sae_finetune``, reported beside; steering uses the MSE SAE)
 6. direction    the difference-in-means refusal direction (dev)
 7. features     refusal-feature discovery and a verified-neutral control (dev)
 8. gates        the fitted gate (saesteer.gating's best variant) and the harm probe of a probe gate (dev)
 9. choice       the headline clamp value and gate, chosen on dev prompts
10. capability   benchmark test items, drawn from the split registry
11. sweep        every condition scored on the test prompts; then every dev-fit gate variant on the test
                items, composed from the baseline and clamp outcomes (``gate_variants``, no generation); a sweep
                whose grid grew starts from the rows its predecessor scored (``saesteer.study.reuse``)
12. seeds        SAE, features and headline conditions again under other seeds (``seeds`` > 1)
13. report       Markdown + HTML report, ``splits.json``; published to ``report_dir``

Under ``torchrun`` every process runs this function: harvest, SAE training and the sweep are collective stages
(their work split over the ranks), the others run on rank 0 while the rest wait (``saesteer.stages``), and rank 0
writes the report.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from saesteer.evaluation.datasets import data_dir
from saesteer.machine import machine_limits
from saesteer.model.loading import LoadedModel
from saesteer.stages import StageRunner, is_writer
from saesteer.study import capability as cap
from saesteer.study import dev_stages as dev
from saesteer.study import sae_stages as sae_st
from saesteer.study.config import StudyConfig
from saesteer.study.gate_variants import stage_gate_variants
from saesteer.study.prompts import draw_prompts
from saesteer.study.publish import check_destination, publish_report
from saesteer.study.report_data import write_study_report
from saesteer.study.reuse import seed_from_predecessor
from saesteer.study.seeds import SeedRun, stage_seeds
from saesteer.study.sweep_eval import steering_from_context
from saesteer.study.sweep_stage import stage_sweep, study_gates, study_grid, sweep_context


def run_study(lm: LoadedModel, cfg: StudyConfig) -> Path:
    """Run (or resume) the whole study; returns the report folder."""
    cfg.validate()
    if cfg.report_dir:
        check_destination(Path(cfg.report_dir))  # refuse a folder of the user's before hours of work
    torch.manual_seed(cfg.seed)
    root = Path(cfg.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(root, log=print if is_writer() else lambda _: None, prepare=seed_from_predecessor)
    t_all = time.time()
    machine = machine_limits(1.0) if is_writer() else None  # the reference the wall times are read beside
    real = data_dir(cfg.data_dir) is not None

    prompts = draw_prompts(cfg, real)  # 1
    corpus = sae_st.stage_corpus(cfg, root)  # 2
    acts = sae_st.stage_harvest(runner, lm, cfg, corpus, prompts)  # 3
    trained = sae_st.stage_train(runner, lm, cfg, acts, cfg.seed)  # 4
    base = cap.stage_base_responses(runner, lm, cfg, prompts)
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in zip(*base, strict=True)]
    metrics = sae_st.stage_sae_metrics(runner, lm, cfg, trained, corpus, chats)  # 5
    finetuned = sae_st.stage_finetune(runner, lm, cfg, trained, corpus, chats)
    metrics = {**metrics, **({"finetuned": finetuned} if finetuned else {})}
    direction = dev.stage_direction(runner, lm, cfg, prompts)  # 6
    features = dev.stage_features(runner, lm, cfg, trained, corpus, prompts)  # 7
    gates = study_gates(cfg, real)
    probe_reduce = next((g.partition(":")[2] for g in gates if g.startswith("probe:")), None)
    probe = dev.stage_gate_probe(runner, lm, cfg, prompts, probe_reduce) if probe_reduce else None  # 8
    fitted = dev.stage_gate_fit(runner, lm, cfg, prompts, trained) if "fitted" in gates else None
    fit_id = runner.folders["gate_fit"].name if fitted else None
    grid = study_grid(cfg, features, trained.sae, gates, fit_id)
    ctx = sweep_context(
        lm, cfg, trained.sae, direction, prompts, probe, root / "completions.jsonl", fitted.gate if fitted else None
    )
    choice = dev.stage_choice(runner, lm, cfg, prompts, grid, lambda c: steering_from_context(ctx, c))  # 9
    scored = dev.test_grid(grid, choice, cfg.evaluate.unchosen)
    ctx.capability_data = cap.capability_data(cfg, prompts, real)  # 10
    ctx.humaneval = cap.humaneval_problems(cfg, prompts)
    ctx.divergence = base
    table = stage_sweep(runner, ctx, scored, choice, features)  # 11
    variants = fitted and cfg.evaluate.gate_variants
    composed = stage_gate_variants(runner, lm, ctx, trained, table, scored) if variants else None
    seed_runs = [SeedRun.of(cfg.seed, features, trained.sae, table, choice)]
    if cfg.seeds > 1:  # 12
        seed_runs += stage_seeds(runner, lm, cfg, acts, corpus, prompts, direction, choice, grid)

    report_dir = root / "report"  # 13
    if not is_writer():
        return report_dir
    write_study_report(
        report_dir, lm=lm, cfg=cfg, table=table, grid=scored, choice=choice, features=features,
        trained=trained, sae_metrics=metrics, prompts=prompts, runner=runner, seed_runs=seed_runs,
        fitted=fitted, gate_variants=composed, wall_seconds=time.time() - t_all, machine=machine,
    )  # fmt: skip
    if cfg.report_dir:
        print(f"report published to {publish_report(report_dir, Path(cfg.report_dir))}")
    print(f"report: {report_dir / 'report.md'}")
    return report_dir
