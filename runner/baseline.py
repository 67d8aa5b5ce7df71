"""``stage=baseline``: the classical floor on the same folds, utterance features -> standardise -> SVM.

Per fold: one feature vector per clip (``datamodules.utterance_features``, ``datamodules.face_features``;
cached), a scikit-learn
pipeline (``StandardScaler`` then ``model.baseline.classifier``, an SVM, inside ``model.baseline.calibration``,
which maps its decisions to class probabilities) fitted on the training clips once per value of
``model.baseline.C_grid``. C is chosen on the validation subjects by
``objective`` (the same validation metric every stage is selected on; ties go to the earlier grid value),
never on the test clips. The chosen pipeline's validation and test predictions go through the same
``evaluate`` as the deep stages, with one "segment" per clip (so segment and video metrics coincide),
into a metrics.json with the same ``val`` and ``test`` blocks, plus the C search.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from sklearn.base import ClassifierMixin, clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from datamodules.atomic import atomic_write_text
from datamodules.datamodule import EmotionDataModule
from datamodules.utterance_features import ClipFeatures, cached_vectors, feature_folder
from lightning_modules.evaluation import evaluate
from lightning_modules.objective import check_objective
from runner.fold_files import (
    fold_dir,
    fold_provenance,
    subjects_of_fold,
    write_fold_files,
)
from runner.resume import clear_fold, plan_fold, removed_if_failed
from runner.summary import fold_metrics, metric_row, split_metrics


def svm_pipeline(classifier: ClassifierMixin, calibration: Callable[..., ClassifierMixin], C: float) -> ClassifierMixin:
    """A fresh, unfitted ``calibration(standardise -> classifier with C)``."""
    return calibration(make_pipeline(StandardScaler(), clone(classifier).set_params(C=C)))


def class_probabilities(model: ClassifierMixin, features: np.ndarray, num_classes: int) -> torch.Tensor:
    """``[N, num_classes]`` class probabilities; classes absent from the training clips get 0."""
    probs = np.zeros((len(features), num_classes))
    probs[:, model.classes_] = model.predict_proba(features)
    return torch.from_numpy(probs)


def evaluate_clips(model: ClassifierMixin, features: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """``evaluate`` of ``model`` on whole clips: each clip is its own single segment."""
    rows = torch.arange(len(labels))
    return evaluate(
        rows, rows, class_probabilities(model, features, num_classes), torch.from_numpy(labels), num_classes
    )


def part_features(
    datamodule: EmotionDataModule, part: str, extractor: ClipFeatures, cache_dir: str
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Features ``[N, D]`` and class indices ``[N]`` of the current fold's ``part`` (train, val or test; read
    from the corpus that holds it), and the clips of that part that could not be read, with the reason."""
    wanted = set(getattr(datamodule.current_fold, part))
    corpus = datamodule.corpus_of(part)
    clips = [clip for clip in corpus.index().clips if clip.clip_id in wanted]
    vectors, dropped = {}, {}
    for member, own_clips, ids in corpus.by_corpus(clips):  # data=multi: each member's vectors in its own cache
        folder = feature_folder(cache_dir, member.name, extractor, extractor.inputs(member), member.cache_source)
        own_vectors, own_dropped = cached_vectors(own_clips, lambda clip: extractor.clip_vector(clip, member), folder)  # noqa: B023
        for clip, clip_id in zip(own_clips, ids):
            if clip.clip_id in own_vectors:
                vectors[clip_id] = own_vectors[clip.clip_id]
            if clip.clip_id in own_dropped:
                dropped[clip_id] = own_dropped[clip.clip_id]
    kept = [clip for clip in clips if clip.clip_id in vectors]
    features = np.stack([vectors[clip.clip_id] for clip in kept])
    return features, np.array([datamodule.classes.index(clip.label) for clip in kept]), dropped


def choose_C(
    build: Callable[[float], ClassifierMixin],
    C_grid: Sequence[float],
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    objective: Mapping,
    num_classes: int,
) -> tuple[ClassifierMixin, float, list[dict]]:
    """Of ``build(C)`` fitted on ``train`` for each C of the grid, the one whose C scores best on ``val`` by
    ``objective`` (ties: the earlier C), that C, and every C's score."""
    summary_name, mode = check_objective(objective)
    sign = 1 if mode == "max" else -1
    best, best_C, best_score, search = None, None, -np.inf, []
    for C in C_grid:
        model = build(C).fit(*train)
        score = metric_row(evaluate_clips(model, *val, num_classes))[summary_name]
        search.append({"C": C, str(objective["metric"]): score})
        if sign * score > best_score:
            best, best_C, best_score = model, C, sign * score
    return best, best_C, search


def train_baseline(cfg: DictConfig, fold: int, datamodule: EmotionDataModule) -> dict:
    """Fit ``model.baseline`` on ``fold``, choose C on its validation clips, test the chosen pipeline and
    write config.yaml, fold.json and metrics.json (the deep stages' layout) under
    ``<run_dir>/baseline-<model.baseline.name>/``, so that the feature sets keep apart."""
    stage = f"baseline-{cfg.model.baseline.name}"
    out = fold_dir(cfg, stage, fold)
    datamodule.fold = fold
    if not datamodule.current_fold.val:
        raise ValueError(f"stage=baseline fold={fold}: no validation clips to choose C on (cv={cfg.cv.name})")
    plan = plan_fold(cfg, out)
    if plan.metrics is not None:
        return plan.metrics
    provenance = fold_provenance(cfg, stage, fold, datamodule)
    with removed_if_failed(out):
        clear_fold(out)
        write_fold_files(cfg, out, provenance)
        extractor: ClipFeatures = instantiate(cfg.model.baseline.features)
        data, dropped = {}, {}
        for part in ("train", "val", "test"):
            features, labels, dropped[part] = part_features(datamodule, part, extractor, cfg.paths.cache_dir)
            data[part] = (features, labels)
        num_classes = len(datamodule.classes)
        classifier = instantiate(cfg.model.baseline.classifier)
        calibration = instantiate(cfg.model.baseline.calibration)
        model, C, search = choose_C(
            lambda C: svm_pipeline(classifier, calibration, C),
            [float(C) for C in cfg.model.baseline.C_grid],
            data["train"],
            data["val"],
            cfg.objective,
            num_classes,
        )
        val, test = (split_metrics(evaluate_clips(model, *data[part], num_classes)) for part in ("val", "test"))
        objective = OmegaConf.to_container(cfg.objective)
        metrics = fold_metrics(provenance, subjects_of_fold(datamodule), objective, val, test)
        metrics["baseline"] = {
            "features": extractor.identity(),
            "classifier": str(classifier),
            "C": C,
            "C_search": search,
            "n_train_clips": len(data["train"][1]),
            "dropped_clips": dropped,
        }
    if rank_zero_only.rank == 0:
        atomic_write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    return metrics
