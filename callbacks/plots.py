"""Figures a researcher looks at rather than reads: confusion-matrix heatmaps and per-fold accuracy bars.

Every function draws on a bare ``Figure`` (Agg canvas), so none needs a display or touches pyplot's state.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> Figure:
    """Heatmap of a confusion matrix (rows = true class, columns = predicted).

    Colour is the row-normalised fraction (per-class recall on the diagonal), so classes with few
    samples read as clearly as large ones; every cell is annotated with its count and percentage.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(class_names):
        raise ValueError(f"expected a {len(class_names)}x{len(class_names)} matrix, got shape {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    n = len(class_names)
    fig = Figure(figsize=(1.1 * n + 2.5, 1.0 * n + 1.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    for i in range(n):
        for j in range(n):
            colour = "white" if fractions[i, j] > 0.5 else "black"
            ax.text(j, i, f"{counts[i, j]}\n{fractions[i, j]:.0%}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(counts.sum())
    accuracy = float(np.trace(counts) / total) if total else 0.0
    ax.set_title(f"{title}\naccuracy {accuracy:.3f} (n={total})", fontsize=10)
    return fig


def fold_accuracy_figure(
    folds: Sequence[dict], mean: dict, std: dict, title: str,
    metrics: Sequence[str] = ("segment_accuracy", "video_accuracy"), chance: float | None = None,
) -> Figure:
    """Grouped bars of each fold's test accuracies (rows as in summary.json), with the mean ± std over
    folds (dashed line and band) and the chance level (dotted) when given."""
    labels = [f"{row['fold']}\n{','.join(row['subjects'])[:12]}" for row in folds]
    x = np.arange(len(folds))
    width = 0.8 / len(metrics)
    fig = Figure(figsize=(max(5.0, 0.7 * len(folds) + 3.0), 4.0), layout="constrained")
    ax = fig.subplots()
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for k, (metric, colour) in enumerate(zip(metrics, colours)):
        values = [row[metric] for row in folds]
        ax.bar(x + (k - (len(metrics) - 1) / 2) * width, values, width, color=colour, label=metric.replace("_", " "))
        ax.axhline(mean[metric], color=colour, linestyle="--", linewidth=1.0)
        ax.axhspan(mean[metric] - std[metric], mean[metric] + std[metric], color=colour, alpha=0.12)
    if chance is not None:
        ax.axhline(chance, color="0.3", linestyle=":", linewidth=1.0, label=f"chance {chance:.3f}")
    ax.set_xticks(x, labels=labels, fontsize=8)
    ax.set_xlabel("fold (test subjects)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.0)
    summary = ", ".join(f"{m.split('_')[0]} {mean[m]:.3f} ± {std[m]:.3f}" for m in metrics)
    ax.set_title(f"{title}\nmean ± std over folds: {summary}", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
