"""W&B values built from the gathered evaluation: the trainer's W&B logger and confusion-matrix charts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger


def wandb_logger_of(trainer: L.Trainer) -> WandbLogger | None:
    """The trainer's W&B logger, if it has one."""
    return next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)


def confusion_pairs(matrix: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(true classes, predicted classes), one pair per counted sample, that reproduce ``matrix`` exactly.

    ``wandb.plot.confusion_matrix`` counts pairs itself; the evaluation keeps only the counts (gathered
    over all ranks), so they are expanded back.
    """
    y_true: list[int] = []
    y_pred: list[int] = []
    for true_class, row in enumerate(matrix):
        for predicted_class, count in enumerate(row):
            y_true += [true_class] * int(count)
            y_pred += [predicted_class] * int(count)
    return y_true, y_pred


def wandb_confusion_matrix(
    key: str, matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str, png: Path | None
) -> dict:
    """W&B values for ``matrix``: the interactive chart as ``<key>`` (its data table becomes
    ``<key>_table``) and, when given, the rendered heatmap ``png`` as ``<key>_heatmap``."""
    import wandb

    y_true, y_pred = confusion_pairs(matrix)
    chart = wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=list(class_names), title=title)
    return {key: chart} | ({f"{key}_heatmap": wandb.Image(str(png), caption=title)} if png else {})
