"""Tests that fail when the science breaks: learning, leakage between folds, optimisation switches."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from callbacks.leakage import LeakageGuard, assert_loaders_match_fold, served_clip_ids
from datamodules.clips import PAPER_EMOTIONS, Clip
from datamodules.datamodule import EmotionDataModule, SegmentDataset
from datamodules.features import FeatureDataModule, FeatureDataset
from datamodules.splits import Fold, kfold_folds, loso_folds
from lightning_modules import FusionModule
from runner.stage import STAGES, train_stage
from tests.helpers.configs import compose_train, small_demo_overrides
from tests.helpers.paths import REPO

NUM_CLASSES = 3
# training_step is called without a Trainer below: Lightning then skips self.log with this warning
NO_TRAINER_TO_LOG_TO = "ignore:You are trying to:UserWarning"


def demo_datamodule(cfg: DictConfig) -> EmotionDataModule:
    """The EmotionDataModule of ``cfg`` with its folds, as ``runner.loop.run`` builds it."""
    return instantiate(cfg.data, cv=instantiate(cfg.cv.folds))


# ---------------------------------------------------------------- leakage: what the loaders serve


def synthetic_clips(subjects: int = 4, per_label: int = 2) -> list[Clip]:
    """``subjects`` x 6 emotions x ``per_label`` clips, ids like ``s01_anger_1``."""
    return [
        Clip(f"s{s:02d}_{label}_{k}", Path(f"s{s:02d}_{label}_{k}.mp4"), f"s{s:02d}", label)
        for s in range(1, subjects + 1)
        for label in PAPER_EMOTIONS
        for k in range(per_label)
    ]


def fold_parts(fold: Fold) -> dict[str, list[str]]:
    return {"train": fold.train, "val": fold.val, "test": fold.test}


def test_folds_record_whether_they_are_subject_grouped():
    clips = synthetic_clips()
    assert all(fold.by_subject for fold in loso_folds(clips))
    assert all(fold.by_subject for fold in kfold_folds(clips, k=2, group_by="subject"))
    assert not any(fold.by_subject for fold in kfold_folds(clips, k=2, group_by="clip"))


def test_loader_guard_accepts_every_fold_served_as_split():
    clips = synthetic_clips()
    folds = [
        *loso_folds(clips),
        *kfold_folds(clips, k=3, group_by="clip"),
        *kfold_folds(clips, k=2, group_by="subject"),
    ]
    for fold in folds:
        assert_loaders_match_fold(fold_parts(fold), fold, clips)


def test_loader_guard_names_test_clips_served_for_training():
    clips = synthetic_clips()
    fold = loso_folds(clips)[0]
    with pytest.raises(AssertionError) as error:
        assert_loaders_match_fold({"train": fold.train + fold.test[:2]}, fold, clips)
    message = str(error.value)
    assert "fold 0 (loso-s01)" in message
    assert "train loader serves 2 test clip(s): ['s01_anger_0', 's01_anger_1']" in message
    assert "train loader serves clips of test subject(s) ['s01']" in message


def test_loader_guard_checks_test_subjects_only_in_subject_grouped_folds():
    clips = synthetic_clips()
    late_clip = Clip("s01_late", Path("s01_late.mp4"), "s01", "anger")  # in no part of the fold
    fold = loso_folds(clips)[0]
    with pytest.raises(AssertionError, match=r"val loader serves clips of test subject\(s\) \['s01'\]"):
        assert_loaders_match_fold({"val": fold.val + [late_clip.clip_id]}, fold, [*clips, late_clip])
    by_clip = kfold_folds(clips, k=3, group_by="clip")[0]
    shared_subjects = {clip.subject for clip in clips if clip.clip_id in set(by_clip.train)} & set(
        by_clip.test_subjects
    )
    assert shared_subjects  # grouped by clip, test subjects also train: allowed
    assert_loaders_match_fold({"train": by_clip.train}, by_clip, clips)


def test_loader_guard_names_clips_outside_the_val_and_test_parts():
    clips = synthetic_clips()
    fold = loso_folds(clips)[1]
    with pytest.raises(
        AssertionError, match=r"val loader serves 1 clip\(s\) not in the fold's val part: \['s04_anger_0'\]"
    ):
        assert_loaders_match_fold({"val": fold.val + ["s04_anger_0"]}, fold, clips)
    all_ids = [clip.clip_id for clip in clips]
    with pytest.raises(AssertionError, match=r"test loader serves 36 clip\(s\) not in the fold's test part"):
        assert_loaders_match_fold({"test": all_ids}, fold, clips)


def test_served_clip_ids_of_segment_and_feature_datasets():
    clips = synthetic_clips(subjects=3, per_label=1)
    record = {"audio": torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "segment_times": torch.zeros(2, 2)}
    records = [record, record]
    segments = SegmentDataset(records, clip_indices=[3, 7], labels=[0, 1], first_segment_ids=[0, 2], inputs=["audio"])
    assert served_clip_ids(segments, clips) == {clips[3].clip_id, clips[7].clip_id}
    features = {"clip_index": torch.arange(len(clips)).repeat_interleave(2)}  # two segments per clip
    assert served_clip_ids(FeatureDataset(features, rows=torch.tensor([0, 1, 5])), clips) == {
        clips[0].clip_id,
        clips[2].clip_id,
    }
    every_clip = FeatureDataset(features, rows=torch.arange(2 * len(clips)))  # fusion serving every clip
    fold = loso_folds(clips)[0]
    with pytest.raises(AssertionError, match="train loader serves 6 test clip"):
        assert_loaders_match_fold({"train": served_clip_ids(every_clip, clips)}, fold, clips)
    with pytest.raises(TypeError, match="list"):
        served_clip_ids([1, 2], clips)


LEAKAGE_RUN = [
    "stage=audio",
    "fold=0",
    "logger=none",
    "+trainer.fast_dev_run=true",
    "resume=false",
    "model.audio.module.backbone.fc_dim=32",
]


@pytest.mark.slow
def test_training_run_passes_the_guard_and_fails_when_train_serves_the_test_clips(tiny_demo, monkeypatch):
    cfg = compose_train([*tiny_demo, *LEAKAGE_RUN])
    datamodule = demo_datamodule(cfg)
    assert train_stage(cfg, STAGES["audio"], 0, datamodule)["test_subjects"] == ["s01"]
    fold = datamodule.current_fold
    leaky = DataLoader(datamodule.dataset(fold.train + fold.test), batch_size=datamodule.batch_size, shuffle=True)
    monkeypatch.setattr(datamodule, "train_dataloader", lambda: leaky)
    with pytest.raises(
        AssertionError, match=r"fold 0 \(loso-s01\) data loaders leak: .*train loader serves 6 test clip"
    ):
        train_stage(cfg, STAGES["audio"], 0, datamodule)


def test_fusion_loaders_serving_every_clip_fail_the_guard(tiny_demo, tmp_path, monkeypatch):
    datamodule = demo_datamodule(compose_train(tiny_demo))
    datamodule.setup()
    datamodule.fold = 1
    segments_per_clip = torch.tensor([int(record["audio"].shape[0]) for record in datamodule.records])
    fusion = FeatureDataModule(datamodule, {}, {}, tmp_path / "features")
    fusion.features = {"clip_index": torch.arange(len(datamodule.clips)).repeat_interleave(segments_per_clip)}
    guard = LeakageGuard(datamodule)
    for split in ("train", "val", "test"):
        guard.check(split, getattr(fusion, f"{split}_dataloader")())
    every_clip = [clip.clip_id for clip in datamodule.clips]
    serve_every_clip = FeatureDataModule._loader.__get__(fusion)
    monkeypatch.setattr(fusion, "_loader", lambda clip_ids, shuffle: serve_every_clip(every_clip, shuffle))
    for split in ("train", "val", "test"):
        with pytest.raises(AssertionError, match=f"{split} loader serves 12 clip"):
            guard.check(split, getattr(fusion, f"{split}_dataloader")())


# ---------------------------------------------------------------- learning


# Anger, fear and sadness differ in the demo voice's pitch, contour and loudness by more than subjects
# and clips vary (datamodules/demo_corpus.py): a model that learns anything separates them.
SEPARABLE_CLASSES = "[anger,fear,sadness]"
LEARNING_RUN = [
    "stage=audio",
    "fold=0",
    "logger=none",
    "seed=0",
    "model.audio.trainer.max_epochs=15",
    "callbacks.early_stopping=null",
]


@pytest.fixture(scope="module")
def separable_demo(tmp_path_factory) -> list[str]:
    """4 subjects x 3 separable emotions x 6 clips of the demo, audio only, prepared once."""
    overrides = [
        *small_demo_overrides(tmp_path_factory.mktemp("separable_demo")),
        "++data.generator.subjects=4",
        "++data.generator.clips_per_emotion=6",
        "++data.generator.size=[96,72]",
        "++data.generator.fps=10",
        "data.preprocess.video=false",
        f"data.classes={SEPARABLE_CLASSES}",
    ]
    instantiate(compose_train(overrides).data).prepare_data()
    return overrides


def test_leave_one_subject_out_audio_learns_the_emotions(separable_demo):
    """Chance is 1/3: a stage whose labels, loss or optimiser are broken stays near it."""
    cfg = compose_train([*separable_demo, *LEARNING_RUN])
    metrics = train_stage(cfg, STAGES["audio"], 0, demo_datamodule(cfg))
    assert metrics["test_subjects"] == ["s01"]
    assert metrics["test"]["n_clips"] == 18
    assert metrics["test"]["video"]["accuracy"] >= 0.8


def test_audio_trained_on_shuffled_labels_stays_near_chance(separable_demo):
    """The same run with the training subjects' labels permuted among their clips (class balance
    kept): what it reaches on the held-out subject must come from the labels, not from leakage."""
    cfg = compose_train([*separable_demo, *LEARNING_RUN, "tag=shuffled_labels"])  # not the learning run's folder
    datamodule = demo_datamodule(cfg)
    datamodule.setup()
    training = [i for i, clip in enumerate(datamodule.clips) if clip.subject not in datamodule.folds[0].test_subjects]
    labels = [datamodule.clips[i].label for i in training]
    random.Random(0).shuffle(labels)
    assert sum(datamodule.clips[i].label != label for i, label in zip(training, labels)) > len(training) / 2
    for i, label in zip(training, labels):
        datamodule.clips[i] = replace(datamodule.clips[i], label=label)
    metrics = train_stage(cfg, STAGES["audio"], 0, datamodule)
    assert metrics["test"]["video"]["accuracy"] <= 0.6


# ---------------------------------------------------------------- optimisation switches


def feature_batch(size: int = 6, dim: int = 8) -> dict[str, torch.Tensor]:
    """A fixed fusion batch: random audio and visual features of two segments per clip, clip labels
    cycling over the classes."""
    generator = torch.Generator().manual_seed(0)
    return {
        "audio_feat": torch.randn(size, dim, generator=generator),
        "visual_feat": torch.randn(size, dim, generator=generator),
        "label": torch.arange(size) // 2 % NUM_CLASSES,
        "clip_index": torch.arange(size) // 2,
        "segment_id": torch.arange(size),
    }


def feature_loader(size: int = 6) -> DataLoader:
    """The rows of ``feature_batch(size)`` in batches of two."""
    batch = feature_batch(size)
    rows = [{key: value[i] for key, value in batch.items()} for i in range(size)]
    return DataLoader(rows, batch_size=2)


def fusion_module(**training) -> FusionModule:
    torch.manual_seed(0)
    return FusionModule(
        audio_dim=8, visual_dim=8, attention_dim=4, hidden_dims=[8], dropout=0.0, num_classes=NUM_CLASSES, **training
    )


def cpu_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


class LearningRateHistory(L.Callback):
    """The first optimiser's learning rate at the start of every training epoch."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def built_optimizer_and_scheduler(
    module: L.LightningModule, max_epochs: int = 10, stepping_batches: int = 50
) -> tuple[torch.optim.Optimizer, dict | None]:
    """What ``configure_optimizers`` returns, as (optimizer, lr_scheduler config or None), under a stand-in for
    the trainer that a schedule reads (``max_epochs``, ``estimated_stepping_batches``)."""
    module.trainer = SimpleNamespace(max_epochs=max_epochs, estimated_stepping_batches=stepping_batches)
    built = module.configure_optimizers()
    module.trainer = None
    if isinstance(built, torch.optim.Optimizer):
        return built, None
    return built["optimizer"], built["lr_scheduler"]


def optimizer_config(cls: type[torch.optim.Optimizer], **settings) -> dict:
    """``model.<stage>.module.optimizer``: the Hydra config of a partial ``cls``."""
    return {"_target_": f"torch.optim.{cls.__name__}", "_partial_": True, **settings}


def schedule_config(name: str, **settings) -> dict:
    """``model.<stage>.module.scheduler``: the Hydra config of a partial lightning_modules.schedules.<name>."""
    return {"_target_": f"lightning_modules.schedules.{name}", "_partial_": True, **settings}


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_optimizer_config_builds_that_class_with_lr_and_its_settings(cls):
    settings = {"weight_decay": 0.0123, **({"momentum": 0.9} if cls is torch.optim.SGD else {})}
    module = fusion_module(optimizer=optimizer_config(cls, **settings), lr=0.02)
    optimizer, scheduler = built_optimizer_and_scheduler(module)
    assert type(optimizer) is cls and scheduler is None
    assert [(group["lr"], group["weight_decay"]) for group in optimizer.param_groups] == [(0.02, 0.0123)]
    if cls is torch.optim.SGD:
        assert optimizer.param_groups[0]["momentum"] == 0.9
    assert optimizer.defaults["fused"] is True  # parameters on the CPU: the optimiser's fused kernel
    unfused, _ = built_optimizer_and_scheduler(fusion_module(optimizer=optimizer_config(cls, fused=False)))
    assert not unfused.defaults["fused"]  # a config that sets fused keeps its choice


def test_an_optimizer_without_fused_kernels_is_built_without_asking_for_them():
    optimizer, _ = built_optimizer_and_scheduler(fusion_module(optimizer=optimizer_config(torch.optim.RMSprop)))
    assert type(optimizer) is torch.optim.RMSprop and "fused" not in optimizer.defaults


# (experiment, stage) -> (optimiser, lr, weight_decay, schedule); every other stage of an experiment is the paper's
PAPER_OPTIMISATION = (torch.optim.Adam, 1e-4, 0.0, None)
EXPERIMENT_OPTIMISATION = {
    ("ck_visual", "visual"): (torch.optim.AdamW, 3e-3, 0.05, torch.optim.lr_scheduler.OneCycleLR),
    ("ravdess_audio", "audio"): (torch.optim.AdamW, 1e-3, 0.05, torch.optim.lr_scheduler.OneCycleLR),
    ("emodb_audio", "audio"): (torch.optim.AdamW, 1e-3, 0.05, torch.optim.lr_scheduler.OneCycleLR),
    ("urdu_audio", "audio"): (torch.optim.AdamW, 1e-3, 0.05, torch.optim.lr_scheduler.OneCycleLR),
    **{
        ("demo", stage): (torch.optim.Adam, 1e-3, 0.0, torch.optim.lr_scheduler.CosineAnnealingLR)
        for stage in ("audio", "visual", "fusion")
    },
}
EXPERIMENTS = sorted(path.stem for path in (REPO / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_experiment_configures_its_optimiser_and_schedule(experiment):
    cfg = compose_train([f"experiment={experiment}"])
    for stage in ("audio", "visual", "fusion"):
        module_cfg = cfg.model[stage].module
        # the stage's optimisation on a small network (its own network may be the paper's VGG19)
        module = fusion_module(optimizer=module_cfg.optimizer, lr=module_cfg.lr, scheduler=module_cfg.scheduler)
        max_epochs = cfg.model[stage].trainer.get("max_epochs", cfg.trainer.max_epochs)
        optimizer, scheduler = built_optimizer_and_scheduler(module, max_epochs, stepping_batches=50)
        cls, lr, weight_decay, schedule = EXPERIMENT_OPTIMISATION.get((experiment, stage), PAPER_OPTIMISATION)
        assert type(optimizer) is cls and optimizer.defaults["fused"] is True, (experiment, stage)
        assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (lr, weight_decay), (experiment, stage)
        assert (None if scheduler is None else type(scheduler["scheduler"])) is schedule, (experiment, stage)
        if schedule is torch.optim.lr_scheduler.OneCycleLR:
            assert scheduler["interval"] == "step" and scheduler["scheduler"].total_steps == 50
            assert optimizer.param_groups[0]["max_lr"] == lr
        if schedule is torch.optim.lr_scheduler.CosineAnnealingLR:
            assert scheduler["interval"] == "epoch" and scheduler["scheduler"].T_max == max_epochs


@pytest.mark.filterwarnings(NO_TRAINER_TO_LOG_TO)
def test_label_smoothing_changes_the_training_loss():
    batch = feature_batch()
    plain, smoothed = fusion_module().eval(), fusion_module(label_smoothing=0.2).eval()
    with torch.no_grad():
        logits = plain(batch)
        plain_loss, smoothed_loss = plain.training_step(batch, 0), smoothed.training_step(batch, 0)
    assert plain_loss == pytest.approx(F.cross_entropy(logits, batch["label"]).item())
    assert smoothed_loss == pytest.approx(F.cross_entropy(logits, batch["label"], label_smoothing=0.2).item())
    assert abs(smoothed_loss - plain_loss) > 1e-3


def test_validation_loss_never_smooths(tmp_path):
    module = fusion_module(label_smoothing=0.2)
    trainer = cpu_trainer(tmp_path)
    trainer.validate(module, feature_loader(), verbose=False)
    batch = feature_batch()
    with torch.no_grad():
        expected = F.cross_entropy(module.eval()(batch), batch["label"]).item()
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(expected, rel=1e-5)


def test_plateau_scheduler_cuts_the_lr_after_patience_epochs_without_improvement(tmp_path):
    # SGD at lr 1e-6 moves val/loss far less than the scheduler's 1e-4 relative threshold: it never improves
    lr, patience = 1e-6, 2
    history = LearningRateHistory()
    module = fusion_module(
        optimizer=optimizer_config(torch.optim.SGD, momentum=0.9),
        lr=lr,
        scheduler=schedule_config("plateau", patience=patience),
    )
    cpu_trainer(tmp_path, max_epochs=patience + 3, callbacks=[history]).fit(module, feature_loader(), feature_loader())
    # the first epoch sets the best; epochs 2..patience+2 do not improve; the lr drops after the last of them
    assert history.rates == pytest.approx([lr] * (patience + 2) + [lr * 0.1])


def test_cosine_scheduler_follows_the_cosine_over_max_epochs(tmp_path):
    lr, epochs = 0.01, 4
    history = LearningRateHistory()
    module = fusion_module(lr=lr, scheduler=schedule_config("cosine"))
    cpu_trainer(tmp_path, max_epochs=epochs, callbacks=[history]).fit(module, feature_loader(), feature_loader())
    assert history.rates == pytest.approx(
        [lr * (1 + math.cos(math.pi * epoch / epochs)) / 2 for epoch in range(epochs)]
    )


def stage_batch(stage: str, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """A fixed batch of four segments carrying the inputs of ``stage``'s module."""
    generator = torch.Generator().manual_seed(0)
    size = cfg.data.preprocess.faces.size
    inputs = {
        "audio": lambda: {"audio": torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=generator)},
        "visual": lambda: {
            "faces": torch.randint(0, 256, (4, 20, 3, size, size), dtype=torch.uint8, generator=generator)
        },
        "fusion": lambda: {
            "audio_feat": torch.randn(4, cfg.model.fusion.module.audio_dim, generator=generator),
            "visual_feat": torch.randn(4, cfg.model.fusion.module.visual_dim, generator=generator),
        },
    }[stage]()
    return {**inputs, "label": torch.tensor([0, 1, 2, 3])}


@pytest.mark.filterwarnings(NO_TRAINER_TO_LOG_TO)
@pytest.mark.parametrize("stage", ["audio", "visual", "fusion"])
def test_configured_optimisation_reaches_each_stage_module(stage):
    switches = {
        "optimizer._target_": "torch.optim.AdamW",
        "lr": 0.002,
        "optimizer.weight_decay": 0.03,
        "scheduler": "{_target_:lightning_modules.schedules.plateau,_partial_:true,patience:3}",
        "label_smoothing": 0.1,
    }
    cfg = compose_train([f"++model.{stage}.module.{key}={value}" for key, value in switches.items()])
    classes = list(cfg.data.classes)
    module = instantiate(cfg.model[stage].module, _convert_="all", num_classes=len(classes), class_names=classes)
    optimizer, scheduler = built_optimizer_and_scheduler(module)
    assert type(optimizer) is torch.optim.AdamW
    assert {(group["lr"], group["weight_decay"]) for group in optimizer.param_groups} == {(0.002, 0.03)}
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler["scheduler"].patience == 3 and scheduler["monitor"] == "val/loss"
    batch = stage_batch(stage, cfg)
    module.eval()
    with torch.no_grad():
        loss = module.training_step(batch, 0)
        expected = F.cross_entropy(module(batch), batch["label"], label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item())
