"""The cross-validation summary of one stage as plots and a W&B run.

After ``fold=all`` each stage gets ``<run_dir>/<stage>/fold_accuracy.png`` (bars per fold, mean ± std),
``pooled_<level>_confusion.png`` and, when its folds each test one corpus, ``corpus_accuracy.png`` (bars per
test corpus; the ``cv/per_corpus`` table and ``cv/corpus/<corpus>/<metric>`` in W&B), and with W&B a run with ``job_type=cv-summary`` holding the
per-fold table, ``cv/<split>/<metric>_mean`` / ``cv/<split>/<metric>_std`` for the val and test blocks (a sweep's
objective is the validation one, ``cv_objective_key(objective.metric)``, e.g. ``cv/val/video_uar_mean``;
``cv/objective`` holds its value too), a per-fold bar chart and the pooled test confusion matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from lightning_modules.objective import LEVELS, SPLITS, check_objective
from tracking.loggers import (
    AgentRun,
    agent_run_environment,
    is_wandb,
    wandb_init_kwargs,
)
from tracking.plots import confusion_matrix_figure, corpus_accuracy_figure, fold_accuracy_figure, save_figure
from tracking.wandb_charts import wandb_confusion_matrix

METRICS = ("accuracy", "uar", "macro_f1")
FOLD_COLUMNS = (
    "stage",
    "fold",
    "test_subjects",
    "n_test_clips",
    "n_test_segments",
    *(f"{level}_{metric}" for level in LEVELS for metric in METRICS),
)


CORPUS_COLUMNS = (
    "corpus",
    "n_clips",
    "n_segments",
    "video_accuracy",
    "video_uar",
    "segment_accuracy",
    "not_in_test",
    "not_in_training",
)


def corpus_cell(value: object) -> object:
    """A per-corpus table cell for W&B: lists (fold indices, class names) as one comma-separated string."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


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
    if test.get("per_corpus"):
        figure = corpus_accuracy_figure(test["per_corpus"], title, chance=1 / len(summary["class_names"]))
        plots["corpus_accuracy"] = save_figure(figure, out_dir / "corpus_accuracy.png")
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
    for row in summary["test"].get("per_corpus", []):
        metrics.update(
            {f"cv/corpus/{row['corpus']}/{name}": float(row[name]) for name in ("video_accuracy", "video_uar")}
        )
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
            per_corpus = summary["test"].get("per_corpus")
            if per_corpus:
                log["cv/per_corpus"] = wandb.Table(
                    columns=list(CORPUS_COLUMNS),
                    data=[[corpus_cell(row[c]) for c in CORPUS_COLUMNS] for row in per_corpus],
                )
                log["cv/corpus_accuracy_plot"] = wandb.Image(str(plots["corpus_accuracy"]))
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
