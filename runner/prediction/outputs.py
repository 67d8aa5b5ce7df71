"""What prediction writes: a file's entry (per segment, the fold mean and the majority vote),
predictions.csv, predictions.json and the timeline figure's inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from datamodules.atomic import atomic_write_text
from datamodules.recordings import (
    Recording,
)
from lightning_modules.evaluation import majority_vote
from runner.prediction.load_run import TrainedRun


def _rounded(value: float) -> float:
    return round(float(value), 4)


def _attention_entry(weights: torch.Tensor) -> dict[str, float] | None:
    return None if torch.isnan(weights).any() else {"audio": _rounded(weights[0]), "visual": _rounded(weights[1])}


def file_entry(
    recording: Recording,
    name: str,
    sources: list[str],
    probs: torch.Tensor,
    attention: torch.Tensor,
    class_names: list[str],
) -> dict:
    """A file's predictions as written to predictions.json: the voted label (majority vote of the segments,
    ties to the larger summed probability, as in evaluation), its mean probability (``confidence``) and
    votes, the mean probabilities, the VAD span, the face detection rate and every segment."""
    _, voted = majority_vote(torch.zeros(len(sources), dtype=torch.long), probs)
    label = int(voted[0])
    mean = probs.mean(dim=0)
    fused = attention[~torch.isnan(attention[:, 0])]
    face_rate = recording.face_detection_rate
    segments = [
        {
            "start_s": _rounded(start),
            "end_s": _rounded(end),
            "label": class_names[int(row.argmax())],
            "probabilities": dict(zip(class_names, map(_rounded, row))),
            "source": source,
            "attention": _attention_entry(weights),
        }
        for (start, end), row, source, weights in zip(recording.segment_times.tolist(), probs, sources, attention)
    ]
    return {
        "file": str(recording.path),
        "name": name,
        "label": class_names[label],
        "confidence": _rounded(mean[label]),
        "votes": int((probs.argmax(dim=1) == label).sum()),
        "probabilities": dict(zip(class_names, map(_rounded, mean))),
        "n_segments": len(sources),
        "duration_s": _rounded(recording.duration_s),
        "speech_span_s": None if recording.speech_span_s is None else list(map(_rounded, recording.speech_span_s)),
        "face_detection_rate": None if face_rate is None else _rounded(face_rate),
        "sources": {source: sources.count(source) for source in dict.fromkeys(sources)},
        "attention": _attention_entry(fused.mean(dim=0)) if len(fused) else None,
        "timeline": f"{name}.png",
        "segments": segments,
    }


def summary_line(entry: dict) -> str:
    """One line per file on the terminal: its label, confidence and votes, and the networks behind them."""
    sources = ", ".join(f"{source} {count}" for source, count in entry["sources"].items())
    return (
        f"{entry['name']}: {entry['label']} (confidence {entry['confidence']:.2f}, "
        f"{entry['votes']}/{entry['n_segments']} segments; {sources})"
    )


def face_crops(recording: Recording, count: int) -> list[tuple[float, np.ndarray]]:
    """Up to ``count`` of the recording's face crops, evenly spread in time: (seconds, uint8 ``[S, S, 3]``)."""
    if recording.faces is None or count < 1:
        return []
    order = np.argsort(recording.face_times, kind="stable")
    picked = order[np.unique(np.linspace(0, len(order) - 1, count).round().astype(int))]
    return [(float(recording.face_times[i]), recording.faces.face_frames[i].permute(1, 2, 0).numpy()) for i in picked]


def csv_rows(entries: list[dict], class_names: list[str]) -> list[dict]:
    """predictions.csv: per file a ``file`` row (voted label, mean probabilities, n_segments, VAD span, face
    detection rate, mean attention of its fused segments), then a ``segment`` row for each of its segments."""
    rows = []
    for entry in entries:
        span = entry["speech_span_s"] or [None, None]
        attention = entry["attention"] or {}
        rows.append(
            {
                "level": "file",
                "file": entry["file"],
                "start_s": 0.0,
                "end_s": entry["duration_s"],
                "label": entry["label"],
                **{f"p_{c}": entry["probabilities"][c] for c in class_names},
                "source": "+".join(entry["sources"]),
                "attn_audio": attention.get("audio"),
                "attn_visual": attention.get("visual"),
                "n_segments": entry["n_segments"],
                "speech_start_s": span[0],
                "speech_end_s": span[1],
                "face_detection_rate": entry["face_detection_rate"],
            }
        )
        for segment in entry["segments"]:
            attention = segment["attention"] or {}
            rows.append(
                {
                    "level": "segment",
                    "file": entry["file"],
                    "start_s": segment["start_s"],
                    "end_s": segment["end_s"],
                    "label": segment["label"],
                    **{f"p_{c}": segment["probabilities"][c] for c in class_names},
                    "source": segment["source"],
                    "attn_audio": attention.get("audio"),
                    "attn_visual": attention.get("visual"),
                }
            )
    return rows


def write_predictions(out: Path, run: TrainedRun, entries: list[dict], failed: list[dict]) -> None:
    """predictions.json (the run, stage, folds, classes, every file with its segments, the files that
    failed) and predictions.csv (``csv_rows``) in ``out``."""
    report = {
        "run": str(run.folder),
        "stage": run.stage,
        "folds": run.folds,
        "class_names": run.class_names,
        "device": str(run.device),
        "files": entries,
        "failed": failed,
    }
    atomic_write_text(json.dumps(report, indent=2), out / "predictions.json")
    rows = csv_rows(entries, run.class_names)
    columns = [
        "level",
        "file",
        "start_s",
        "end_s",
        "label",
        *(f"p_{c}" for c in run.class_names),
        "source",
        "attn_audio",
        "attn_visual",
        "n_segments",
        "speech_start_s",
        "speech_end_s",
        "face_detection_rate",
    ]
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
