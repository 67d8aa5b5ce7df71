"""An exponential moving average of the weights, evaluated in place of the weights themselves."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMAWeights(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging (after every optimiser step ``avg = decay * avg + (1 - decay) * weights``,
    BatchNorm statistics included), with the average as what every evaluation sees.

    During fit, validation runs on the average and each checkpoint's ``state_dict`` holds the average (the raw
    weights and the averaging state ride along, so ``last.ckpt`` resumes both). Lightning's callback keeps its
    averaged copy after fit and, given a checkpoint, loads the raw weights into the module and swaps the average in
    for validation only, so ``trainer.test(ckpt_path=best)`` after ``fit`` would test the raw weights. Here the
    copy is dropped when training ends: validation and test then load the chosen checkpoint's ``state_dict``, the
    average, as a test-only run or ``load_from_checkpoint`` does.

    Args:
        decay: the average's weight on its previous value per optimiser step (0.99: about 70 steps' half-life).
    """

    def __init__(self, decay: float = 0.99) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        super().__init__(decay=decay)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._average_model = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is not None:  # resuming fit: the average and the raw weights, each to its place
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
