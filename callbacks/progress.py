"""Training progress a reader can follow: the rich bar on a terminal, one plain line per epoch in a log file.

A rich (or tqdm) bar redraws one line in place; when stdout is a file (a SLURM job, ``nohup``, ``> log``)
that writes nothing readable for minutes, then a wall of control codes. ``progress_bar`` picks the bar
on a terminal and ``EpochLines`` elsewhere, by ``sys.stdout.isatty()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from datamodules.terminal import interactive_output

# (label, logged names tried in order): the epoch's value is logged as <name>_epoch when also logged per step
EPOCH_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train loss", ("train/loss_epoch", "train/loss")),
    ("train acc", ("train/acc",)),
    ("val loss", ("val/loss",)),
    ("val seg acc", ("val/seg_acc",)),
    ("val video acc", ("val/video_acc",)),
)


def clock_time(seconds: float) -> str:
    """``42 s``, ``3:07`` (minutes:seconds) or ``1:02:07``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class RunClock:
    """The timing of one command's (stage, fold) runs, shared by them: when it started, each stage's
    ``max_epochs`` and the seconds each stage's epochs took so far.

    ``left`` estimates the time to the end of the run from the mean epoch time of each stage (of every
    stage seen, for one not trained yet) and ``max_epochs``: an upper bound where early stopping ends
    folds sooner."""

    stages: tuple[str, ...]
    max_epochs: dict[str, int]
    fold_count: int
    start: float = field(default_factory=time.perf_counter)
    epoch_seconds: dict[str, list[float]] = field(default_factory=dict)

    def record(self, stage: str, seconds: float) -> None:
        self.epoch_seconds.setdefault(stage, []).append(seconds)

    def seconds_per_epoch(self, stage: str) -> float | None:
        seen = self.epoch_seconds.get(stage) or [s for times in self.epoch_seconds.values() for s in times]
        return sum(seen) / len(seen) if seen else None

    def left(self, position: Position, epochs_left: int) -> float | None:
        """Seconds to the end of the run from ``position`` with ``epochs_left`` epochs of its fit to go."""
        current = self.stages[position.stage - 1]
        later = [*self.stages[position.stage :], *self.stages * (position.folds - position.fold)]
        rates = {stage: self.seconds_per_epoch(stage) for stage in {current, *later}}
        if None in rates.values():
            return None
        return epochs_left * rates[current] + sum(self.max_epochs[stage] * rates[stage] for stage in later)


@dataclass(frozen=True)
class Position:
    """Where a (stage, fold) run is in its command: stage ``stage`` of ``stages`` and fold ``fold`` of
    ``folds`` (1-based), with the command's ``clock``."""

    stage: int
    stages: int
    fold: int
    folds: int
    clock: RunClock


class EpochLines(ProgressBar):
    """One line per training epoch, after its validation: the run's position (stage, fold, epoch), train
    and validation loss and accuracy, the time since ``fit`` started and the estimated time left for the
    fold and, with a ``position``, for the whole run. Being a ``ProgressBar``, it replaces Lightning's
    tqdm bar."""

    def __init__(self, stage: str = "", fold: int | str = "", position: Position | None = None) -> None:
        super().__init__()
        self.stage, self.fold, self.position = stage, fold, position
        self._enabled = True
        self._start = self._epoch_start = time.perf_counter()
        self._first_epoch = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._epoch_start = time.perf_counter()
        self._first_epoch = trainer.current_epoch  # a resumed fit starts past epoch 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        if self.position is not None:
            self.position.clock.record(self.stage, now - self._epoch_start)
        self._epoch_start = now
        if self._enabled and trainer.is_global_zero:
            print(self.epoch_line(trainer), flush=True)

    def where(self, trainer: L.Trainer) -> str:
        """``stage audio (1/3), fold 0 (1/5), epoch 3/15``; without a position ``stage audio, fold 0, epoch 3/15``."""
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        epoch = f"epoch {trainer.current_epoch + 1}{epochs}"
        if self.position is None:
            return f"stage {self.stage}, fold {self.fold}, {epoch}"
        p = self.position
        return f"stage {self.stage} ({p.stage}/{p.stages}), fold {self.fold} ({p.fold}/{p.folds}), {epoch}"

    def timing(self, trainer: L.Trainer) -> str:
        """``42 s, fold ~1:10 left, run ~12:30 left``: elapsed in this fit, then estimates from its epochs so far."""
        elapsed = time.perf_counter() - self._start
        parts = [clock_time(elapsed)]
        done = trainer.current_epoch + 1 - self._first_epoch
        if trainer.max_epochs and trainer.max_epochs > 0 and done > 0:
            epochs_left = max(trainer.max_epochs - trainer.current_epoch - 1, 0)
            parts.append(f"fold ~{clock_time(elapsed / done * epochs_left)} left")
            several = self.position is not None and self.position.stages * self.position.folds > 1
            run_left = self.position.clock.left(self.position, epochs_left) if several else None
            if run_left is not None:
                parts.append(f"run ~{clock_time(run_left)} left")
        return ", ".join(parts)

    def epoch_line(self, trainer: L.Trainer) -> str:
        """``stage audio (1/3), fold 2 (3/5), epoch 3/15: train loss 1.234, ... | 42 s, fold ~2:20 left, run
        ~31:05 left``; a value not logged is left out."""
        metrics = trainer.callback_metrics
        values = []
        for label, names in EPOCH_COLUMNS:
            name = next((n for n in names if n in metrics), None)
            if name is not None:
                values.append(f"{label} {float(metrics[name]):.3f}")
        return f"{self.where(trainer)}: {', '.join(values)} | {self.timing(trainer)}"


def progress_bar(
    stage: str = "", fold: int | str = "", interactive: bool | None = None, position: Position | None = None
) -> ProgressBar:
    """The rich bar when ``interactive`` (None: when stdout is a terminal), else ``EpochLines``.

    ``stage``, ``fold`` and ``position`` are filled in per run by ``runner.stage.build_callbacks``.
    """
    return RichProgressBar() if interactive_output(interactive) else EpochLines(stage, fold, position)
