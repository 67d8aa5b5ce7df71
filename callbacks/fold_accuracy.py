"""Per-fold test accuracy (a W&B table row per fold run) and the cross-validation summary run.

After ``fold=all`` each stage gets ``<run_dir>/<stage>/fold_accuracy.png`` (bars per fold, mean ± std)
and ``pooled_<level>_confusion.png``, and with W&B a run with ``job_type=cv-summary`` holding the
per-fold table, ``cv/<split>/<metric>_mean`` / ``cv/<split>/<metric>_std`` for the val and test blocks (a sweep's
objective is the validation one, ``cv_objective_key(objective.metric)``, e.g. ``cv/val/video_uar_mean``;
``cv/objective`` holds its value too), a per-fold bar chart and the pooled test confusion matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from callbacks.confusion_matrix import LEVELS, wandb_confusion_matrix, wandb_logger_of
from callbacks.loggers import AgentRun, agent_run_environment, is_wandb, wandb_init_kwargs
from callbacks.plots import confusion_matrix_figure, fold_accuracy_figure, save_figure
from lightning_modules.cv_summary import SPLITS, check_objective

METRICS = ("accuracy", "uar", "macro_f1")
FOLD_COLUMNS = (
    "stage",
    "fold",
    "test_subjects",
    "n_test_clips",
    "n_test_segments",
    *(f"{level}_{metric}" for level in LEVELS for metric in METRICS),
)


def cv_objective_key(metric: str) -> str:
    """The cv-summary run's key of an objective's cross-validated mean: val/video_uar -> cv/val/video_uar_mean."""
    summary_name, _ = check_objective({"metric": metric, "mode": "max"})
    return f"cv/val/{summary_name}_mean"


def fold_accuracy_row(stage: str, fold: int, test_subjects: Sequence[str], result: dict) -> dict:
    """One fold's test metrics as a flat row (keys FOLD_COLUMNS) from an evaluation result dict."""
    row = {
        "stage": stage,
        "fold": fold,
        "test_subjects": ",".join(test_subjects),
        "n_test_clips": result["n_clips"],
        "n_test_segments": result["n_segments"],
    }
    row.update({f"{level}_{metric}": float(result[level][metric]) for level in LEVELS for metric in METRICS})
    return row


class FoldAccuracyLogger(L.Callback):
    """After the test of a fold: its accuracy row as the W&B table ``test/fold_accuracy`` (rank zero).

    The same numbers are in the fold's metrics.json and, after ``fold=all``, in summary.json and the
    cv-summary run's table.
    """

    def __init__(self, stage: str, fold: int, test_subjects: Sequence[str] = ()) -> None:
        self.stage, self.fold, self.test_subjects = stage, fold, list(test_subjects)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        result = getattr(pl_module, "last_eval", {}).get("test")
        logger = wandb_logger_of(trainer)
        if result is None or logger is None or not trainer.is_global_zero:
            return
        row = fold_accuracy_row(self.stage, self.fold, self.test_subjects, result)
        logger.log_table("test/fold_accuracy", columns=list(FOLD_COLUMNS), data=[[row[c] for c in FOLD_COLUMNS]])


def save_cv_summary_plots(summary: dict, out_dir: Path) -> dict[str, Path]:
    """The per-fold bar chart and the pooled confusion heatmaps of a summary.json, as PNGs in ``out_dir``."""
    title = f"{summary['corpus']} / {summary['cv']} / {summary['stage']}"
    test = summary["test"]
    plots = {
        "fold_accuracy": save_figure(
            fold_accuracy_figure(
                test["folds"], test["mean"], test["std"], title, chance=1 / len(summary["class_names"])
            ),
            out_dir / "fold_accuracy.png",
        )
    }
    for level in LEVELS:
        figure = confusion_matrix_figure(
            test["pooled"][level]["confusion_matrix"],
            summary["class_names"],
            f"{title}: {level}-level, pooled over {len(test['folds'])} folds",
        )
        plots[f"pooled_{level}"] = save_figure(figure, out_dir / f"pooled_{level}_confusion.png")
    return plots


def cv_summary_metrics(summary: dict) -> dict[str, float]:
    """``cv/<split>/<metric>_mean`` and ``_std`` for val and test, ``cv/test/pooled_<level>_accuracy`` and
    ``cv/objective`` (the validation objective's mean over folds) of a summary.json."""
    metrics: dict[str, float] = {"cv/objective": float(summary["objective"]["mean"])}
    for split in SPLITS:
        for stat in ("mean", "std"):
            metrics.update({f"cv/{split}/{name}_{stat}": float(v) for name, v in summary[split][stat].items()})
    pooled = summary["test"]["pooled"]
    metrics.update({f"cv/test/pooled_{level}_accuracy": float(pooled[level]["accuracy"]) for level in LEVELS})
    metrics["cv/n_folds"] = len(summary["test"]["folds"])
    return metrics


def log_cv_summary_run(
    cfg: DictConfig, summary: dict, plots: dict[str, Path], out_dir: Path, agent: AgentRun | None = None
) -> str | None:
    """Start, fill and finish the ``cv-summary`` W&B run of one stage; returns its run id (None without W&B).

    ``agent``: under ``wandb agent`` this run is the agent's own run, so the sweep reads the objective here.
    Call on rank zero only.
    """
    if not is_wandb(cfg.get("logger")):
        return None
    import wandb

    stage = summary["stage"]
    with agent_run_environment(agent):
        kwargs = wandb_init_kwargs(cfg, name=f"{stage}-cv-summary", job_type="cv-summary", out_dir=out_dir)
        kwargs["config"]["summary_stage"] = stage
        run = wandb.init(**kwargs)
        try:
            objective_key, _ = check_objective(summary["objective"])
            metric_columns = [c for c in FOLD_COLUMNS if c.startswith(LEVELS)]
            columns = [
                "stage",
                "fold",
                "test_subjects",
                "n_test_clips",
                summary["objective"]["metric"],
                *metric_columns,
            ]
            rows = [
                [
                    stage,
                    row["fold"],
                    ",".join(row["subjects"]),
                    row["n_clips"],
                    val_row[objective_key],
                    *(row[c] for c in metric_columns),
                ]
                for val_row, row in zip(summary["val"]["folds"], summary["test"]["folds"])
            ]
            table = wandb.Table(columns=columns, data=rows)
            bars = wandb.Table(
                columns=["fold", "video_accuracy"],
                data=[
                    [f"fold {row['fold']} ({','.join(row['subjects'])})", row["video_accuracy"]]
                    for row in summary["test"]["folds"]
                ],
            )
            log: dict = {
                "cv/fold_accuracy": table,
                "cv/fold_video_accuracy": wandb.plot.bar(
                    bars, "fold", "video_accuracy", title="test video accuracy per fold"
                ),
                "cv/fold_accuracy_plot": wandb.Image(str(plots["fold_accuracy"])),
            }
            for level in LEVELS:
                log |= wandb_confusion_matrix(
                    f"cv/pooled_{level}_confusion_matrix",
                    summary["test"]["pooled"][level]["confusion_matrix"],
                    summary["class_names"],
                    f"{stage} {level}-level, pooled over folds",
                    plots[f"pooled_{level}"],
                )
            run.log({**log, **cv_summary_metrics(summary)})
            run_id = run.id
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish()
    return run_id
