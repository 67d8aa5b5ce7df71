"""Experiment tracking: confusion matrices, per-fold accuracy, the CV summary run, loggers, results table."""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig

from callbacks.confusion_matrix import ConfusionMatrixLogger
from callbacks.fold_accuracy import FoldAccuracyLogger, cv_objective_key

__all__ = ["ConfusionMatrixLogger", "FoldAccuracyLogger", "cv_objective_key", "build_callbacks"]


def build_callbacks(callbacks_cfg: DictConfig, context: dict[str, Any], has_logger: bool) -> list[L.Callback]:
    """Instantiate the configured callbacks of one (stage, fold) run.

    A parameter of the ``_target_`` (a class or a factory function) named like a ``context`` key
    (``dirpath``, ``out_dir``, ``stage``, ``fold``, ``test_subjects``) and not set in the config receives the
    run's value. ``null`` entries are skipped, and so is the learning-rate monitor under ``logger=none`` (it
    has nowhere to log).
    """
    callbacks = []
    for node in callbacks_cfg.values():
        if node is None:
            continue
        target = get_object(node._target_)
        if isinstance(target, type) and issubclass(target, LearningRateMonitor) and not has_logger:
            continue
        parameters = inspect.signature(target).parameters
        extra = {name: value for name, value in context.items() if name in parameters and name not in node}
        callbacks.append(instantiate(node, **extra))
    return callbacks
