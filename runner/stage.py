"""One stage of the pipeline on one fold: build its data and module, fit, choose the checkpoint on
validation subjects, test it, write metrics.json.

A stage is an object (``STAGES``): the audio and visual extractors train on the corpus's segments, the
fusion stage on the features of the fold's two extractors, the classical baseline fits an SVM. Each
(stage, fold) run writes ``<run_dir>/<stage>/fold_<K>/`` with ``config.yaml``, ``fold.json``,
``checkpoints/best.ckpt`` and ``last.ckpt``, ``metrics.json`` and ``plots/``.
"""

from __future__ import annotations

import inspect
import json
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from callbacks.keep_early_stop import KeepEarlyStop
from callbacks.leakage import LeakageGuard
from callbacks.progress import Position
from callbacks.seeded_state import TrainFromSeededState
from datamodules.atomic import atomic_write_text
from datamodules.datamodule import EmotionDataModule
from datamodules.feature_cache import Extractor, FeatureCache
from datamodules.features import FeatureDataModule, file_digest
from lightning_modules.audio_module import AudioModule
from lightning_modules.base import EmotionModule
from lightning_modules.visual_module import VisualModule
from runner.command_line import task_overrides
from runner.fold_files import (
    best_checkpoint,
    check_upstream_provenance,
    fold_dir,
    fold_provenance,
    subjects_of_fold,
    upstream_checkpoints,
    write_fold_files,
)
from runner.resume import (
    LAST_CHECKPOINT,
    FoldPlan,
    clear_fold,
    plan_fold,
    removed_if_failed,
)
from runner.summary import fold_metrics, split_metrics
from tracking.loggers import build_logger, finish_logger

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


class NetworkStage:
    """A stage whose LightningModule (``model.<name>.module``) trains on the corpus's segments, reading
    ``inputs`` from each batch."""

    def __init__(self, name: str, inputs: tuple[str, ...]) -> None:
        self.name, self.inputs = name, inputs

    def data(
        self, cfg: DictConfig, fold: int, datamodule: EmotionDataModule, provenance: dict
    ) -> L.LightningDataModule:
        """The data this stage trains on: the corpus's segments with the stage's inputs."""
        datamodule.inputs, datamodule.batch_size = self.inputs, cfg.model[self.name].batch_size
        return datamodule

    def prepare(self, cfg: DictConfig, module: EmotionModule, datamodule: EmotionDataModule) -> None:
        """What the module needs done to the data once it is built (nothing here)."""

    def train(
        self, cfg: DictConfig, fold: int, datamodule: EmotionDataModule, position: Position | None = None
    ) -> dict:
        return train_stage(cfg, self, fold, datamodule, position)


class VisualStage(NetworkStage):
    """The face CNN + LSTM; its frozen convolutions' output is computed once per face crop (``read_frozen_features``)."""

    def prepare(self, cfg: DictConfig, module: EmotionModule, datamodule: EmotionDataModule) -> None:
        read_frozen_features(cfg, module, datamodule)


class FusionStage(NetworkStage):
    """Attention fusion over the features of the fold's trained audio and visual extractors."""

    def data(
        self, cfg: DictConfig, fold: int, datamodule: EmotionDataModule, provenance: dict
    ) -> L.LightningDataModule:
        """The features of the fold's audio and visual extractors (refused when missing or of another fold split)."""
        audio_ckpt, visual_ckpt = upstream_checkpoints(cfg, fold, task_overrides())
        check_upstream_provenance(provenance, {"audio": audio_ckpt, "visual": visual_ckpt}, task_overrides())
        precision = str(cfg.trainer.precision)
        checkpoints = {"audio": (AudioModule, audio_ckpt), "visual": (VisualModule, visual_ckpt)}
        return FeatureDataModule(
            datamodule,
            {
                name: partial(frozen_extractor, module_class, path, precision)
                for name, (module_class, path) in checkpoints.items()
            },
            {
                name: {"checkpoint": file_digest(path), "precision": precision}
                for name, (_, path) in checkpoints.items()
            },
            fold_dir(cfg, self.name, fold) / "features",
            batch_size=cfg.model[self.name].batch_size,
        )


class BaselineStage:
    """The classical floor: utterance or face features -> SVM (``runner/baseline.py``), run only when named."""

    name = "baseline"

    def train(
        self, cfg: DictConfig, fold: int, datamodule: EmotionDataModule, position: Position | None = None
    ) -> dict:
        """Fit and test the SVM of ``fold`` (no epochs: ``position`` is not shown)."""
        from runner.baseline import (
            train_baseline,  # scikit-learn and openSMILE load only when asked for
        )

        return train_baseline(cfg, fold, datamodule)


STAGES: dict[str, NetworkStage | BaselineStage] = {
    "audio": NetworkStage("audio", ("audio",)),
    "visual": VisualStage("visual", ("faces",)),
    "fusion": FusionStage("fusion", ()),
    "baseline": BaselineStage(),
}
PIPELINE = ("audio", "visual", "fusion")  # stage=all


def frozen_extractor(module_class: type[EmotionModule], checkpoint: Path, precision: str) -> Extractor:
    """The fold's trained extractor, frozen: a batch of segments -> their features (``extract_features``), on
    the GPU when there is one, under autocast for the "16-mixed" and "bf16-mixed" precisions (fp32 otherwise)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = module_class.load_from_checkpoint(checkpoint, map_location=device).eval()
    dtype = AUTOCAST_DTYPES.get(precision)

    def extract(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return module.extract_features({name: value.to(device) for name, value in batch.items()}).float()

    return extract


def upstream_change(data: L.LightningDataModule, out: Path) -> str | None:
    """Why a fusion fold's earlier results are stale though its config is the same (its extractors were
    retrained since), or None."""
    has_results = (out / "metrics.json").exists() or (out / LAST_CHECKPOINT).exists()
    if isinstance(data, FeatureDataModule) and has_results and not data.cache_is_current:
        return (
            f"its audio or visual extractor changed since ({data.cache_root.name}/ holds other checkpoints' features)"
        )
    return None


def train_stage(
    cfg: DictConfig, stage: NetworkStage, fold: int, datamodule: EmotionDataModule, position: Position | None = None
) -> dict:
    """Train ``stage`` on ``fold``, choose its checkpoint on validation clips, test it, write metrics.json.

    A fold finished with the same config is skipped and an unfinished one goes on from its last.ckpt
    (``resume``, runner/resume.py). With ``test_only=true`` the fold's existing best.ckpt is
    evaluated without training (for instance on another number of devices: the metrics are the same).
    ``position``: where this run is in the command, for the progress lines.
    """
    out = fold_dir(cfg, stage.name, fold)
    test_only = bool(cfg.get("test_only"))
    if test_only and not best_checkpoint(cfg, stage.name, fold).exists():
        raise FileNotFoundError(
            f"test_only=true: stage={stage.name} fold={fold} has no checkpoint {best_checkpoint(cfg, stage.name, fold)}"
        )
    datamodule.fold = fold
    provenance = fold_provenance(cfg, stage.name, fold, datamodule)
    data = stage.data(cfg, fold, datamodule, provenance)
    plan = FoldPlan() if test_only else plan_fold(cfg, out, upstream_change(data, out))
    if plan.metrics is not None:
        return plan.metrics
    with removed_if_failed(out):
        if not test_only and plan.checkpoint is None:
            clear_fold(out)
        # a test-only run keeps the training run's config.yaml
        write_fold_files(cfg, out, provenance, "test_config.yaml" if test_only else "config.yaml")
        return fit_and_test(
            cfg, stage, fold, datamodule, data, provenance, plan.checkpoint, test_only=test_only, position=position
        )


def fit_and_test(
    cfg: DictConfig,
    stage: NetworkStage,
    fold: int,
    datamodule: EmotionDataModule,
    data: L.LightningDataModule,
    provenance: dict,
    resume_from: Path | None,
    *,
    test_only: bool,
    position: Position | None = None,
) -> dict:
    """Fit ``data`` (the corpus ``datamodule`` itself, or the fusion stage's features of it) from
    ``resume_from`` when given, not at all with ``test_only``; then validate and test the checkpoint chosen
    on ``objective.metric`` over the validation subjects (the ``val`` and ``test`` blocks of metrics.json).
    Lightning's per-split metric tables are printed under ``verbose=true`` only."""
    out, stage_cfg = fold_dir(cfg, stage.name, fold), cfg.model[stage.name]
    L.seed_everything(cfg.seed + fold, workers=True)  # the module's initial weights
    module = instantiate(
        stage_cfg.module, _convert_="all", num_classes=len(datamodule.classes), class_names=list(datamodule.classes)
    )
    stage.prepare(cfg, module, datamodule)
    subjects = subjects_of_fold(datamodule)
    logger = build_logger(cfg, stage=stage.name, fold=fold, out_dir=out, resume=resume_from is not None)
    context = {
        "dirpath": str(out / "checkpoints"),
        "out_dir": str(out),
        "stage": stage.name,
        "fold": fold,
        "test_subjects": subjects["test"],
        "position": position,
    }
    seeded_state = TrainFromSeededState()
    callbacks = [
        *build_callbacks(cfg.callbacks, context, has_logger=logger is not False),
        seeded_state,
        KeepEarlyStop(),
        LeakageGuard(datamodule),
    ]
    trainer: L.Trainer = instantiate(
        cfg.trainer, **stage_cfg.get("trainer", {}), callbacks=callbacks, logger=logger, default_root_dir=str(out)
    )
    failed = True
    try:
        if test_only:
            best: str | None = str(best_checkpoint(cfg, stage.name, fold))
        else:
            seeded_state.capture()
            trainer.fit(module, datamodule=data, ckpt_path=resume_from)
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
            expected = best_checkpoint(cfg, stage.name, fold)
            if best and Path(best).resolve() != expected.resolve():
                raise RuntimeError(f"checkpoint saved as {best}; expected {expected}")
        verbose = bool(cfg.get("verbose"))
        trainer.validate(module, datamodule=data, ckpt_path=best, verbose=verbose)
        trainer.test(module, datamodule=data, ckpt_path=best, verbose=verbose)
        failed = False
    finally:
        finish_logger(logger, failed)
    val, test = split_metrics(module.last_eval["val"]), split_metrics(module.last_eval["test"])
    metrics = {
        **fold_metrics(provenance, subjects, OmegaConf.to_container(cfg.objective), val, test),
        "best_checkpoint": best,
    }
    if trainer.is_global_zero:
        atomic_write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    return metrics


def read_frozen_features(cfg: DictConfig, module: VisualModule, datamodule: EmotionDataModule) -> None:
    """When ``module`` has a frozen part whose output can stand for the face crops (``frozen_extractor``), fill
    its cache once per distinct crop of every prepared clip (of the test corpus too) under
    ``<cache_dir>/frozen_features/<corpus>/`` and make the batches carry that output instead of the crops."""
    extractor = module.frozen_extractor()
    if extractor is None:
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    for corpus in filter(None, (datamodule, datamodule.test_corpus)):
        corpus.prepare_data()
        corpus.setup()
        key = {"clips": corpus.cache_folder.name, **module.frozen_key()}
        cache = FeatureCache(Path(cfg.paths.cache_dir) / "frozen_features" / corpus.name, key)
        crops = ((clip.clip_id, {"faces": record["face_frames"]}) for clip, record in zip(corpus.clips, corpus.records))
        cache.fill(crops, extractor, total=len(corpus.clips))
        corpus.frame_features = cache.load()
    module.cpu()
    datamodule.inputs = ("frame_features",)


def build_callbacks(callbacks_cfg: DictConfig, context: dict[str, Any], has_logger: bool) -> list[L.Callback]:
    """Instantiate the configured callbacks of one (stage, fold) run.

    A parameter of the ``_target_`` (a class or a factory function) named like a ``context`` key
    (``dirpath``, ``out_dir``, ``stage``, ``fold``, ``test_subjects``, ``position``) and not set in the config receives the
    run's value. ``null`` entries are skipped, and so is the learning-rate monitor under ``logger=none`` (it
    has nowhere to log).
    """
    callbacks = []
    for node in callbacks_cfg.values():
        if node is None:
            continue
        target = get_object(node._target_)
        if isinstance(target, type) and issubclass(target, LearningRateMonitor) and not has_logger:
            continue
        parameters = inspect.signature(target).parameters
        extra = {name: value for name, value in context.items() if name in parameters and name not in node}
        callbacks.append(instantiate(node, _partial_=True)(**extra))  # context values passed as they are, not as config
    return callbacks
