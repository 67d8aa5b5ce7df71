"""The best checkpoint's monitor: the validation objective, with ties broken by a second validation metric."""

from __future__ import annotations

import math
from collections.abc import Mapping

import lightning as L
import numpy as np


def squash(value: float) -> float:
    """``value`` mapped increasingly onto [-1, 1]: ``value / (1 + |value|)``, and +-1 at +-inf."""
    return math.copysign(1.0, value) if math.isinf(value) else value / (1.0 + abs(value))


class SelectionScore(L.Callback):
    """The number ``val/selection`` that Lightning's ModelCheckpoint monitors: ``metric``, with ties on it broken
    by ``tie_break``.

    A validation set of a few dozen clips saturates: on CK+ folds the validation UAR reaches 1.0 in the middle of
    training and stays there. ModelCheckpoint on the metric keeps the first epoch of a tie, a model still training
    at a high learning rate; on this score a later tied epoch replaces it when its ``tie_break`` (val/loss) is
    better. Both are validation metrics: the test fold never takes part.

    The score is the metric rounded to float32, the precision it is logged at (and compared at by EarlyStopping),
    moved towards better by ``spacing / 4 * g``: ``spacing`` is float32's spacing at the metric and ``g`` in
    [-1, 1] the tie-break's goodness (``squash`` of it, negated for mode min; -1, the worst, when it is NaN). Two
    distinct float32 values a, b with |a| <= |b| are at least spacing(a) and spacing(b) / 2 apart, more than the
    two moves together (at most spacing(a) / 4 + spacing(b) / 4), so the score never reorders distinct metric
    values, and orders equal ones by the tie-break. It is float64, whose 29 bits more than float32 resolve ``g``
    to 2**-27: tie-break values t closer than about 1e-8 * (1 + |t|)**2 count as tied. Without ``tie_break`` the
    score is the metric, and ModelCheckpoint keeps the first of tied epochs.

    The score needs the epoch's validation metrics, which the LightningModule logs in its
    ``on_validation_epoch_end``; Lightning runs the callbacks' ``on_validation_epoch_end`` before the module's and
    allows no logging after it, so the module logs the score: at setup this callback hands it ``score`` as
    ``pl_module.selection_score`` (lightning_modules/base.py). The metrics are gathered from every rank before
    they are scored, so every rank logs the same score. The metric names and modes are not checked here: the
    runner checks the objective (``lightning_modules.objective.check_objective``) when a run starts.

    Args:
        metric: the logged validation metric that chooses the checkpoint (``objective.metric``).
        mode: "max" or "min" for ``metric``.
        tie_break: the logged validation metric that orders epochs tied on ``metric``; None: no order among them.
        tie_break_mode: "max" or "min" for ``tie_break``.
    """

    def __init__(
        self, metric: str, mode: str = "max", tie_break: str | None = None, tie_break_mode: str = "min"
    ) -> None:
        self.metric, self.mode = metric, mode
        self.tie_break, self.tie_break_mode = tie_break, tie_break_mode

    def score(self, metrics: Mapping[str, float]) -> float:
        """The selection score of a validation epoch with these logged metrics (``val/<name>``: value)."""
        value = np.float32(metrics[self.metric])
        if self.tie_break is None or not np.isfinite(value):
            return float(value)
        goodness = squash(float(metrics[self.tie_break]))
        if math.isnan(goodness):
            goodness = -1.0
        elif self.tie_break_mode == "min":
            goodness = -goodness
        move = float(np.spacing(abs(value))) / 4 * goodness
        return float(value) + (move if self.mode == "max" else -move)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.selection_score = self.score
