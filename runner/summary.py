"""Cross-validation bookkeeping: per-fold metrics -> summary.json, the multi-seed summary, their tables.

The objective (the validation metric that selects models) is ``lightning_modules/objective.py``.

``summary.json`` of one stage::

    {"corpus", "cv", "stage", "seed", "class_names",
     "objective": {"metric", "mode", "mean", "std"},      # over folds, from the val block
     "val":  {"folds": [row, ...], "mean": {...}, "std": {...}},
     "test": {"folds": [row, ...], "mean": {...}, "std": {...}, "pooled": {level: {confusion_matrix, accuracy}},
              "per_corpus": [{corpus, folds, n_clips, n_segments, video_accuracy, video_uar, ...,
                              not_in_test, not_in_training}, ...]}}   # per_corpus: see per_corpus_table

A row holds ``fold``, the subjects and clip counts of its split and the metrics of SUMMARY_METRICS.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from lightning_modules.objective import LEVELS, SPLITS, SUMMARY_METRICS, check_objective


def fold_wall_times(stage_dir: Path) -> list[float]:
    """Seconds from each fold's fold.json (written before training) to its metrics.json (after the test), for the
    finished folds of a stage folder: training, validation and test, and preparing the cache where the first fold
    found none."""
    times = []
    for fold_dir in sorted(stage_dir.glob("fold_*")):
        start, end = fold_dir / "fold.json", fold_dir / "metrics.json"
        if start.is_file() and end.is_file():
            times.append(end.stat().st_mtime - start.stat().st_mtime)
    return times


def split_metrics(result: Mapping) -> dict:
    """The metrics.json block of one evaluated split (an EmotionModule ``last_eval`` entry)."""
    return {
        "n_clips": result["n_clips"],
        "n_segments": result["n_segments"],
        "segment": result["segment"],
        "video": result["video"],
    }


def fold_metrics(
    provenance: Mapping, subjects: Mapping[str, list[str]], objective: Mapping, val: dict, test: dict
) -> dict:
    """metrics.json of one (stage, fold) from its fold.json record (``provenance``), the subjects of its
    validation and test clips, the objective and its val and test blocks (``split_metrics``)."""
    summary_name, _ = check_objective(objective)
    return {
        "corpus": provenance["corpus"],
        "cv": provenance["cv"]["name"],
        "stage": provenance["stage"],
        "fold": provenance["fold"],
        "seed": provenance["seed"],
        "fold_hash": provenance["fold_hash"],
        "val_subjects": subjects["val"],
        "test_subjects": subjects["test"],
        "class_names": provenance["class_names"],
        "objective": {**objective, "value": metric_row(val)[summary_name]},
        "val": val,
        "test": test,
        "test_corpus": provenance.get("test_corpus"),
        "dropped_classes": provenance.get("dropped_classes") or {},
    }


def metric_row(block: Mapping) -> dict[str, float]:
    """SUMMARY_METRICS values of a metrics.json split block."""
    row = {f"{level}_{name}": float(block[level][name]) for level in LEVELS for name in ("accuracy", "uar", "macro_f1")}
    row["segment_loss"] = float(block["segment"]["loss"])
    return row


def _mean_std(rows: Sequence[Mapping[str, float]], keys: Sequence[str]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (0 for a single row) of each key over rows."""
    mean, std = {}, {}
    for key in keys:
        values = [float(row[key]) for row in rows]
        mean[key] = sum(values) / len(values)
        std[key] = math.sqrt(sum((v - mean[key]) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarize_folds(per_fold: Sequence[Mapping], objective: Mapping) -> dict:
    """summary.json of one stage from its folds' metrics.json: val and test blocks (rows, mean ± sample
    std over folds), the pooled test confusion matrices, and the objective's mean ± std over folds."""
    summary_name, mode = check_objective(objective)
    metric_keys = list(SUMMARY_METRICS.values())
    summary: dict = {}
    for split in SPLITS:
        rows = [
            {
                "fold": m["fold"],
                "subjects": m[f"{split}_subjects"],
                "n_clips": m[split]["n_clips"],
                **metric_row(m[split]),
            }
            for m in per_fold
        ]
        mean, std = _mean_std(rows, metric_keys)
        summary[split] = {"folds": rows, "mean": mean, "std": std}
    pooled = {}
    for level in LEVELS:
        matrix = torch.tensor([m["test"][level]["confusion_matrix"] for m in per_fold]).sum(0)
        pooled[level] = {
            "confusion_matrix": matrix.tolist(),
            "accuracy": float(matrix.trace() / matrix.sum()) if matrix.sum() else 0.0,
        }
    summary["test"]["pooled"] = pooled
    per_corpus = per_corpus_table(per_fold)
    if per_corpus:
        summary["test"]["per_corpus"] = per_corpus
    first = per_fold[0]
    return {
        "corpus": first["corpus"],
        "cv": first["cv"],
        "stage": first["stage"],
        "seed": first.get("seed"),
        "class_names": first["class_names"],
        "objective": {
            "metric": str(objective["metric"]),
            "mode": mode,
            "mean": summary["val"]["mean"][summary_name],
            "std": summary["val"]["std"][summary_name],
        },
        **summary,
    }


PER_CORPUS_METRICS = ("video_accuracy", "video_uar", "segment_accuracy", "segment_uar", "video_macro_f1")


def per_corpus_table(per_fold: Sequence[Mapping]) -> list[dict]:
    """One row per test corpus when every fold tests one corpus (``cv=leave_one_corpus_out``, ``cv=cross_corpus``,
    a fold of ``data=multi`` whose test subjects are of one member), else []: its folds, test clip and segment
    counts (summed), the test metrics (the mean over its folds; each over the classes the corpus has, as UAR
    counts only classes with clips) and the classes left out (``not_in_test``: training classes without a clip
    of the corpus; ``not_in_training``: its classes the model was not trained on)."""
    if not per_fold or any(m.get("test_corpus") is None for m in per_fold):
        return []
    groups: dict[str, list[Mapping]] = {}
    for m in per_fold:
        groups.setdefault(m["test_corpus"], []).append(m)
    rows = []
    for corpus, folds in groups.items():
        metrics = [metric_row(m["test"]) for m in folds]
        dropped = folds[0].get("dropped_classes") or {}
        rows.append(
            {
                "corpus": corpus,
                "folds": [m["fold"] for m in folds],
                "n_clips": sum(int(m["test"]["n_clips"]) for m in folds),
                "n_segments": sum(int(m["test"]["n_segments"]) for m in folds),
                **_mean_std(metrics, PER_CORPUS_METRICS)[0],
                "not_in_test": list(dropped.get("not_in_test", [])),
                "not_in_training": list(dropped.get("not_in_training", [])),
            }
        )
    return rows


def format_per_corpus_table(rows: Sequence[Mapping]) -> str:
    """summary.json's per-corpus rows as text: clips, test video accuracy and UAR, segment accuracy, classes
    left out."""
    header = f"{'test corpus':<16} {'clips':>6} {'video acc':>9} {'video UAR':>9} {'seg acc':>8}  classes left out"
    lines = [header, "-" * len(header)]
    for row in rows:
        left = "; ".join(
            f"{why.replace('_', ' ')}: {', '.join(row[why])}" for why in ("not_in_test", "not_in_training") if row[why]
        )
        lines.append(
            f"{row['corpus']:<16} {row['n_clips']:>6} {row['video_accuracy']:>9.3f} {row['video_uar']:>9.3f} "
            f"{row['segment_accuracy']:>8.3f}  {left or '-'}"
        )
    return "\n".join(lines)


def summarize_seeds(per_seed: Sequence[Mapping]) -> dict:
    """seeds_summary.json of one stage from its summary.json per seed: each seed's fold means, and for
    every metric the spread over seeds (std of the fold means) beside the mean spread over folds."""
    metric_keys = list(SUMMARY_METRICS.values())
    result: dict = {
        "corpus": per_seed[0]["corpus"],
        "cv": per_seed[0]["cv"],
        "stage": per_seed[0]["stage"],
        "class_names": per_seed[0]["class_names"],
        "seeds": [s["seed"] for s in per_seed],
    }
    for split in SPLITS:
        seed_means = [s[split]["mean"] for s in per_seed]
        mean, std_over_seeds = _mean_std(seed_means, metric_keys)
        std_over_folds = {k: sum(s[split]["std"][k] for s in per_seed) / len(per_seed) for k in metric_keys}
        result[split] = {
            "per_seed": [{"seed": s["seed"], **s[split]["mean"]} for s in per_seed],
            "mean": mean,
            "std_over_seeds": std_over_seeds,
            "std_over_folds": std_over_folds,
        }
    objective_means = [s["objective"]["mean"] for s in per_seed]
    obj_mean, obj_std = _mean_std([{"v": v} for v in objective_means], ["v"])
    result["objective"] = {
        "metric": per_seed[0]["objective"]["metric"],
        "mode": per_seed[0]["objective"]["mode"],
        "mean": obj_mean["v"],
        "std_over_seeds": obj_std["v"],
    }
    return result


def format_summary_table(summary: Mapping) -> str:
    """The per-fold table a researcher reads at the end of a cross-validation: the validation objective
    that selected each fold's checkpoint, then the test metrics; every test subject, wrapped over lines, and
    the spread over folds when there are several."""
    objective = summary["objective"]
    objective_key, _ = check_objective(objective)
    header = (
        f"{'fold':>6} {'test subjects':<20} {'clips':>5} {objective['metric']:>14} {'seg acc':>8} "
        f"{'video acc':>9} {'video UAR':>9}"
    )
    seed = f" / seed {summary['seed']}" if summary.get("seed") is not None else ""
    lines = [f"{summary['corpus']} / {summary['cv']} / {summary['stage']}{seed}", header, "-" * len(header)]
    for val_row, row in zip(summary["val"]["folds"], summary["test"]["folds"]):
        subjects = textwrap.wrap(", ".join(row["subjects"]), 20, break_long_words=False) or [""]
        lines.append(
            f"{row['fold']:>6} {subjects[0]:<20} {row['n_clips']:>5} "
            f"{val_row[objective_key]:>14.3f} {row['segment_accuracy']:>8.3f} {row['video_accuracy']:>9.3f} "
            f"{row['video_uar']:>9.3f}"
        )
        lines.extend(f"{'':>6} {part}" for part in subjects[1:])
    lines.append("-" * len(header))
    spreads = [("mean", summary["test"]["mean"], summary["val"]["mean"])]
    if len(summary["test"]["folds"]) > 1:
        spreads.append(("± std", summary["test"]["std"], summary["val"]["std"]))
    for label, stats, val_stats in spreads:
        lines.append(
            f"{label:>6} {'over folds':<20} {'':>5} {val_stats[objective_key]:>14.3f} "
            f"{stats['segment_accuracy']:>8.3f} {stats['video_accuracy']:>9.3f} {stats['video_uar']:>9.3f}"
        )
    lines.append(
        f"selected on {objective['metric']} ({objective['mode']}); test is reported, never optimised. "
        f"Pooled test video accuracy {summary['test']['pooled']['video']['accuracy']:.3f}"
    )
    if summary["test"].get("per_corpus"):
        lines += ["", format_per_corpus_table(summary["test"]["per_corpus"])]
    return "\n".join(lines)


def format_seeds_table(seeds_summary: Mapping) -> str:
    """Per seed the fold means, then mean ± std over seeds and the mean std over folds."""
    objective_key, _ = check_objective(seeds_summary["objective"])
    keys = ("video_accuracy", "video_uar", "segment_accuracy")
    header = f"{'seed':>8} {seeds_summary['objective']['metric'] + ' (val)':>18} " + " ".join(
        f"{'test ' + k:>22}" for k in keys
    )
    title = f"{seeds_summary['corpus']} / {seeds_summary['cv']} / {seeds_summary['stage']}: fold means per seed"
    lines = [title, header, "-" * len(header)]
    for val_row, row in zip(seeds_summary["val"]["per_seed"], seeds_summary["test"]["per_seed"]):
        lines.append(f"{row['seed']:>8} {val_row[objective_key]:>18.3f} " + " ".join(f"{row[k]:>22.3f}" for k in keys))
    lines.append("-" * len(header))
    test, val = seeds_summary["test"], seeds_summary["val"]
    for label, part in (("mean", "mean"), ("±seeds", "std_over_seeds"), ("±folds", "std_over_folds")):
        lines.append(
            f"{label:>8} {val[part][objective_key]:>18.3f} " + " ".join(f"{test[part][k]:>22.3f}" for k in keys)
        )
    return "\n".join(lines)
