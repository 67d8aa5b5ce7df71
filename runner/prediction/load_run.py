"""A trained run folder read back for prediction: its stages and folds, the saved config and class names,
and each fold's networks rebuilt from their checkpoints."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from datamodules.features import extracted_with
from lightning_modules.base import EmotionModule
from runner.command_line import ConfigError, train_command
from runner.fold_files import (
    MismatchedCheckpointError,
    MissingCheckpointError,
    check_upstream_provenance,
    upstream_checkpoints,
)

predict_command = partial(train_command, program="predict.py")

PREDICT_STAGES: tuple[str, ...] = ("fusion", "audio", "visual")  # stage=null: the first one the run holds


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


def runs_below(folder: Path, depth: int = 4) -> list[Path]:
    """The run folders (those holding ``<stage>/fold_<K>/checkpoints/best.ckpt``) below ``folder``, at most
    ``depth`` levels down, in path order."""
    found = set()
    for stage in PREDICT_STAGES:
        for level in range(depth):
            pattern = "/".join(["*"] * level + [stage, "fold_*", "checkpoints", "best.ckpt"])
            found |= {path.parents[3] for path in folder.glob(pattern) if path.parents[3] != folder}
    return sorted(found)


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
        below = runs_below(folder)
        if below:
            listed = "; ".join(f"{run} ({describe_held(held_folds(run))})" for run in below)
            raise ConfigError(
                f"run={folder} is not a run folder itself; the runs under it: {listed}; "
                f"{predict_command(overrides, {'run': str(below[0])})}"
            )
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
    norms = {getattr(network, "input_norm", "none") for fold in networks for network in fold.values()}
    for norm in sorted(norms & {"speaker", "corpus"}):
        print(
            f"note: {folder} has a {norm}-normalised audio model (data.audio_norm={norm}); each recording's own "
            f"statistics stand in for its {norm}'s (docs/prediction.md)"
        )
    return TrainedRun(folder, stage, folds, networks, class_names, preprocess, precision, device)
