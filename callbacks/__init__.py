"""Lightning callbacks: checkpoint choice, confusion matrices, per-fold accuracy, leakage guard, progress,
the seeded random state and early stopping kept across a resume. ``configs/callbacks/`` names them by
``_target_``."""

from callbacks.confusion_matrix import ConfusionMatrixLogger
from callbacks.fold_accuracy import FoldAccuracyLogger

__all__ = ["ConfusionMatrixLogger", "FoldAccuracyLogger"]
