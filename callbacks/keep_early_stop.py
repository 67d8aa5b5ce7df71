"""Early stopping that holds across a resume."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping


class KeepEarlyStop(L.Callback):
    """A run resumed after early stopping had ended its training trains no further epoch.

    The restored ``EarlyStopping`` knows it stopped (``stopped_epoch``), but Lightning does not save the
    trainer's ``should_stop``: without this, a run killed between the stop and its ``metrics.json`` would
    train on and could choose another checkpoint.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in trainer.callbacks):
            trainer.should_stop = True
