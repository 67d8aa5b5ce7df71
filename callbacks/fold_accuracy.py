"""Per-fold test accuracy: a W&B table row per fold run (the cross-validation summary run is
``tracking/cv_summary_run.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from tracking.cv_summary_run import FOLD_COLUMNS, fold_accuracy_row
from tracking.wandb_charts import wandb_logger_of


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
