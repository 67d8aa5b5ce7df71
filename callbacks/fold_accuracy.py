"""Per-fold test accuracy (a W&B table row per fold run) and the cross-validation summary run.

After ``fold=all`` each stage gets ``<run_dir>/<stage>/fold_accuracy.png`` (bars per fold, mean ± std)
and ``pooled_<level>_confusion.png``, and with W&B a run with ``job_type=cv-summary`` holding the
per-fold table, ``cv/<metric>_mean`` / ``cv/<metric>_std`` (the sweep objective is
``cv/video_accuracy_mean``), a per-fold bar chart and the pooled confusion matrices.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from callbacks.confusion_matrix import LEVELS, wandb_confusion_matrix, wandb_logger_of
from callbacks.loggers import AgentRun, agent_run_environment, is_wandb, wandb_init_kwargs
from callbacks.plots import confusion_matrix_figure, fold_accuracy_figure, save_figure

METRICS = ("accuracy", "uar", "macro_f1")
FOLD_COLUMNS = (
    "stage", "fold", "test_subjects", "n_test_clips", "n_test_segments",
    *(f"{level}_{metric}" for level in LEVELS for metric in METRICS),
)
SWEEP_OBJECTIVE = "cv/video_accuracy_mean"


def fold_accuracy_row(stage: str, fold: int, test_subjects: Sequence[str], result: dict) -> dict:
    """One fold's test metrics as a flat row (keys FOLD_COLUMNS) from an evaluation result dict."""
    row = {
        "stage": stage, "fold": fold, "test_subjects": ",".join(test_subjects),
        "n_test_clips": result["n_clips"], "n_test_segments": result["n_segments"],
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
    plots = {
        "fold_accuracy": save_figure(
            fold_accuracy_figure(
                summary["folds"], summary["mean"], summary["std"], title, chance=1 / len(summary["class_names"])
            ),
            out_dir / "fold_accuracy.png",
        )
    }
    for level in LEVELS:
        figure = confusion_matrix_figure(
            summary["pooled"][level]["confusion_matrix"], summary["class_names"],
            f"{title}: {level}-level, pooled over {len(summary['folds'])} folds",
        )
        plots[f"pooled_{level}"] = save_figure(figure, out_dir / f"pooled_{level}_confusion.png")
    return plots


def cv_summary_metrics(summary: dict) -> dict[str, float]:
    """``cv/<metric>_mean``, ``cv/<metric>_std`` and ``cv/pooled_<level>_accuracy`` of a summary.json."""
    metrics = {f"cv/{name}_mean": float(value) for name, value in summary["mean"].items()}
    metrics.update({f"cv/{name}_std": float(value) for name, value in summary["std"].items()})
    metrics.update({f"cv/pooled_{level}_accuracy": float(summary["pooled"][level]["accuracy"]) for level in LEVELS})
    metrics["cv/n_folds"] = len(summary["folds"])
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
            columns = [c for c in FOLD_COLUMNS if c != "n_test_segments"]  # not in summary.json's rows
            rows = [
                [{**row, "stage": stage, "test_subjects": ",".join(row["test_subjects"])}[c] for c in columns]
                for row in summary["folds"]
            ]
            table = wandb.Table(columns=columns, data=rows)
            bars = wandb.Table(
                columns=["fold", "video_accuracy"],
                data=[[f"fold {row['fold']} ({','.join(row['test_subjects'])})", row["video_accuracy"]]
                      for row in summary["folds"]],
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
                    f"cv/pooled_{level}_confusion_matrix", summary["pooled"][level]["confusion_matrix"],
                    summary["class_names"], f"{stage} {level}-level, pooled over folds", plots[f"pooled_{level}"],
                )
            run.log({**log, **cv_summary_metrics(summary)})
            run_id = run.id
        except BaseException:
            run.finish(exit_code=1)
            raise
        run.finish()
    return run_id
