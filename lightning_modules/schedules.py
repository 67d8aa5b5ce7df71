"""Learning-rate schedules chosen by ``model.<stage>.module.scheduler`` (a Hydra ``_target_`` with ``_partial_: true``).

Each schedule is a function ``(optimizer, trainer, **settings)`` -> Lightning's lr_scheduler config dict
(``{"scheduler": ..., "interval": ..., ...}``): the module's ``configure_optimizers`` calls the partial with the
optimiser it built and its trainer, which supplies the values known only at run time (the number of epochs or
of optimiser steps). ``scheduler: null`` keeps the learning rate constant. For example::

    scheduler: {_target_: lightning_modules.schedules.cosine, _partial_: true}
    scheduler: {_target_: lightning_modules.schedules.plateau, _partial_: true, patience: 3}
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau


def cosine(optimizer: torch.optim.Optimizer, trainer: L.Trainer) -> dict[str, Any]:
    """Cosine decay of the learning rate to 0 over ``trainer.max_epochs``, stepped per epoch."""
    max_epochs = trainer.max_epochs
    if not max_epochs or max_epochs < 1:
        raise ValueError("the cosine schedule needs trainer.max_epochs >= 1")
    return {"scheduler": CosineAnnealingLR(optimizer, T_max=max_epochs), "interval": "epoch"}


def one_cycle(optimizer: torch.optim.Optimizer, trainer: L.Trainer, pct_start: float = 0.3) -> dict[str, Any]:
    """One cycle over all of training's optimiser steps (``trainer.estimated_stepping_batches``), stepped per step:
    warm-up to the optimiser's learning rate (the module's ``lr``) over the first ``pct_start`` of the steps, then
    cosine decay."""
    return {
        "scheduler": OneCycleLR(
            optimizer,
            max_lr=optimizer.defaults["lr"],
            total_steps=int(trainer.estimated_stepping_batches),
            pct_start=pct_start,
        ),
        "interval": "step",
    }


def plateau(
    optimizer: torch.optim.Optimizer,
    trainer: L.Trainer,
    patience: int = 5,
    factor: float = 0.1,
    monitor: str = "val/loss",
) -> dict[str, Any]:
    """The learning rate times ``factor`` when ``monitor`` (a validation loss: lower is better) has not improved
    for ``patience`` epochs."""
    return {"scheduler": ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience), "monitor": monitor}
