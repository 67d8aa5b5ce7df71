"""What ``python predict.py input=<files> run=<run folder>`` does: a trained run's networks on new recordings.

The run folder is what ``train.py`` wrote, ``<run>/<stage>/fold_<K>/{config.yaml,fold.json,checkpoints/
best.ckpt}``: the saved config gives the preprocessing and the class of each network (``_target_``), fold.json
the class names, and each network is rebuilt from its checkpoint. Every file is prepared by the training
pipeline's steps (datamodules/recordings.py), its segments go through each chosen fold's networks in
batches, the folds' segment probabilities are averaged, and the file's label is evaluation's majority vote
(§3.4). Outputs: ``predictions.csv``, ``predictions.json`` and a timeline figure per file (``<name>.png``).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from callbacks.plots import save_figure, timeline_figure
from datamodules.corpora import Problem
from datamodules.decode import BadInputError
from datamodules.features import extracted_with
from datamodules.preprocess import ClipFailure, atomic_write_text, clip_progress, face_detector, failure_line, step
from datamodules.recordings import (
    LIST_EXTENSIONS,
    MEDIA_EXTENSIONS,
    ModelInputs,
    Recording,
    display_names,
    input_files,
    prefetched,
    prepare_recording,
)
from lightning_modules.base import EmotionModule
from lightning_modules.config_errors import ConfigError, train_command
from lightning_modules.cross_validation import (
    AUTOCAST_DTYPES,
    MismatchedCheckpointError,
    MissingCheckpointError,
    check_upstream_provenance,
    task_overrides,
    upstream_checkpoints,
)
from lightning_modules.evaluation import majority_vote

PREDICT_STAGES: tuple[str, ...] = ("fusion", "audio", "visual")  # stage=null: the first one the run holds
STAGE_INPUTS: dict[str, ModelInputs] = {
    "fusion": ModelInputs(audio_required=False, faces=True, faces_required=False),
    "audio": ModelInputs(audio_required=True, faces=False, faces_required=False),
    "visual": ModelInputs(audio_required=False, faces=True, faces_required=True),
}
# what produced a segment's probabilities: the network of which stage, reading which inputs
SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fusion": ("fusion", ("audio", "faces")),
    "audio": ("audio", ("audio",)),
    "visual": ("visual", ("faces",)),
    "audio_only": ("audio", ("audio",)),  # a fusion run's segment without a detected face
    "visual_only": ("visual", ("faces",)),  # a fusion run's segment of a recording without audio
}

predict_command = partial(train_command, program="predict.py")


@dataclass
class TrainedRun:
    """The networks of a run's chosen stage and folds, with what they were trained on."""

    folder: Path
    stage: str
    folds: list[int]
    networks: list[dict[str, EmotionModule]]  # per fold, by stage: a fusion fold has its extractors too
    class_names: list[str]
    preprocess: dict  # the run's data.preprocess
    precision: str  # the run's trainer.precision (autocast on a GPU for the mixed ones)
    device: torch.device


def held_folds(folder: Path) -> dict[str, list[int]]:
    """The folds of each stage (in ``PREDICT_STAGES`` order) of which the run folder holds a best.ckpt."""
    held = {}
    for stage in PREDICT_STAGES:
        checkpoints = folder.glob(f"{stage}/fold_*/checkpoints/best.ckpt")
        folds = sorted(int(path.parents[1].name.removeprefix("fold_")) for path in checkpoints)
        if folds:
            held[stage] = folds
    return held


def describe_held(held: dict[str, list[int]]) -> str:
    return ", ".join(f"{stage} (folds {', '.join(map(str, folds))})" for stage, folds in held.items())


def choose_stage(folder: Path, stage: str | None, held: dict[str, list[int]], overrides: list[str]) -> str:
    """``stage``, or with None the first of ``PREDICT_STAGES`` the run holds; a ``ConfigError`` naming what
    the run holds when it has no such model."""
    if not folder.is_dir():
        raise ConfigError(
            f"run={folder}: no such folder; a run folder is what train.py wrote, outputs/<corpus>/<cv>[/<tag>]; "
            f"{predict_command(overrides, {'run': 'outputs/demo/loso'})}"
        )
    if not held:
        raise ConfigError(
            f"run={folder} holds no trained model (no <stage>/fold_<K>/checkpoints/best.ckpt under it); train one "
            f"first, e.g. python train.py experiment=demo stage=all fold=all"
        )
    if stage is None:
        return next(iter(held))
    if stage not in held:
        what = "no such stage" if stage not in PREDICT_STAGES else f"run={folder} has no {stage} model"
        raise ConfigError(
            f"stage={stage}: {what}; the run holds {describe_held(held)}; "
            f"{predict_command(overrides, {'stage': next(iter(held))})}"
        )
    return stage


def choose_folds(folder: Path, stage: str, fold: str, held: dict[str, list[int]], overrides: list[str]) -> list[int]:
    """The folds ``fold=`` names: ``all`` (every fold the run holds of ``stage``) or one of them."""
    if fold == "all":
        return held[stage]
    if fold.isdigit() and int(fold) in held[stage]:
        return [int(fold)]
    raise ConfigError(
        f"fold={fold}: the {stage} model of run={folder} has folds {', '.join(map(str, held[stage]))}, or "
        f"fold=all (their probabilities averaged); {predict_command(overrides, {'fold': 'all'})}"
    )


def load_network(checkpoint: Path, stage: str, device: torch.device) -> EmotionModule:
    """The ``stage`` network of ``checkpoint``, rebuilt by the class its fold's saved config names
    (``model.<stage>.module._target_``), in eval mode on ``device``."""
    saved = OmegaConf.load(checkpoint.parents[1] / "config.yaml")
    network_class = get_class(saved.model[stage].module._target_)
    network = network_class.load_from_checkpoint(checkpoint, map_location=device).eval()
    if getattr(network, "input_norm", "none") == "speaker":
        warnings.warn(
            f"{checkpoint}: a speaker-normalised audio model (data.audio_norm=speaker); each recording's own "
            "statistics stand in for its speaker's",
            stacklevel=2,
        )
    return network


def fold_checkpoints(folder: Path, stage: str, fold: int) -> dict[str, Path]:
    """The checkpoints a fold's ``stage`` predictions need: its own, and for fusion the audio and visual
    extractors it was trained on (see ``fusion_extractors``)."""
    own = {stage: folder / stage / f"fold_{fold}" / "checkpoints" / "best.ckpt"}
    return {**fusion_extractors(folder, fold), **own} if stage == "fusion" else own


def fusion_extractors(folder: Path, fold: int) -> dict[str, Path]:
    """The audio and visual checkpoints of ``fold``'s fusion model: under its ``paths.upstream_dir`` when that
    was another folder than its run folder, else under ``folder`` (wherever the run has moved since).
    Refused when missing, trained on another split or preprocessing, or retrained after the fusion model
    (its feature cache, when kept, names the extractors' content: ``extracted_with``)."""
    fusion_dir = folder / "fusion" / f"fold_{fold}"
    saved = OmegaConf.load(fusion_dir / "config.yaml")
    own = json.loads((fusion_dir / "fold.json").read_text())
    if Path(saved.paths.upstream_dir) == Path(saved.paths.run_dir):
        saved.paths.upstream_dir = str(folder)
    try:
        audio, visual = upstream_checkpoints(saved, fold)
        check_upstream_provenance(own, {"audio": audio, "visual": visual}, [])
    except (MissingCheckpointError, MismatchedCheckpointError) as error:
        raise ConfigError(f"run={folder}: {error}") from error
    features = fusion_dir / "features"
    if features.is_dir() and not extracted_with(features, {"audio": audio, "visual": visual}):
        raise ConfigError(
            f"run={folder}: the fusion model of fold {fold} was trained on the features of other audio or visual "
            f"checkpoints than {audio} and {visual} (retrained since); train it again: python train.py "
            f"stage=fusion fold={fold} with the run's overrides"
        )
    return {"audio": audio, "visual": visual}


def trained_with(folder: Path, stage: str, folds: list[int]) -> tuple[dict, list[str], str]:
    """The preprocessing config, class names and precision ``folds`` of ``stage`` were trained with: the
    same for all of them, else a ``ConfigError``."""
    fold_dirs = [folder / stage / f"fold_{fold}" for fold in folds]
    records = [json.loads((fold_dir / "fold.json").read_text()) for fold_dir in fold_dirs]
    if len({(record["preprocess_key"], tuple(record["class_names"])) for record in records}) > 1:
        raise ConfigError(
            f"run={folder}: the {stage} folds {', '.join(map(str, folds))} were trained on different preprocessing "
            f"or classes (fold.json's preprocess_key, class_names); choose one with fold=<K>"
        )
    saved = OmegaConf.load(fold_dirs[0] / "config.yaml")
    preprocess = OmegaConf.to_container(saved.data.preprocess, resolve=True)
    return preprocess, list(records[0]["class_names"]), str(saved.trainer.precision)


def choose_device(device: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_run(folder: Path, stage: str | None, fold: str, device: torch.device, overrides: list[str]) -> TrainedRun:
    """The networks of ``stage`` (None: the run's fusion model, else its audio, else its visual one) on
    ``fold`` (one index, or ``all``), with a ``ConfigError`` naming what the run holds on a mismatch."""
    held = held_folds(folder)
    stage = choose_stage(folder, stage, held, overrides)
    folds = choose_folds(folder, stage, fold, held, overrides)
    preprocess, class_names, precision = trained_with(folder, stage, folds)
    networks = [
        {name: load_network(path, name, device) for name, path in fold_checkpoints(folder, stage, fold).items()}
        for fold in folds
    ]
    return TrainedRun(folder, stage, folds, networks, class_names, preprocess, precision, device)


def segment_sources(stage: str, recording: Recording) -> list[str]:
    """Which network predicts each segment (``SOURCES``): the stage's own, but a fusion run falls back to its
    audio network on the segments in none of whose frames a face was detected (``audio_only``), and to its
    visual network on a recording without audio (``visual_only``)."""
    if stage != "fusion":
        return [stage] * len(recording.segment_times)
    if recording.audio is None:
        return ["visual_only"] * len(recording.segment_times)
    return ["fusion" if has_face else "audio_only" for has_face in recording.segment_has_face()]


def source_outputs(
    networks: dict[str, EmotionModule], source: str, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``[B, C]`` of the network behind ``source`` and, for fusion, the attention weight on the audio
    and on the visual features ``[B, 2]`` (Eq. 6, ``FusionModule.modality_weights``)."""
    if source != "fusion":
        return networks[SOURCES[source][0]](batch), None
    features = {
        "audio_feat": networks["audio"].extract_features(batch),
        "visual_feat": networks["visual"].extract_features(batch),
    }
    logits, extra = networks["fusion"].segment_outputs(features)
    return logits, networks["fusion"].modality_weights(extra["attention"])


def run_networks(
    run: TrainedRun, recording: Recording, sources: list[str], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment probabilities ``[K, C]`` and attention on audio and visual ``[K, 2]`` (NaN but on fusion
    segments), each the mean over the run's folds. Segments go in batches of ``batch_size`` per network."""
    probs = torch.zeros(len(sources), len(run.class_names), dtype=torch.float64)
    attention = torch.full((len(sources), 2), math.nan, dtype=torch.float64)
    dtype = AUTOCAST_DTYPES.get(run.precision) if run.device.type == "cuda" else None
    autocast = torch.autocast(run.device.type, dtype=dtype) if dtype is not None else nullcontext()
    with torch.inference_mode(), autocast:
        for source in dict.fromkeys(sources):
            rows = torch.tensor([row for row, kind in enumerate(sources) if kind == source])
            for chunk in rows.split(batch_size):
                batch = recording.batch(chunk, SOURCES[source][1])
                batch = {name: tensor.to(run.device) for name, tensor in batch.items()}
                outputs = [source_outputs(networks, source, batch) for networks in run.networks]
                fold_probs = [torch.softmax(logits.float(), dim=1) for logits, _ in outputs]
                probs[chunk] = torch.stack(fold_probs).mean(dim=0).cpu().double()
                if source == "fusion":
                    attention[chunk] = torch.stack([weights for _, weights in outputs]).mean(dim=0).cpu().double()
    return probs, attention


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


def check_input(spec: str, overrides: list[str]) -> tuple[list[Path], list[Problem]]:
    """The files ``input=`` names and what under it could not be used (``input_files``), or a
    ``ConfigError`` when it names nothing to predict."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(
            f"input={spec}: no such file or folder; give a media file ({', '.join(MEDIA_EXTENSIONS)}), a folder "
            f"(searched recursively) or a {'/'.join(LIST_EXTENSIONS)} file listing paths; "
            f"{predict_command(overrides, {'input': 'clip.mp4'})}"
        )
    files, problems = input_files(path)
    if not files:
        raise ConfigError(f"input={spec}: no media file ({', '.join(MEDIA_EXTENSIONS)}) in it")
    return files, problems


def predict(cfg: DictConfig) -> dict:
    """Predict every file ``cfg.input`` names with the run ``cfg.run`` (``predict_files``); returns what
    predictions.json holds."""
    overrides = task_overrides()
    files, problems = check_input(str(cfg.input), overrides)
    run = load_run(Path(cfg.run), cfg.stage, str(cfg.fold), choose_device(str(cfg.device)), overrides)
    return predict_files(run, files, problems, Path(cfg.out), cfg)


def predict_files(run: TrainedRun, files: list[Path], problems: list[Problem], out: Path, cfg: DictConfig) -> dict:
    """``files`` through ``run``'s networks into ``out``; returns what predictions.json holds. A file that
    cannot be used (and each of ``problems``) is reported with the step and the reason, as a training clip
    would be, and the others go on; the next ``cfg.prefetch`` files are prepared while this one is inferred."""
    out.mkdir(parents=True, exist_ok=True)
    inputs = STAGE_INPUTS[run.stage]
    detector = face_detector(run.preprocess, str(run.device)) if inputs.faces else None
    names = dict(zip(files, display_names(files)))
    print(
        f"predict: {len(files)} file(s) with the {run.stage} model of {run.folder} (folds "
        f"{', '.join(map(str, run.folds))}) on {run.device}; outputs in {out}"
    )
    entries = []
    failed = [ClipFailure("input", BadInputError(path, reason)).describe(path) for path, reason in problems]
    for failure in failed:
        tqdm.write(f"failed {failure_line(Path(failure['path']).name, failure)}")
    bar = clip_progress(len(files), "predict", enabled=True)
    prepared = prefetched(files, lambda path: prepare_recording(path, run.preprocess, inputs, detector), cfg.prefetch)
    for path, recording in prepared:
        try:
            entry = predict_file(run, recording.result(), names[path], out, cfg)
        except ClipFailure as failure:
            failed.append(failure.describe(path))
            tqdm.write(f"failed {failure_line(names[path], failed[-1])}")
        else:
            entries.append(entry)
            tqdm.write(summary_line(entry))
        bar.update()
    bar.close()
    write_predictions(out, run, entries, failed)
    print(f"{len(entries)} file(s) predicted, {len(failed)} failed: {out / 'predictions.csv'}, predictions.json")
    return json.loads((out / "predictions.json").read_text())


def predict_file(run: TrainedRun, recording: Recording, name: str, out: Path, cfg: DictConfig) -> dict:
    """One prepared file through the run's networks (step ``predict``), and its timeline figure."""
    sources = segment_sources(run.stage, recording)
    with step("predict"):
        probs, attention = run_networks(run, recording, sources, cfg.batch_size)
    entry = file_entry(recording, name, sources, probs, attention, run.class_names)
    with step("timeline"):
        crops = face_crops(recording, cfg.face_crops)
        save_figure(
            timeline_figure(entry, recording.waveform, recording.sample_rate, crops),
            out / entry["timeline"],
            dpi=cfg.dpi,
        )
    return entry
