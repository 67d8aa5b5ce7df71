"""The best checkpoint on the validation objective, with ties broken by a second validation metric."""

from __future__ import annotations

from typing import Any, Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_modules.cv_summary import check_selection_metric


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint keeping the one best epoch on ``monitor``; among epochs tied on it, the best on ``tie_break``.

    A validation set of a few dozen clips saturates: on CK+ folds the validation UAR reaches 1.0 in the middle of
    training and stays there. Plain ModelCheckpoint keeps the first epoch of a tie, a model still training at a
    high learning rate; with ``tie_break="val/loss"`` a later tied epoch replaces it when its validation loss is
    lower. Both metrics are validation metrics: the test fold never takes part.

    Args:
        tie_break: a logged validation metric (``val/<name>``) that decides between epochs with equal ``monitor``;
            None keeps the first of them (ModelCheckpoint's rule).
        tie_break_mode: "min" or "max" for ``tie_break``.
        dirpath: the folder of the checkpoint (named so that ``build_callbacks`` hands the fold's in).
        checkpoint_kwargs: ModelCheckpoint's others; with ``tie_break``, ``monitor`` must be set and ``save_top_k``
            be 1.
    """

    def __init__(
        self,
        tie_break: str | None = None,
        tie_break_mode: str = "min",
        dirpath: str | None = None,
        **checkpoint_kwargs: Any,
    ) -> None:
        super().__init__(dirpath=dirpath, **checkpoint_kwargs)
        if tie_break is not None:
            if self.monitor is None or self.save_top_k != 1:
                raise ValueError("tie_break needs a monitored metric and save_top_k=1")
            check_selection_metric(tie_break, tie_break_mode, "tie_break", "tie_break_mode")
        self.tie_break, self.tie_break_mode = tie_break, tie_break_mode
        self.best_tie_break_score: float | None = None

    def improves(self, metrics: Mapping[str, torch.Tensor]) -> bool:
        """Whether an epoch with these logged metrics replaces the best checkpoint (True when there is none yet)."""
        current = metrics.get(self.monitor) if self.monitor else None
        if current is None:
            return False
        if self.best_model_score is None:
            return True
        current, best = float(current), float(self.best_model_score)
        if current != best or self.tie_break is None or self.best_tie_break_score is None:
            return current > best if self.mode == "max" else current < best
        candidate = metrics.get(self.tie_break)
        if candidate is None:
            return False
        candidate = float(candidate)
        return (
            candidate > self.best_tie_break_score
            if self.tie_break_mode == "max"
            else candidate < self.best_tie_break_score
        )

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        if self.tie_break is None or current is None:
            return super().check_monitor_top_k(trainer, current)
        # the same decision on every rank: the metrics are gathered before they are logged
        return trainer.strategy.reduce_boolean_decision(self.improves(trainer.callback_metrics))

    def _update_best_and_save(
        self, current: torch.Tensor, trainer: L.Trainer, monitor_candidates: dict[str, torch.Tensor]
    ) -> None:
        if self.tie_break is not None and self.tie_break in monitor_candidates:
            self.best_tie_break_score = float(monitor_candidates[self.tie_break])
        super()._update_best_and_save(current, trainer, monitor_candidates)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_tie_break_score": self.best_tie_break_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_tie_break_score = state_dict.get("best_tie_break_score")
