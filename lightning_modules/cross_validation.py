"""What ``python train.py stage=<stage> fold=<K|all>`` does: train stages on folds, test, summarise.

Each (stage, fold) run writes ``<run_dir>/<stage>/fold_<K>/`` with ``config.yaml``,
``checkpoints/best.ckpt`` (chosen on validation clips from training subjects only), ``metrics.json``,
``plots/*_confusion.png`` and, with W&B, its run under ``wandb/``; ``fold=all`` adds
``<run_dir>/<stage>/summary.json``, ``fold_accuracy.png``, ``pooled_*_confusion.png``, a W&B
cv-summary run and a row per stage in ``<output_dir>/<corpus>/<cv>/results.csv``.

Under DDP every rank runs this same sequence of folds and stages (Lightning re-launches the script on
each rank), so the trainers meet; files and W&B runs are written by rank zero only.
"""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from callbacks import build_callbacks
from callbacks.fold_accuracy import log_cv_summary_run, save_cv_summary_plots
from callbacks.loggers import AgentRun, build_logger, detach_agent_run, finish_logger, is_wandb
from callbacks.results_table import append_result, format_results_table, read_results, results_row
from datamodules.datamodule import EmotionDataModule
from datamodules.features import FeatureDataModule
from datamodules.preprocess import atomic_write_text

STAGES = ("audio", "visual", "fusion")
STAGE_INPUTS = {"audio": ("audio",), "visual": ("faces",)}


class MissingCheckpointError(FileNotFoundError):
    """The fusion stage was asked for before the extractors it builds on were trained."""


def fold_dir(cfg: DictConfig, stage: str, fold: int) -> Path:
    return Path(cfg.paths.run_dir) / stage / f"fold_{fold}"


def best_checkpoint(cfg: DictConfig, stage: str, fold: int) -> Path:
    return fold_dir(cfg, stage, fold) / "checkpoints" / "best.ckpt"


def upstream_checkpoints(cfg: DictConfig, fold: int, overrides: list[str] | None = None) -> tuple[Path, Path]:
    """The best audio and visual checkpoints of ``fold`` under ``paths.upstream_dir`` (default: the run
    folder), or an error naming the commands to run first."""
    upstream = Path(cfg.paths.get("upstream_dir") or cfg.paths.run_dir)
    paths = {stage: upstream / stage / f"fold_{fold}" / "checkpoints" / "best.ckpt" for stage in ("audio", "visual")}
    missing = [stage for stage, path in paths.items() if not path.exists()]
    if missing:
        kept = [o for o in overrides or [] if not o.startswith(("stage=", "fold="))]
        commands = "\n".join(
            f"  python train.py {' '.join([f'stage={s}', f'fold={fold}', *kept])}" for s in missing
        )
        raise MissingCheckpointError(
            f"stage=fusion fold={fold} needs the {' and '.join(missing)} extractor checkpoint(s) "
            f"{', '.join(str(paths[s]) for s in missing)}; run first:\n{commands}"
        )
    return paths["audio"], paths["visual"]


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_tag(cfg: DictConfig, agent: AgentRun | None) -> str:
    """The run's ``tag`` (its outputs go to ``<corpus>/<cv>/<tag>/``): ``cfg.tag`` when set, else
    ``sweep-<sweep id>/<run id>`` under a W&B agent, ``multirun-<date>_<time>/<job number>`` in a Hydra
    multirun job, else "" (the plain ``<corpus>/<cv>/`` layout). Parallel jobs thus never share a folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg.get("tag"):
        return str(cfg.tag)
    if agent is not None:
        return f"sweep-{agent.sweep_id}/{agent.run_id}"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra = HydraConfig.get()
        return f"multirun-{'_'.join(Path(hydra.sweep.dir).parts[-2:])}/{hydra.job.num}"
    return ""


def checkpoint_best_score(path: Path) -> float | None:
    """The monitored validation score ModelCheckpoint recorded in ``path`` (None if it holds none)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    for callback_state in state.get("callbacks", {}).values():
        score = callback_state.get("best_model_score") if isinstance(callback_state, dict) else None
        if score is not None:
            return float(score)
    return None


class TrainFromSeededState(L.Callback):
    """Training starts from the random state the run had just before ``fit``, whatever ran in between.

    ``fit`` prepares the data before it trains: on a cold cache that builds MTCNN to preprocess the
    clips (in this process when ``preprocess_workers`` is 1, the default on 2 cores) or loads the
    frozen extractors to compute the fusion features; both initialise networks from the global
    generator, which a warm cache skips. ``capture`` before ``fit`` and the restore at ``on_fit_start``
    (after ``prepare_data`` and ``setup``) make shuffling, dropout and augmentation draw the same numbers
    in the first run of an experiment and in every rerun, and on every rank.
    """

    def __init__(self) -> None:
        self.states: dict | None = None

    def capture(self) -> None:
        self.states = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        }

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.states is None:
            raise RuntimeError("TrainFromSeededState.capture() must be called before fit")
        random.setstate(self.states["python"])
        np.random.set_state(self.states["numpy"])
        torch.set_rng_state(self.states["torch"])
        if self.states["cuda"] is not None:
            torch.cuda.set_rng_state_all(self.states["cuda"])


def train_stage(cfg: DictConfig, stage: str, fold: int, datamodule: EmotionDataModule) -> dict:
    """Train ``stage`` on ``fold``, test its best checkpoint on the held-out clips, write metrics.json.

    With ``test_only=true`` the fold's existing best.ckpt is tested without training (for instance on
    another number of devices: the metrics are the same).
    """
    out = fold_dir(cfg, stage, fold)
    test_only = bool(cfg.get("test_only"))
    if test_only and not best_checkpoint(cfg, stage, fold).exists():
        raise FileNotFoundError(
            f"test_only=true: stage={stage} fold={fold} has no checkpoint {best_checkpoint(cfg, stage, fold)}"
        )
    if rank_zero_only.rank == 0:  # a test-only run keeps the training run's config.yaml
        out.mkdir(parents=True, exist_ok=True)
        config_name = "test_config.yaml" if test_only else "config.yaml"
        atomic_write_text(OmegaConf.to_yaml(cfg, resolve=True), out / config_name)
    stage_cfg = cfg.model[stage]
    datamodule.fold = fold
    if stage == "fusion":
        audio_ckpt, visual_ckpt = upstream_checkpoints(cfg, fold, _task_overrides())
        data: L.LightningDataModule = FeatureDataModule(
            datamodule, audio_ckpt, visual_ckpt, out / "features.pt", batch_size=stage_cfg.batch_size
        )
    else:
        datamodule.inputs = STAGE_INPUTS[stage]
        datamodule.batch_size = stage_cfg.batch_size
        data = datamodule
    L.seed_everything(cfg.seed + fold, workers=True)  # the module's initial weights
    module = instantiate(
        stage_cfg.module, _convert_="all", num_classes=len(datamodule.classes), class_names=list(datamodule.classes)
    )
    test_ids = set(datamodule.current_fold.test)
    test_subjects = sorted({c.subject for c in datamodule.index().clips if c.clip_id in test_ids})
    logger = build_logger(cfg, stage=stage, fold=fold, out_dir=out)
    context = {"dirpath": str(out / "checkpoints"), "out_dir": str(out), "stage": stage, "fold": fold,
               "test_subjects": test_subjects}
    seeded_state = TrainFromSeededState()
    callbacks = [*build_callbacks(cfg.callbacks, context, has_logger=logger is not False), seeded_state]
    trainer: L.Trainer = instantiate(
        cfg.trainer, **stage_cfg.get("trainer", {}), callbacks=callbacks, logger=logger, default_root_dir=str(out)
    )
    failed = True
    try:
        if test_only:
            best = str(best_checkpoint(cfg, stage, fold))
            trainer.test(module, datamodule=data, ckpt_path=best)
            best_score = checkpoint_best_score(Path(best))
        else:
            seeded_state.capture()
            trainer.fit(module, datamodule=data)
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
            if best and Path(best).name != "best.ckpt":
                raise RuntimeError(f"checkpoint saved as {best}; expected {out / 'checkpoints' / 'best.ckpt'}")
            trainer.test(module, datamodule=data, ckpt_path="best" if best else None)
            best_score = float(checkpoint.best_model_score) if best else None
        failed = False
    finally:
        finish_logger(logger, failed)
    test = module.last_eval["test"]
    metrics = {
        "corpus": datamodule.name,
        "cv": cfg.cv.name,
        "stage": stage,
        "fold": fold,
        "test_subjects": test_subjects,
        "class_names": list(datamodule.classes),
        "n_test_clips": test["n_clips"],
        "n_test_segments": test["n_segments"],
        "segment": test["segment"],
        "video": test["video"],
        "best_checkpoint": best,
        "best_val_video_acc": best_score,
    }
    if trainer.is_global_zero:
        atomic_write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    return metrics


def summarize_folds(per_fold: list[dict]) -> dict:
    """Per-fold test metrics, their mean ± sample std over folds, and the pooled confusion matrices."""
    summary: dict = {"folds": [], "mean": {}, "std": {}, "pooled": {}}
    names = ("accuracy", "uar", "macro_f1")
    for m in per_fold:
        row = {"fold": m["fold"], "test_subjects": m["test_subjects"], "n_test_clips": m["n_test_clips"]}
        for level in ("segment", "video"):
            row.update({f"{level}_{n}": m[level][n] for n in names})
        summary["folds"].append(row)
    for key in summary["folds"][0]:
        if key.startswith(("segment_", "video_")):
            values = [row[key] for row in summary["folds"]]
            mean = sum(values) / len(values)
            summary["mean"][key] = mean
            summary["std"][key] = (
                math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            )
    for level in ("segment", "video"):
        pooled = torch.tensor([m[level]["confusion_matrix"] for m in per_fold]).sum(0)
        summary["pooled"][level] = {
            "confusion_matrix": pooled.tolist(),
            "accuracy": float(pooled.trace() / pooled.sum()) if pooled.sum() else 0.0,
        }
    first = per_fold[0]
    summary.update(corpus=first["corpus"], cv=first["cv"], stage=first["stage"], class_names=first["class_names"])
    return summary


def format_summary_table(summary: dict) -> str:
    """The per-fold table a researcher reads at the end of a cross-validation."""
    header = f"{'fold':>6} {'test subjects':<20} {'clips':>5} {'seg acc':>8} {'video acc':>9} {'video UAR':>9}"
    lines = [f"{summary['corpus']} / {summary['cv']} / {summary['stage']}", header, "-" * len(header)]
    for row in summary["folds"]:
        subjects = ",".join(row["test_subjects"])
        lines.append(
            f"{row['fold']:>6} {subjects[:20]:<20} {row['n_test_clips']:>5} {row['segment_accuracy']:>8.3f} "
            f"{row['video_accuracy']:>9.3f} {row['video_uar']:>9.3f}"
        )
    mean, std = summary["mean"], summary["std"]
    lines.append("-" * len(header))
    lines.append(
        f"{'mean':>6} {'± std over folds':<20} {'':>5} {mean['segment_accuracy']:>8.3f} "
        f"{mean['video_accuracy']:>9.3f} {mean['video_uar']:>9.3f}"
    )
    lines.append(
        f"{'':>6} {'':<20} {'':>5} {std['segment_accuracy']:>8.3f} {std['video_accuracy']:>9.3f} "
        f"{std['video_uar']:>9.3f}"
    )
    lines.append(f"pooled video accuracy {summary['pooled']['video']['accuracy']:.3f}")
    return "\n".join(lines)


def finish_cross_validation(cfg: DictConfig, summary: dict, agent: AgentRun | None, is_last: bool) -> None:
    """After ``fold=all`` of one stage (rank zero): summary.json, its plots, the W&B cv-summary run (the
    agent's run when ``is_last`` under ``wandb agent``) and a results.csv row."""
    stage_dir = Path(cfg.paths.run_dir) / summary["stage"]
    atomic_write_text(json.dumps(summary, indent=2), stage_dir / "summary.json")
    plots = save_cv_summary_plots(summary, stage_dir)
    log_cv_summary_run(cfg, summary, plots, stage_dir, agent if is_last else None)
    results = Path(cfg.paths.output_dir) / summary["corpus"] / summary["cv"] / "results.csv"
    append_result(results, results_row(summary, str(cfg.tag), _task_overrides(), Path(cfg.paths.run_dir)))
    print(f"\n{results}:\n" + format_results_table(read_results(results), stage=summary["stage"]))


def run(cfg: DictConfig) -> dict:
    """Run ``cfg.stage`` (one stage or ``all``) on ``cfg.fold`` (one fold or ``all``)."""
    stages = STAGES if cfg.stage == "all" else (cfg.stage,)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stage={cfg.stage}: expected one of {', '.join(STAGES)} or all")
    agent = detach_agent_run(os.environ)
    if agent is not None and (str(cfg.fold) != "all" or not is_wandb(cfg.get("logger"))):
        raise ValueError(
            f"under wandb agent (sweep {agent.sweep_id}) a run must be fold=all with logger=wandb: the sweep's "
            f"objective is the cross-validated mean, logged by the cv-summary run (got fold={cfg.fold}, "
            f"logger={(cfg.get('logger') or {}).get('_target_', 'none')})"
        )
    cfg.tag = run_tag(cfg, agent)
    datamodule: EmotionDataModule = instantiate(cfg.data, cv=instantiate(cfg.cv.folds))
    n_folds = len(datamodule.folds)
    if str(cfg.fold) == "all":
        folds = list(range(n_folds))
    elif str(cfg.fold).isdigit() and int(cfg.fold) < n_folds:
        folds = [int(cfg.fold)]
    else:
        raise ValueError(f"fold={cfg.fold}: {datamodule.name} has folds 0..{n_folds - 1} under cv={cfg.cv.name}")
    results: dict[str, list[dict]] = {stage: [] for stage in stages}
    for fold in folds:
        for stage in stages:
            results[stage].append(train_stage(cfg, stage, fold, datamodule))
    summaries = {}
    for stage in stages:
        summary = summarize_folds(results[stage])
        summaries[stage] = summary
        if rank_zero_only.rank != 0:
            continue
        print("\n" + format_summary_table(summary))
        if str(cfg.fold) == "all":
            finish_cross_validation(cfg, summary, agent, is_last=stage == stages[-1])
    return summaries
