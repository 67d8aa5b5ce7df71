"""Figures a researcher looks at rather than reads: confusion-matrix heatmaps and per-fold accuracy bars.

Every function draws on a bare ``Figure`` (Agg canvas), so none needs a display or touches pyplot's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
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


def grouped_bars(
    ax: Axes, rows: Sequence[dict], metrics: Sequence[str], chance: float | None
) -> list[tuple[str, str, BarContainer]]:
    """One group of bars per row (``metrics`` side by side, a colour each) and the chance level (dotted) when
    given; returns each metric with its colour and bars."""
    x = np.arange(len(rows))
    width = 0.8 / len(metrics)
    drawn = []
    for k, (metric, colour) in enumerate(zip(metrics, ("tab:blue", "tab:orange", "tab:green", "tab:red"))):
        values = [float(row[metric]) for row in rows]
        offset = (k - (len(metrics) - 1) / 2) * width
        drawn.append((metric, colour, ax.bar(x + offset, values, width, color=colour, label=metric.replace("_", " "))))
    if chance is not None:
        ax.axhline(chance, color="0.3", linestyle=":", linewidth=1.0, label=f"chance {chance:.3f}")
    return drawn


def fold_accuracy_figure(
    folds: Sequence[dict],
    mean: dict,
    std: dict,
    title: str,
    metrics: Sequence[str] = ("segment_accuracy", "video_accuracy"),
    chance: float | None = None,
) -> Figure:
    """Grouped bars of each fold's test accuracies (rows as in summary.json), with the mean ± std over
    folds (dashed line and band) and the chance level (dotted) when given."""
    labels = [f"{row['fold']}\n{','.join(row['subjects'])[:12]}" for row in folds]
    fig = Figure(figsize=(max(5.0, 0.7 * len(folds) + 3.0), 4.0), layout="constrained")
    ax = fig.subplots()
    for metric, colour, _ in grouped_bars(ax, folds, metrics, chance):
        ax.axhline(mean[metric], color=colour, linestyle="--", linewidth=1.0)
        ax.axhspan(mean[metric] - std[metric], mean[metric] + std[metric], color=colour, alpha=0.12)
    ax.set_xticks(np.arange(len(folds)), labels=labels, fontsize=8)
    ax.set_xlabel("fold (test subjects)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.0)
    summary = ", ".join(f"{m.split('_')[0]} {mean[m]:.3f} ± {std[m]:.3f}" for m in metrics)
    ax.set_title(f"{title}\nmean ± std over folds: {summary}", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def corpus_accuracy_figure(
    rows: Sequence[dict],
    title: str,
    metrics: Sequence[str] = ("video_accuracy", "video_uar"),
    chance: float | None = None,
) -> Figure:
    """Grouped bars of each test corpus's metrics (summary.json's ``test.per_corpus`` rows), labelled with its
    clip count, and the chance level (dotted) when given."""
    labels = [f"{row['corpus']}\n{row['n_clips']} clips" for row in rows]
    fig = Figure(figsize=(max(5.0, 1.0 * len(rows) + 3.0), 4.0), layout="constrained")
    ax = fig.subplots()
    for _, _, bars in grouped_bars(ax, rows, metrics, chance):
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(rows)), labels=labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test")
    ax.set_title(f"{title}: per test corpus", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


SOURCE_STYLES: dict[str, tuple[str, str]] = {  # a segment's network in a timeline: colour, legend label
    "audio_only": ("0.75", "audio model (no face)"),
    "visual_only": ("0.55", "visual model (no audio)"),
}


def waveform_envelope(waveform: np.ndarray, sample_rate: int, points: int = 2000) -> tuple[np.ndarray, ...]:
    """(times, minima, maxima) of ``waveform`` over at most ``points`` equal stretches: what a plot of any
    length shows, without drawing every sample."""
    per_point = max(1, int(np.ceil(waveform.size / points)))
    padded = np.pad(waveform, (0, -waveform.size % per_point), mode="edge").reshape(-1, per_point)
    times = (np.arange(padded.shape[0]) + 0.5) * per_point / sample_rate
    return times, padded.min(axis=1), padded.max(axis=1)


def timeline_figure(
    entry: dict, waveform: np.ndarray, sample_rate: int, crops: Sequence[tuple[float, np.ndarray]]
) -> Figure:
    """One recording's predictions over time, from its predictions.json ``entry``: face crops at their times
    (``crops``: seconds, uint8 ``[S, S, 3]``), the waveform with the span the VAD kept, each segment's window
    as a line over the time it covers (coloured by its label), each segment's class probabilities as a
    stacked bar at its window's centre, and for a fusion run the attention weight on audio and on visual
    features per segment (segments predicted by one modality's model shown as such)."""
    segments = entry["segments"]
    class_names = list(entry["probabilities"])
    duration = entry["duration_s"]
    fused = any(segment["source"] in ("fusion", *SOURCE_STYLES) for segment in segments)
    heights = [1.1] * bool(crops) + [1.2, min(0.5 + 0.08 * len(segments), 1.6), 2.2] + [1.2] * fused
    fig = Figure(figsize=(10, 0.6 + sum(heights)), layout="constrained")
    axes = list(fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights}))
    if crops:
        _draw_crops(axes.pop(0), crops, duration, crop_width=duration * heights[0] / 8.5)
    ax_wave, ax_windows, ax_probs = axes[:3]
    _draw_waveform(ax_wave, waveform, sample_rate, entry["speech_span_s"])
    windows = np.array([[segment["start_s"], segment["end_s"]] for segment in segments])
    centres = windows.mean(axis=1)
    # a bar marks a centre, narrower than the gap between centres: the window it stands for is drawn above
    width = 0.8 * float(np.min(np.diff(centres))) if len(segments) > 1 else 0.1 * float(np.ptp(windows))
    colours = dict(zip(class_names, (f"C{k % 10}" for k in range(len(class_names)))))
    _draw_windows(ax_windows, windows, [colours[segment["label"]] for segment in segments])
    bottom = np.zeros(len(segments))
    for name, colour in colours.items():
        values = np.array([segment["probabilities"][name] for segment in segments])
        ax_probs.bar(centres, values, width, bottom=bottom, color=colour, label=name, linewidth=0)
        bottom += values
    ax_probs.set_ylim(0, 1)
    ax_probs.set_ylabel("probability")
    ax_probs.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title="class\n(bar at its\nwindow's centre)",
        title_fontsize=8,
    )
    if fused:
        _draw_attention(axes[3], segments, centres, width)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, duration)
    fig.suptitle(
        f"{entry['name']}: {entry['label']} (confidence {entry['confidence']:.2f}, "
        f"{entry['votes']}/{entry['n_segments']} segments)",
        fontsize=11,
    )
    return fig


def _draw_windows(ax, windows: np.ndarray, colours: Sequence[str]) -> None:
    """Each segment's window (``[start, end]`` seconds, one row per segment, in order) as a line over the
    time it covers, with a tick at its centre (``gid`` ``segment_windows``: the figure's record of them)."""
    rows = np.arange(len(windows))
    ax.hlines(
        rows,
        windows[:, 0],
        windows[:, 1],
        colors=colours,
        linewidth=2,
        gid="segment_windows",
        label="segment window (colour: its label)",
    )
    ax.plot(windows.mean(axis=1), rows, "|", color="0.2", markersize=5, label="window centre")
    ax.set_ylim(len(windows) - 0.5, -0.5)
    ax.set_yticks([])
    ax.set_ylabel("windows", rotation=0, ha="right", va="center")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def _draw_crops(ax, crops: Sequence[tuple[float, np.ndarray]], duration: float, crop_width: float) -> None:
    """Face crops centred on their times, square on a panel as wide as the others."""
    for seconds, image in crops:
        left = min(max(seconds - crop_width / 2, 0.0), duration - crop_width)
        ax.imshow(image, extent=(left, left + crop_width, 0, 1), aspect="auto", interpolation="bilinear")
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("faces", rotation=0, ha="right", va="center")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _draw_waveform(ax, waveform: np.ndarray, sample_rate: int, speech_span_s: list[float] | None) -> None:
    if waveform.size == 0:
        ax.text(0.5, 0.5, "no audio track", transform=ax.transAxes, ha="center", va="center", color="0.4")
    else:
        times, low, high = waveform_envelope(waveform, sample_rate)
        ax.fill_between(times, low, high, color="0.25", linewidth=0.5)
    if speech_span_s is not None:
        ax.axvspan(*speech_span_s, color="tab:green", alpha=0.15, label="speech span (VAD)")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("waveform")


def _draw_attention(ax, segments: Sequence[dict], centres: np.ndarray, width: float) -> None:
    """Per segment the attention weight on audio (from 0) and on visual (on top of it), or the model that
    predicted it alone."""
    fused = np.array([segment["attention"] is not None for segment in segments])
    audio = np.array([segment["attention"]["audio"] if segment["attention"] else 0.0 for segment in segments])
    ax.bar(centres[fused], audio[fused], width, color="tab:blue", label="on audio", linewidth=0)
    ax.bar(
        centres[fused], 1 - audio[fused], width, bottom=audio[fused], color="tab:orange", label="on visual", linewidth=0
    )
    for source, (colour, label) in SOURCE_STYLES.items():
        alone = np.array([segment["source"] == source for segment in segments])
        if alone.any():
            ax.bar(centres[alone], np.ones(alone.sum()), width, color=colour, hatch="//", label=label, linewidth=0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("attention")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
