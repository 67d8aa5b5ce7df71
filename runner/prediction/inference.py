"""What ``python predict.py input=<files> run=<run folder>`` does: a trained run's networks on new recordings.

The run folder is what ``train.py`` wrote, ``<run>/<stage>/fold_<K>/{config.yaml,fold.json,checkpoints/
best.ckpt}``: the saved config gives the preprocessing and the class of each network (``_target_``), fold.json
the class names, and each network is rebuilt from its checkpoint. Every file is prepared by the training
pipeline's steps (datamodules/recordings.py), its segments go through each chosen fold's networks in
batches, the folds' segment probabilities are averaged, and the file's label is evaluation's majority vote
(§3.4). Outputs: ``predictions.csv``, ``predictions.json`` and a timeline figure per file (``<name>.png``).
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from datamodules.corpora import Problem
from datamodules.decode import BadInputError
from datamodules.preprocess import (
    ClipFailure,
    clip_progress,
    face_detector,
    failure_line,
    step,
)
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
from runner.command_line import ConfigError, task_overrides
from runner.prediction.load_run import (
    TrainedRun,
    choose_device,
    load_run,
    predict_command,
)
from runner.prediction.outputs import (
    face_crops,
    file_entry,
    summary_line,
    write_predictions,
)
from runner.stage import AUTOCAST_DTYPES
from tracking.plots import save_figure, timeline_figure

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
    print(
        f"{len(entries)} file(s) predicted, {len(failed)} failed\n"
        f"Predictions: {out / 'predictions.csv'} and {out / 'predictions.json'}\n"
        f"Timeline figures: {out}/<file>.png" + f" ({len(entries)})" * bool(entries)
    )
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
