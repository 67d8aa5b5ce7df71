"""What ``python train.py stage=<stage> fold=<K|all>`` does: train stages on folds, test, summarise.

Each (stage, fold) run writes ``<run_dir>/<stage>/fold_<K>/`` with ``config.yaml``,
``fold.json`` (what it was trained on), ``checkpoints/best.ckpt`` (chosen on ``objective.metric`` over
validation clips from training subjects only), ``checkpoints/last.ckpt`` (every epoch: a rerun resumes from
it, runner/resume.py), ``metrics.json`` (the chosen checkpoint's ``val`` and
``test`` metrics), ``plots/*_confusion.png`` and, with W&B, its run under ``wandb/``; ``fold=all`` adds
``<run_dir>/<stage>/summary.json``, ``fold_accuracy.png``, ``pooled_*_confusion.png``, a W&B
cv-summary run and a row per stage in ``<output_dir>/<corpus>/<cv>/results.csv``. ``fold=summary`` writes
the same from the folds' ``metrics.json`` when the folds ran as separate jobs (a multirun over ``fold=``,
e.g. on a cluster, shares the plain run folder).

Under DDP every rank runs this same sequence of folds and stages (Lightning re-launches the script on
each rank), so the trainers meet; files and W&B runs are written by rank zero only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from callbacks.progress import Position, RunClock
from datamodules.atomic import atomic_write_text
from datamodules.datamodule import EmotionDataModule
from lightning_modules.objective import check_objective
from runner.command_line import (
    check_accelerator,
    check_fold,
    check_modalities,
    check_roots,
    check_stage,
    index_corpus,
    other_overrides,
    task_overrides,
)
from runner.console import closing_lines, set_lightning_verbosity, wandb_notice
from runner.fold_files import fold_dir
from runner.run_tag import run_tag
from runner.stage import PIPELINE, STAGES
from runner.summary import (
    format_seeds_table,
    format_summary_table,
    summarize_folds,
    summarize_seeds,
)
from tracking.cv_summary_run import log_cv_summary_run, save_cv_summary_plots
from tracking.loggers import AgentRun, detach_agent_run, is_wandb
from tracking.results_table import (
    PER_CORPUS_COLUMNS,
    PER_CORPUS_FILE,
    append_result,
    format_results_table,
    per_corpus_rows,
    read_results,
    results_row,
)

SUMMARY = "summary"  # fold=summary: summarise the folds that separate jobs trained, without training


class MissingFoldsError(FileNotFoundError):
    """``fold=summary`` was asked for before every fold of the stage had its metrics.json."""


class MismatchedFoldsError(ValueError):
    """A fold's metrics.json under the run folder was made with another fold split or seed than this run's."""


def finish_cross_validation(cfg: DictConfig, summary: dict, agent: AgentRun | None, is_last: bool) -> Path:
    """After ``fold=all`` of one stage (rank zero): summary.json, its plots, the W&B cv-summary run (the
    agent's run when ``is_last`` under ``wandb agent``) and a results.csv row; returns results.csv's path."""
    stage_dir = Path(cfg.paths.run_dir) / summary["stage"]
    atomic_write_text(json.dumps(summary, indent=2), stage_dir / "summary.json")
    plots = save_cv_summary_plots(summary, stage_dir)
    log_cv_summary_run(cfg, summary, plots, stage_dir, agent if is_last else None)
    results = Path(cfg.paths.output_dir) / summary["corpus"] / summary["cv"] / "results.csv"
    append_result(results, results_row(summary, str(cfg.tag), task_overrides(), Path(cfg.paths.run_dir)))
    for row in per_corpus_rows(summary, str(cfg.tag), task_overrides(), Path(cfg.paths.run_dir)):
        append_result(results.parent / PER_CORPUS_FILE, row, PER_CORPUS_COLUMNS)
    return results


def summarises(cfg: DictConfig) -> bool:
    """Whether the run ends with the cross-validation summary: ``fold=all`` or ``fold=summary``."""
    return str(cfg.fold) in ("all", SUMMARY)


def resolve_folds(cfg: DictConfig, datamodule: EmotionDataModule) -> list[int]:
    """The fold indices ``fold=`` names (one index, all or summary), or an error naming the valid range."""
    return check_fold(str(cfg.fold), len(datamodule.folds), datamodule.name, cfg.cv.name, task_overrides())


def gather_fold_metrics(cfg: DictConfig, stage: str, datamodule: EmotionDataModule) -> list[dict]:
    """``fold=summary``: the metrics.json of every fold of ``stage`` under the run folder, as separate jobs
    wrote them; an error naming the folds still missing (and the command that trains them), or those made
    with another fold split or seed than this run's configuration."""
    folds = resolve_folds(cfg, datamodule)
    paths = [fold_dir(cfg, stage, fold) / "metrics.json" for fold in folds]
    missing = [fold for fold, path in zip(folds, paths) if not path.is_file()]
    if missing:
        kept = " ".join(other_overrides(task_overrides()))
        raise MissingFoldsError(
            f"fold={SUMMARY} of stage={stage}: fold(s) {', '.join(map(str, missing))} of {len(folds)} have no "
            f"metrics.json under {Path(cfg.paths.run_dir) / stage}; train them first, e.g.\n"
            f"  python train.py -m stage={stage} fold={','.join(map(str, missing))} {kept}".rstrip()
        )
    metrics = [json.loads(path.read_text()) for path in paths]
    for fold, path, record in zip(folds, paths, metrics):
        expected = {"fold_hash": datamodule.folds[fold].content_hash, "seed": int(cfg.seed)}
        found = {key: record.get(key) for key in expected}
        if found != expected:
            raise MismatchedFoldsError(
                f"fold={SUMMARY} of stage={stage}: {path} has {found}, "
                f"this configuration {expected} (another fold split or seed); retrain that fold or set the "
                f"overrides it was trained with"
            )
    return metrics


def stage_max_epochs(cfg: DictConfig, stage: str) -> int:
    """The most epochs ``stage`` trains for: its ``model.<stage>.trainer.max_epochs``, else ``trainer.max_epochs``."""
    return int((cfg.model[stage].get("trainer") or {}).get("max_epochs", cfg.trainer.max_epochs))


def train_folds(cfg: DictConfig, stages: tuple[str, ...], datamodule: EmotionDataModule) -> dict[str, list[dict]]:
    """Train and test every requested (fold, stage) with ``cfg.seed``, fold by fold (fusion after its
    extractors), each told its position in the run; each stage's metrics.json contents in fold order."""
    results: dict[str, list[dict]] = {stage: [] for stage in stages}
    folds = resolve_folds(cfg, datamodule)
    clock = RunClock(stages, {stage: stage_max_epochs(cfg, stage) for stage in stages if stage in PIPELINE}, len(folds))
    for fold_index, fold in enumerate(folds, 1):
        for stage_index, stage in enumerate(stages, 1):
            position = Position(stage_index, len(stages), fold_index, len(folds), clock)
            results[stage].append(STAGES[stage].train(cfg, fold, datamodule, position))
    return results


def cross_validate(
    cfg: DictConfig, stages: tuple[str, ...], datamodule: EmotionDataModule, agent: AgentRun | None
) -> dict[str, dict]:
    """Every requested (fold, stage) with ``cfg.seed`` (or, for ``fold=summary``, their metrics.json as
    separate jobs wrote them); the summary of each stage (summary.json, results.csv etc. for
    ``fold=all|summary``)."""
    if str(cfg.fold) == SUMMARY:
        results = {stage: gather_fold_metrics(cfg, stage, datamodule) for stage in stages}
    else:
        results = train_folds(cfg, stages, datamodule)
    summaries = {}
    for stage in stages:
        summary = summarize_folds(results[stage], cfg.objective)
        summaries[stage] = summary
        if rank_zero_only.rank != 0:
            continue
        print("\n" + format_summary_table(summary))
        if summarises(cfg):
            finish_cross_validation(cfg, summary, agent, is_last=stage == stages[-1])
    return summaries


def print_closing(cfg: DictConfig, stages: tuple[str, ...], folds: list[int], summaries: dict[str, dict]) -> None:
    """On rank zero, the run's last lines: results.csv's rows of its stages (``fold=all|summary``), then
    where its results are (``runner.console.closing_lines``)."""
    if rank_zero_only.rank != 0:
        return
    results = None
    if summarises(cfg):
        first = next(iter(summaries.values()))
        results = Path(cfg.paths.output_dir) / first["corpus"] / first["cv"] / "results.csv"
        rows = [row for row in read_results(results) if row["stage"] in stages]
        print(f"\n{results}:\n" + format_results_table(rows))
    print("\n".join(closing_lines(cfg, stages, folds, results)), flush=True)


def run(cfg: DictConfig) -> dict[str, dict]:
    """Run ``cfg.stage`` (one stage or ``all``) on ``cfg.fold`` (one fold or ``all``), once with ``seed`` or
    once per seed of ``seeds``; returns per stage its summary (one seed) or its seeds summary.

    With ``seeds=[a,b,...]`` each seed's run goes to ``<run_dir>/seed_<s>/`` (the fusion stage reads that
    seed's extractors) and ``fold=all`` adds ``<run_dir>/<stage>/seeds_summary.json``: per seed the fold
    means, and the spread over seeds beside the spread over folds.
    """
    overrides = task_overrides()
    set_lightning_verbosity(bool(cfg.get("verbose")))
    check_stage(str(cfg.stage), (*PIPELINE, "all", *(s for s in STAGES if s not in PIPELINE)), overrides)
    stages = PIPELINE if cfg.stage == "all" else (cfg.stage,)
    check_objective(cfg.objective)
    check_accelerator(cfg.trainer, overrides)
    check_roots(cfg, overrides)
    check_modalities(stages, cfg.data.preprocess, cfg.data.name, overrides)
    seeds = [int(seed) for seed in cfg.get("seeds") or []]
    agent = detach_agent_run(os.environ)
    if agent is not None and (str(cfg.fold) != "all" or not is_wandb(cfg.get("logger")) or seeds):
        raise ValueError(
            f"under wandb agent (sweep {agent.sweep_id}) a run must be fold=all with logger=wandb and one seed: "
            f"the sweep's objective is the cross-validated mean, logged by the cv-summary run (got "
            f"fold={cfg.fold}, logger={(cfg.get('logger') or {}).get('_target_', 'none')}, seeds={seeds or None})"
        )
    cfg.tag = run_tag(cfg, agent)
    datamodule: EmotionDataModule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    for key, corpus in (("data", datamodule), ("test_data", datamodule.test_corpus)):
        for member_key, member in (getattr(corpus, "corpora", None) or {}).items():  # data=multi: each member
            index_corpus(f"{key}.corpora.{member_key}", member, overrides)
        if corpus is not None:
            index_corpus(key, corpus, overrides)
    notice = wandb_notice(cfg)
    if notice and rank_zero_only.rank == 0 and str(cfg.fold) != SUMMARY:
        print(notice, flush=True)
    if not seeds:
        summaries = cross_validate(cfg, stages, datamodule, agent)
        print_closing(cfg, stages, resolve_folds(cfg, datamodule), summaries)
        return summaries
    base_tag, base_run_dir = str(cfg.tag), Path(cfg.paths.run_dir)
    per_seed: dict[str, list[dict]] = {stage: [] for stage in stages}
    for seed in seeds:
        cfg.seed, cfg.tag = seed, f"{base_tag}/seed_{seed}" if base_tag else f"seed_{seed}"
        for stage, summary in cross_validate(cfg, stages, datamodule, agent).items():
            per_seed[stage].append(summary)
    seeds_summaries = {stage: summarize_seeds(per_seed[stage]) for stage in stages}
    if rank_zero_only.rank == 0:
        for stage, seeds_summary in seeds_summaries.items():
            print("\n" + format_seeds_table(seeds_summary))
            if summarises(cfg):
                (base_run_dir / stage).mkdir(parents=True, exist_ok=True)
                atomic_write_text(json.dumps(seeds_summary, indent=2), base_run_dir / stage / "seeds_summary.json")
    cfg.tag = base_tag
    print_closing(cfg, stages, resolve_folds(cfg, datamodule), seeds_summaries)
    return seeds_summaries
