"""Training progress a reader can follow: the rich bar on a terminal, one plain line per epoch in a log file.

A rich (or tqdm) bar redraws one line in place; when stdout is a file (a SLURM job, ``nohup``, ``> log``)
that writes nothing readable for minutes, then a wall of control codes. ``progress_bar`` picks the bar
on a terminal and ``EpochLines`` elsewhere, by ``sys.stdout.isatty()``.
"""

from __future__ import annotations

import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

# (label, logged names tried in order): the epoch's value is logged as <name>_epoch when also logged per step
EPOCH_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train loss", ("train/loss_epoch", "train/loss")),
    ("train acc", ("train/acc",)),
    ("val loss", ("val/loss",)),
    ("val seg acc", ("val/seg_acc",)),
    ("val video acc", ("val/video_acc",)),
)


class EpochLines(ProgressBar):
    """One line per training epoch, after its validation: stage, fold, epoch, train and validation loss and
    accuracy, and the time since ``fit`` started. Being a ``ProgressBar``, it replaces Lightning's tqdm bar."""

    def __init__(self, stage: str = "", fold: int | str = "") -> None:
        super().__init__()
        self.stage, self.fold = stage, fold
        self._enabled = True
        self._start = time.perf_counter()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            print(self.epoch_line(trainer), flush=True)

    def epoch_line(self, trainer: L.Trainer) -> str:
        """``stage audio fold 2 epoch 3/15: train loss 1.234, ... | 42 s``; a value not logged is left out."""
        metrics = trainer.callback_metrics
        values = []
        for label, names in EPOCH_COLUMNS:
            name = next((n for n in names if n in metrics), None)
            if name is not None:
                values.append(f"{label} {float(metrics[name]):.3f}")
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return (
            f"stage {self.stage} fold {self.fold} epoch {trainer.current_epoch + 1}{epochs}: "
            f"{', '.join(values)} | {time.perf_counter() - self._start:.0f} s"
        )


def progress_bar(stage: str = "", fold: int | str = "", interactive: bool | None = None) -> ProgressBar:
    """The rich bar when ``interactive`` (None: when stdout is a terminal), else ``EpochLines``.

    ``stage`` and ``fold`` are filled in per run by ``callbacks.build_callbacks``.
    """
    if interactive is None:
        interactive = sys.stdout.isatty()
    return RichProgressBar() if interactive else EpochLines(stage, fold)
