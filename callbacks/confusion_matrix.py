"""Segment- and video-level confusion matrices at validation and test end: W&B chart + heatmap, and PNG files."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from callbacks.plots import confusion_matrix_figure, save_figure

LEVELS = ("segment", "video")


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


def log_confusion_matrix(
    logger: WandbLogger | None, key: str, matrix: Sequence[Sequence[int]], class_names: Sequence[str],
    title: str, png: Path, step: int | None = None,
) -> Path:
    """Save the heatmap of ``matrix`` as ``png``; with a W&B logger also log it as ``<key>_heatmap``
    (image) and as ``<key>`` (interactive chart; its data table is ``<key>_table``)."""
    figure = confusion_matrix_figure(matrix, class_names, title)
    save_figure(figure, png)
    if logger is not None:
        import wandb

        y_true, y_pred = confusion_pairs(matrix)
        chart = wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=list(class_names), title=title)
        logger.log_metrics({key: chart, f"{key}_heatmap": wandb.Image(str(png), caption=title)}, step=step)
    return png


class ConfusionMatrixLogger(L.Callback):
    """After each validation and after the test: the gathered confusion matrices of both levels.

    Reads ``pl_module.last_eval["val"|"test"]`` (global over all ranks, so identical whatever the
    number of processes) and logs from rank zero only: W&B keys ``<split>/<level>_confusion_matrix``
    (chart) and ``..._heatmap`` (image, one per validation epoch for the step slider); PNG files
    ``<out_dir>/plots/<split>_<level>_confusion.png`` (validation: the latest epoch).

    Args:
        out_dir: the fold's output folder.
        stage, fold: named in the figure titles.
        log_validation: also log after every validation epoch (the test is always logged).
    """

    def __init__(self, out_dir: str | Path, stage: str = "", fold: int | None = None, log_validation: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.title = " ".join(part for part in (stage, "" if fold is None else f"fold {fold}") if part)
        self.log_validation = log_validation

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.log_validation and not trainer.sanity_checking:
            self._log(trainer, pl_module, "val", f"epoch {trainer.current_epoch}")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test", "test")

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, when: str) -> None:
        result = getattr(pl_module, "last_eval", {}).get(split)
        if result is None or not trainer.is_global_zero:
            return
        logger = wandb_logger_of(trainer)
        for level in LEVELS:
            log_confusion_matrix(
                logger, f"{split}/{level}_confusion_matrix", result[level]["confusion_matrix"], result["class_names"],
                f"{self.title} {split} {level}-level ({when})".strip(), self.out_dir / "plots" / f"{split}_{level}_confusion.png",
                step=trainer.global_step,
            )
