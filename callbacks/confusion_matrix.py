"""Segment- and video-level confusion matrices at validation and test end: W&B chart + heatmap, and PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from callbacks.checkpoint import BestCheckpoint
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


def wandb_confusion_matrix(
    key: str, matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str, png: Path | None
) -> dict:
    """W&B values for ``matrix``: the interactive chart as ``<key>`` (its data table becomes
    ``<key>_table``) and, when given, the rendered heatmap ``png`` as ``<key>_heatmap``."""
    import wandb

    y_true, y_pred = confusion_pairs(matrix)
    chart = wandb.plot.confusion_matrix(y_true=y_true, preds=y_pred, class_names=list(class_names), title=title)
    return {key: chart} | ({f"{key}_heatmap": wandb.Image(str(png), caption=title)} if png else {})


def becomes_best_checkpoint(trainer: L.Trainer) -> bool:
    """Whether the validation that just ended will be the checkpoint callback's new best (True without one).

    Lightning runs ModelCheckpoint after every other callback, so its best score is still the previous one.
    """
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, BestCheckpoint):
        return checkpoint.improves(trainer.callback_metrics)
    monitor = getattr(checkpoint, "monitor", None)
    current = trainer.callback_metrics.get(monitor) if monitor else None
    best = getattr(checkpoint, "best_model_score", None)
    if current is None or best is None:
        return True
    return bool(current > best) if checkpoint.mode == "max" else bool(current < best)


class ConfusionMatrixLogger(L.Callback):
    """After each validation and after the test: the gathered confusion matrices of both levels.

    Reads ``pl_module.last_eval["val"|"test"]`` (global over all ranks, so identical whatever the
    number of processes) and logs from rank zero only: W&B charts ``<split>/<level>_confusion_matrix``
    (every validation epoch and the test) and rendered heatmaps ``..._heatmap``, also written as
    ``<out_dir>/plots/<split>_<level>_confusion.png``. Rendering costs a quarter second, so validation
    heatmaps are drawn only for the epochs that become the best checkpoint: at the end of training the
    validation PNGs show the epoch whose checkpoint is tested.

    Args:
        out_dir: the fold's output folder.
        stage, fold: named in the figure titles.
        log_validation: also log after every validation epoch (the test is always logged).
    """

    def __init__(
        self, out_dir: str | Path, stage: str = "", fold: int | None = None, log_validation: bool = True
    ) -> None:
        self.out_dir = Path(out_dir)
        self.title = " ".join(part for part in (stage, "" if fold is None else f"fold {fold}") if part)
        self.log_validation = log_validation

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.log_validation and not trainer.sanity_checking:
            epoch = trainer.current_epoch
            self._log(trainer, pl_module, "val", f"epoch {epoch}", render=becomes_best_checkpoint(trainer))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module, "test", "tested checkpoint", render=True)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, when: str, render: bool) -> None:
        result = getattr(pl_module, "last_eval", {}).get(split)
        if result is None or not trainer.is_global_zero:
            return
        logger = wandb_logger_of(trainer)
        logged: dict = {}
        for level in LEVELS:
            title = f"{self.title} {split} {level}-level ({when})".strip()
            matrix = result[level]["confusion_matrix"]
            png = None
            if render:
                png = save_figure(
                    confusion_matrix_figure(matrix, result["class_names"], title),
                    self.out_dir / "plots" / f"{split}_{level}_confusion.png",
                )
            if logger is not None:
                key = f"{split}/{level}_confusion_matrix"
                logged |= wandb_confusion_matrix(key, matrix, result["class_names"], title, png)
        if logged:
            logger.log_metrics(logged, step=trainer.global_step)
