"""One table of cross-validated results across runs, sweeps and Hydra multirun jobs: ``results.csv``.

Every ``fold=all`` run appends one row per stage (its overrides, tag, mean ± std over folds) to
``<output_dir>/<corpus>/<cv>/results.csv``. Rows are appended under an exclusive file lock, so parallel
jobs on one machine (or on a shared filesystem with working locks) never interleave.
"""
from __future__ import annotations

import csv
import fcntl
import io
import time
from pathlib import Path

RESULT_COLUMNS = (
    "finished", "tag", "stage", "n_folds",
    "video_accuracy_mean", "video_accuracy_std", "video_uar_mean", "video_uar_std",
    "segment_accuracy_mean", "segment_accuracy_std", "pooled_video_accuracy",
    "overrides", "run_dir",
)


def results_row(summary: dict, tag: str, overrides: list[str], run_dir: Path) -> dict:
    """The results.csv row of one stage's summary.json."""
    mean, std = summary["mean"], summary["std"]
    return {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tag": tag,
        "stage": summary["stage"],
        "n_folds": len(summary["folds"]),
        **{f"{name}_mean": f"{mean[name]:.4f}" for name in ("video_accuracy", "video_uar", "segment_accuracy")},
        **{f"{name}_std": f"{std[name]:.4f}" for name in ("video_accuracy", "video_uar", "segment_accuracy")},
        "pooled_video_accuracy": f"{summary['pooled']['video']['accuracy']:.4f}",
        "overrides": " ".join(overrides),
        "run_dir": str(run_dir),
    }


def append_result(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV at ``path`` (writing the header first if the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", newline="") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0, io.SEEK_END)
            writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
            if handle.tell() == 0:
                writer.writeheader()
            writer.writerow({column: row.get(column, "") for column in RESULT_COLUMNS})
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_results(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def format_results_table(rows: list[dict], stage: str | None = None) -> str:
    """The rows (optionally of one stage), best video accuracy first, as a text table."""
    rows = [row for row in rows if stage is None or row["stage"] == stage]
    rows.sort(key=lambda row: float(row["video_accuracy_mean"]), reverse=True)
    header = f"{'video acc':>15} {'video UAR':>15} {'seg acc':>15} {'folds':>5} {'stage':<7} {'tag':<28} overrides"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['video_accuracy_mean']:>7} ± {row['video_accuracy_std']:<5} "
            f"{row['video_uar_mean']:>7} ± {row['video_uar_std']:<5} "
            f"{row['segment_accuracy_mean']:>7} ± {row['segment_accuracy_std']:<5} "
            f"{row['n_folds']:>5} {row['stage']:<7} {row['tag'] or '-':<28} {row['overrides']}"
        )
    return "\n".join(lines)
