"""One table of cross-validated results across runs, sweeps and Hydra multirun jobs: ``results.csv``.

Every ``fold=all`` run appends one row per stage (its overrides, tag, the validation objective and the
test metrics, mean ± std over folds) to ``<output_dir>/<corpus>/<cv>/results.csv``, ranked by the
validation objective; a run whose folds each test one corpus (``data=multi``, ``cv=cross_corpus``) adds one
row per test corpus to ``results_per_corpus.csv`` beside it. Rows are appended under an exclusive file lock, so parallel
jobs on one machine (or on a shared filesystem with working locks) never interleave.
"""

from __future__ import annotations

import csv
import fcntl
import io
import time
from pathlib import Path

RESULT_COLUMNS = (
    "finished",
    "tag",
    "stage",
    "seed",
    "n_folds",
    "objective",
    "objective_mode",
    "objective_mean",
    "objective_std",
    "test_video_accuracy_mean",
    "test_video_accuracy_std",
    "test_video_uar_mean",
    "test_video_uar_std",
    "test_segment_accuracy_mean",
    "test_segment_accuracy_std",
    "test_pooled_video_accuracy",
    "overrides",
    "run_dir",
)


PER_CORPUS_COLUMNS = (
    "finished",
    "tag",
    "stage",
    "seed",
    "test_corpus",
    "folds",
    "n_clips",
    "test_video_accuracy",
    "test_video_uar",
    "test_segment_accuracy",
    "not_in_test",
    "not_in_training",
    "overrides",
    "run_dir",
)
PER_CORPUS_FILE = "results_per_corpus.csv"  # beside results.csv


def per_corpus_rows(summary: dict, tag: str, overrides: list[str], run_dir: Path) -> list[dict]:
    """``results_per_corpus.csv``'s rows of one stage's summary.json: one per test corpus of its per-corpus
    table (none without one): the test metrics over the classes the corpus shares with training, its clip
    count and the classes left out."""
    finished = time.strftime("%Y-%m-%d %H:%M:%S")
    return [
        {
            "finished": finished,
            "tag": tag,
            "stage": summary["stage"],
            "seed": summary.get("seed"),
            "test_corpus": row["corpus"],
            "folds": " ".join(map(str, row["folds"])),
            "n_clips": row["n_clips"],
            **{f"test_{name}": f"{row[name]:.4f}" for name in ("video_accuracy", "video_uar", "segment_accuracy")},
            "not_in_test": " ".join(row["not_in_test"]),
            "not_in_training": " ".join(row["not_in_training"]),
            "overrides": " ".join(overrides),
            "run_dir": str(run_dir),
        }
        for row in summary["test"].get("per_corpus", [])
    ]


def results_row(summary: dict, tag: str, overrides: list[str], run_dir: Path) -> dict:
    """The results.csv row of one stage's summary.json: the validation objective it is ranked by, then
    the test metrics it reports."""
    objective, test = summary["objective"], summary["test"]
    return {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "tag": tag,
        "stage": summary["stage"],
        "seed": summary.get("seed"),
        "n_folds": len(test["folds"]),
        "objective": objective["metric"],
        "objective_mode": objective["mode"],
        "objective_mean": f"{objective['mean']:.4f}",
        "objective_std": f"{objective['std']:.4f}",
        **{
            f"test_{name}_mean": f"{test['mean'][name]:.4f}"
            for name in ("video_accuracy", "video_uar", "segment_accuracy")
        },
        **{
            f"test_{name}_std": f"{test['std'][name]:.4f}"
            for name in ("video_accuracy", "video_uar", "segment_accuracy")
        },
        "test_pooled_video_accuracy": f"{test['pooled']['video']['accuracy']:.4f}",
        "overrides": " ".join(overrides),
        "run_dir": str(run_dir),
    }


def append_result(path: Path, row: dict, columns: tuple[str, ...] = RESULT_COLUMNS) -> None:
    """Append ``row`` to the CSV at ``path`` (writing the header, ``columns``, first if the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", newline="") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0, io.SEEK_END)
            writer = csv.DictWriter(handle, fieldnames=columns)
            if handle.tell() == 0:
                writer.writeheader()
            writer.writerow({column: row.get(column, "") for column in columns})
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_results(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def objective_rank(row: dict) -> float:
    """Sort key, best first: the validation objective, negated when it is maximised."""
    value = float(row["objective_mean"])
    return -value if row["objective_mode"] == "max" else value


def format_results_table(rows: list[dict], stage: str | None = None) -> str:
    """The rows (optionally of one stage), best validation objective first, as a text table; test
    metrics are shown beside it, never used for the order."""
    rows = sorted((row for row in rows if stage is None or row["stage"] == stage), key=objective_rank)
    header = (
        f"{'objective (val)':>24} {'test video acc':>15} {'test video UAR':>15} {'folds':>5} {'stage':<7} "
        f"{'tag':<28} overrides"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['objective'].removeprefix('val/'):>10} {row['objective_mean']:>6} ± {row['objective_std']:<5}"
            f" {row['test_video_accuracy_mean']:>7} ± {row['test_video_accuracy_std']:<5} "
            f"{row['test_video_uar_mean']:>7} ± {row['test_video_uar_std']:<5} "
            f"{row['n_folds']:>5} {row['stage']:<7} {row['tag'] or '-':<28} {row['overrides']}"
        )
    return "\n".join(lines)
