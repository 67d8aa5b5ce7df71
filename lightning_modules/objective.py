"""The objective of model selection: which logged validation metric chooses checkpoints, early stops and
sweeps, and its name in metrics.json and summary.json.

Model selection reads a *validation* metric only: ``objective.metric`` (default ``val/video_uar``), named as
``EmotionModule`` logs it. Test metrics are reported beside it and never optimised.
"""

from __future__ import annotations

from collections.abc import Mapping

LEVELS: tuple[str, ...] = ("segment", "video")
SPLITS: tuple[str, ...] = ("val", "test")
# name logged by EmotionModule (val/<name>, test/<name>) -> name in summary.json, metrics.json and results.csv
SUMMARY_METRICS: dict[str, str] = {
    "loss": "segment_loss",
    "seg_acc": "segment_accuracy",
    "seg_uar": "segment_uar",
    "seg_f1": "segment_macro_f1",
    "video_acc": "video_accuracy",
    "video_uar": "video_uar",
    "video_f1": "video_macro_f1",
}
OBJECTIVE_MODES: tuple[str, ...] = ("max", "min")


def check_selection_metric(
    metric: str, mode: str, key: str = "objective.metric", mode_key: str = "objective.mode"
) -> tuple[str, str]:
    """(summary metric name, mode) of a metric that chooses models, ``metric`` = "val/<logged name>", ``mode``
    max|min; ``key`` and ``mode_key`` name the settings in the messages.

    Raises ValueError for a test metric, or any metric that is not a validation metric: model selection
    must never see the test fold.
    """
    split, _, name = metric.partition("/")
    if split != "val" or name not in SUMMARY_METRICS:
        raise ValueError(
            f"{key}={metric}: model selection must use a validation metric, one of "
            f"{', '.join('val/' + n for n in SUMMARY_METRICS)} (test metrics are reported, never optimised)"
        )
    if mode not in OBJECTIVE_MODES:
        raise ValueError(f"{mode_key}={mode}: expected max or min")
    return SUMMARY_METRICS[name], mode


def check_objective(objective: Mapping) -> tuple[str, str]:
    """(summary metric name, mode) of ``objective`` = {metric: "val/<logged name>", mode: max|min}; its
    ``tie_break`` (the checkpoint's second criterion), when set, is held to the same rules."""
    if objective.get("tie_break") is not None:
        check_selection_metric(
            str(objective["tie_break"]),
            str(objective.get("tie_break_mode", "min")),
            "objective.tie_break",
            "objective.tie_break_mode",
        )
    return check_selection_metric(str(objective["metric"]), str(objective["mode"]))
